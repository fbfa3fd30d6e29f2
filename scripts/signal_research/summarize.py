"""Compact table of selected candidates from OUT/candidates-Ee*.json for several runs."""

import json
import sys
from pathlib import Path

KEEP = [
    "token-drop (full, reference)",
    "schedule: full losses at epochs < Ee and the last",
    "sketch k=4: drop, early=max",
    "sketch k=8: drop, early=max",
    "sketch k=16: drop, early=max",
    "sketch k=8: drop, early=mean, unseen=kth (ub)",
    "blocks B=16: mean top-2 block drop",
    "blocks B=32: mean top-2 block drop",
    "greedy run: longest at last",
    "greedy run: last - mean early",
    "weighted run: max over last runs of sum early_j (full early)",
    "sketch8+runs1: max over runs of sum early (mean, unseen=0)",
    "sketch4+runs4: max over runs of sum early (mean, unseen=0)",
    "sketch8+runs4: max over runs of sum early (mean, unseen=0)",
    "sketch8+runs8: max over runs of sum early (mean, unseen=0)",
    "sketch8+runs4: top-4 drop, late=0 in runs else kth",
    "sketch16+runs4: top-4 drop, late=0 in runs else kth",
    "confident run: longest run with loss<0.1 at last",
    "extractable: hits in longest last run with loss<0.1",
    "mean loss: early - last",
    "tail_loss (mean top-8): early - last",
    "min-k% prob (k=20%, = -mean top-20% loss): early - last",
    "token acc: last - early",
]
for f in sys.argv[1:]:
    rows = {r["candidate"]: r for r in json.loads(Path(f).read_text())}
    print(f"\n## {f}\n\n| candidate | B/pres | AUC | rec@10% | AUC ext | rec@10% ext |\n|---|---|---|---|---|---|")
    def fmt(v, p):
        return "n/a" if v is None else f"{v:.{p}f}"
    for name in KEEP + [n for n in rows if n.startswith(("tail-var", "forget"))]:
        if name in rows:
            r = rows[name]
            print(
                f"| {name} | {r['bytes']:.0f} | {r['auc']:.3f} | {r['rec10']:.2f} | "
                f"{fmt(r['auc_ext'], 3)} | {fmt(r['rec10_ext'], 2)} |"
            )
