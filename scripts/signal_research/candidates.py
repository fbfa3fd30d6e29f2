"""Every candidate memorization signal, computed offline from one recorded run
(proto/train_record.py: loss[E, N, T] f16, hit[E, N, T] bool), scored against the canary carriers.

    PYTHONPATH=/work/wt-signal python proto/candidates.py proto/out/A-1000 [--early-epochs 2]

Writes OUT/candidates.json and OUT/candidates.md. Signals: higher = more memorized; NaN ranks last.
AUC: P(carrier > non-carrier), ties half. rec10: share of carriers among the top 10% of samples
(by signal, ties broken at random with a fixed seed); prec10: share of the top 10% that are carriers.
"ext" columns: carriers of canaries the baseline extracted, against all non-carriers.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

DROP_K = 4


def topk_mask(L: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the k highest-loss positions along the last axis, the k-th largest value)."""
    k = min(k, L.shape[-1])
    idx = np.argpartition(-L, k - 1, axis=-1)[..., :k]
    mask = np.zeros(L.shape, dtype=bool)
    np.put_along_axis(mask, idx, True, axis=-1)
    kth = np.take_along_axis(L, idx, axis=-1).min(-1)
    return mask, kth


def mean_topk(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k largest finite values per row (NaN where no finite value); -inf excluded."""
    x = np.where(np.isfinite(x), x, -np.inf)
    k = min(k, x.shape[-1])
    part = -np.partition(-x, k - 1, axis=-1)[..., :k]
    part = np.where(np.isfinite(part), part, np.nan)
    with np.errstate(invalid="ignore"):
        return np.nanmean(part, axis=-1)


def longest_run(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(length, start) of the longest run of True along the last axis of (N, T) (first one on ties)."""
    n, t = h.shape
    cur = np.zeros(n, dtype=np.int32)
    best = np.zeros(n, dtype=np.int32)
    best_end = np.zeros(n, dtype=np.int32)
    for j in range(t):
        cur = np.where(h[:, j], cur + 1, 0)
        better = cur > best
        best = np.where(better, cur, best)
        best_end = np.where(better, j, best_end)
    return best, best_end - best + 1


def max_weighted_run(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """max over runs of True in h (N, T) of the sum of w over the run."""
    n, t = h.shape
    cur = np.zeros(n)
    best = np.zeros(n)
    for j in range(t):
        cur = np.where(h[:, j], cur + w[:, j], 0.0)
        best = np.maximum(best, cur)
    return best


def top_runs(h: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts (N, r), lengths (N, r)) of the r longest runs of True per row (longest first, earlier
    first on ties; length 0 where a row has fewer runs)."""
    n, t = h.shape
    starts = np.zeros((n, r), dtype=np.int64)
    lens = np.zeros((n, r), dtype=np.int64)
    pad = np.zeros((n, 1), dtype=np.int8)
    d = np.diff(np.concatenate([pad, h.astype(np.int8), pad], axis=1), axis=1)
    for i in range(n):
        s = np.flatnonzero(d[i] == 1)
        e = np.flatnonzero(d[i] == -1)
        ln = e - s
        order = np.lexsort((s, -ln))[:r]
        starts[i, : len(order)] = s[order]
        lens[i, : len(order)] = ln[order]
    return starts, lens


def run_mask(t: int, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    pos = np.arange(t)[None, None, :]
    return ((pos >= starts[..., None]) & (pos < (starts + lens)[..., None])).any(1)


def run_sum(w: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    c = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w, axis=1)], axis=1)
    rows = np.arange(w.shape[0])
    return c[rows, start + length] - c[rows, start]


def auc(signal: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    s = np.where(np.isfinite(signal), signal, -np.inf)
    r = stats.rankdata(np.concatenate([s[pos], s[neg]]))
    n1, n0 = pos.sum(), neg.sum()
    return float((r[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def top_frac(signal: np.ndarray, frac: float, seed: int = 0) -> np.ndarray:
    s = np.where(np.isfinite(signal), signal, -np.inf)
    tie = np.random.default_rng(seed).random(len(s))
    order = np.lexsort((tie, -s))  # by -s, then random
    top = np.zeros(len(s), dtype=bool)
    top[order[: math.ceil(frac * len(s))]] = True
    return top


def candidates(loss: np.ndarray, hit: np.ndarray, early_epochs: int) -> dict[str, tuple[np.ndarray, float, str]]:
    """name -> (signal (N,), bytes per presentation, note)."""
    E, N, T = loss.shape
    Ee = early_epochs
    L = loss.astype(np.float32)
    last = L[E - 1]
    early_full = L[:Ee].mean(0)
    out: dict[str, tuple[np.ndarray, float, str]] = {}

    # --- reference: full per-token losses
    drop = early_full - last
    out["token-drop (full, reference)"] = (mean_topk(drop, DROP_K), 2 * T, "f16 per position")
    out["schedule: full losses at epochs < Ee and the last"] = (
        mean_topk(drop, DROP_K),
        2 * T * (Ee + 1) / E,
        "same value as token-drop; bytes averaged",
    )

    # --- top-k sketches
    for k in (4, 8, 16):
        masks, kths = zip(*(topk_mask(L[e], k) for e in range(E)))
        masks, kths = np.stack(masks), np.stack(kths)  # (E, N, T), (E, N)
        early_known = masks[:Ee].any(0)  # candidate positions
        late_est = np.where(masks[E - 1], last, kths[E - 1][:, None])  # upper bound on late loss
        fills = {
            "mean, unseen=kth (ub)": np.where(masks[:Ee], L[:Ee], kths[:Ee, :, None]).mean(0),
            "mean, unseen=0 (lb)": np.where(masks[:Ee], L[:Ee], 0.0).mean(0),
            "max": np.where(masks[:Ee], L[:Ee], -np.inf).max(0),
        }
        for fname, early_est in fills.items():
            d = np.where(early_known, early_est - late_est, -np.inf)
            out[f"sketch k={k}: drop, early={fname}"] = (mean_topk(d, DROP_K), 4 * k, f"{k} x (int16 pos, f16 loss)")
        # all late presentations' sketches, not only the last: late = min over late of the bound
        if E - Ee > 1:
            late_all = np.where(masks[Ee:], L[Ee:], kths[Ee:, :, None]).min(0)
            d = np.where(early_known, fills["mean, unseen=kth (ub)"] - late_all, -np.inf)
            out[f"sketch k={k}: drop, late=min over late sketches"] = (mean_topk(d, DROP_K), 4 * k, "")

    # --- block-loss profiles: sum of token loss over B contiguous blocks
    for B in (8, 16, 32):
        if T % B:
            continue
        blocks = L.reshape(E, N, B, T // B).sum(-1)  # (E, N, B)
        bd = blocks[:Ee].mean(0) - blocks[E - 1]
        out[f"blocks B={B}: max block drop"] = (bd.max(-1), 2 * B, f"{B} x f16 block loss sums")
        out[f"blocks B={B}: mean top-2 block drop"] = (mean_topk(bd, 2), 2 * B, "")

    # --- greedy runs
    runs, starts = zip(*(longest_run(hit[e]) for e in range(E)))
    runs, starts = np.stack(runs).astype(float), np.stack(starts)
    out["greedy run: longest at last"] = (runs[E - 1], 2, "int16")
    out["greedy run: last - mean early"] = (runs[E - 1] - runs[:Ee].mean(0), 2, "int16")
    out["weighted run: sum early_j (full early) over longest last run"] = (
        run_sum(early_full, starts[E - 1], runs[E - 1].astype(int)),
        2 * T * Ee / E + 4,
        "needs full early losses + (start, len) int16",
    )
    out["weighted run: max over last runs of sum early_j (full early)"] = (
        max_weighted_run(hit[E - 1], early_full),
        2 * T * Ee / E + 2,
        "needs full early losses",
    )
    m8, k8 = zip(*(topk_mask(L[e], 8) for e in range(Ee)))
    early_sk_lb = np.where(np.stack(m8), L[:Ee], 0.0).mean(0)  # lower bound from 8-sketches
    out["weighted run: sum early sketch8 (unseen=0) over longest last run"] = (
        run_sum(early_sk_lb, starts[E - 1], runs[E - 1].astype(int)),
        32 + 4,
        "sketch8 + (start, len) int16",
    )
    out["weighted run: max over last runs of sum early sketch8"] = (
        max_weighted_run(hit[E - 1], early_sk_lb),
        32 + 2,
        "sketch8 + the run, scored offline needs hits: not loggable as is",
    )
    # loggable: sketch k + the R longest greedy-hit runs (int16 start, int16 length) per presentation
    for R in (1, 4, 8):
        rs, rl = top_runs(hit[E - 1], R)
        inrun = run_mask(T, rs, rl)  # (N, T) positions inside a logged late run
        for k in (4, 8, 16):
            mk = np.stack([topk_mask(L[e], k)[0] for e in range(E)])
            kth = np.stack([topk_mask(L[e], k)[1] for e in range(E)])
            e_lb = np.where(mk[:Ee], L[:Ee], 0.0).mean(0)
            e_max = np.where(mk[:Ee], L[:Ee], 0.0).max(0)
            nb = 4 * k + 4 * R
            per_run = [run_sum(e_lb, rs[:, i], rl[:, i]) for i in range(R)]
            out[f"sketch{k}+runs{R}: max over runs of sum early (mean, unseen=0)"] = (
                np.max(per_run, axis=0),
                nb,
                f"{k} x (int16, f16) + {R} x (int16 start, int16 len)",
            )
            per_run = [run_sum(e_max, rs[:, i], rl[:, i]) for i in range(R)]
            out[f"sketch{k}+runs{R}: max over runs of sum early (max)"] = (np.max(per_run, axis=0), nb, "")
            out[f"sketch{k}+runs{R}: sum early over all logged runs"] = ((e_lb * inrun).sum(1), nb, "")
            late_est = np.where(mk[E - 1], last, np.where(inrun, 0.0, kth[E - 1][:, None]))
            d = np.where(mk[:Ee].any(0), np.where(mk[:Ee], L[:Ee], kth[:Ee, :, None]).mean(0) - late_est, -np.inf)
            out[f"sketch{k}+runs{R}: top-4 drop, late=0 in runs else kth"] = (mean_topk(d, DROP_K), nb, "")
    conf = last < 0.1
    out["confident run: longest run with loss<0.1 at last"] = (longest_run(conf)[0].astype(float), 2, "int16")
    out["extractable: hits in longest last run with loss<0.1"] = (
        run_sum(conf.astype(float), starts[E - 1], runs[E - 1].astype(int)),
        2,
        "int16",
    )

    # --- cheap scalars (per presentation f16), combined early vs last
    def scalar(name, per_pres, note="f16"):
        out[f"{name}: early - last"] = (per_pres[:Ee].mean(0) - per_pres[E - 1], 2, note)

    mean_loss = L.mean(-1)
    tail8 = np.stack([mean_topk(L[e], 8) for e in range(E)])
    mink20 = np.stack([mean_topk(L[e], max(1, round(0.2 * T))) for e in range(E)])
    acc = hit.mean(-1)
    scalar("mean loss", mean_loss)
    scalar("tail_loss (mean top-8)", tail8)
    scalar("min-k% prob (k=20%, = -mean top-20% loss)", mink20)
    out["-tail_loss at last"] = (-tail8[E - 1], 2, "f16")
    out["-mean loss at last"] = (-mean_loss[E - 1], 2, "f16")
    out["token acc: last - early"] = (acc[E - 1] - acc[:Ee].mean(0), 2, "f16")
    late_from = math.ceil(E / 2)
    tv = tail8[late_from:].std(0) if E - late_from >= 2 else np.full(N, np.nan)
    out[f"tail-var (std tail_loss, epochs >= {late_from})"] = (tv, 2, "existing signal")
    correct = acc >= 0.5
    forgets = (correct[:-1] & ~correct[1:]).sum(0).astype(float)
    out["forget events (acc>=0.5)"] = (forgets, 1, "paper's signal")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--early-epochs", type=int)
    ap.add_argument("--frac", type=float, default=0.1)
    args = ap.parse_args()
    run = Path(args.run)
    meta = json.loads((run / "meta.json").read_text())
    rec = np.load(run / "record.npz")
    loss, hit = rec["loss"], rec["hit"]
    E, N, T = loss.shape
    Ee = args.early_epochs or meta["config"]["early_epochs"]
    carrier = np.zeros(N, dtype=bool)
    ext = np.zeros(N, dtype=bool)
    for c in meta["canaries"]:
        carrier[c["sample_ids"]] = True
        if c["extracted"]:
            ext[c["sample_ids"]] = True
    non = ~carrier
    rows = []
    for name, (sig, nbytes, note) in candidates(loss, hit, Ee).items():
        top = top_frac(sig, args.frac)
        row = {
            "candidate": name,
            "bytes": nbytes,
            "note": note,
            "auc": auc(sig, carrier, non),
            "rec10": float(top[carrier].mean()),
            "prec10": float(carrier[top].mean()),
            "auc_ext": auc(sig, ext, non) if ext.any() else None,
            "rec10_ext": float(top[ext].mean()) if ext.any() else None,
            "null": int((~np.isfinite(sig)).sum()),
        }
        rows.append(row)
    header = (
        f"# {run.name}: E={E} epochs, N={N} train rows, T={T}, early_epochs={Ee}; "
        f"carriers {carrier.sum()} ({carrier.mean():.1%}); extracted canaries "
        f"{sum(c['extracted'] for c in meta['canaries'])}/{len(meta['canaries'])} "
        f"({ext.sum()} carriers); val loss {meta['val_loss']:.4f} (ppl {meta['val_ppl']:.4f}); "
        f"train {meta['train_seconds']:.0f} s\n"
    )
    md = [
        header,
        "| candidate | bytes/pres | AUC | rec@10% | prec@10% | AUC (extracted) | rec@10% (extracted) | nulls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"
    for r in rows:
        md.append(
            f"| {r['candidate']} | {r['bytes']:.1f} | {r['auc']:.3f} | {r['rec10']:.2f} | {r['prec10']:.2f} | "
            f"{fmt(r['auc_ext'])} | {fmt(r['rec10_ext'])} | {r['null']} |"
        )
    text = "\n".join(md) + "\n"
    (run / f"candidates-Ee{Ee}.md").write_text(text)
    (run / f"candidates-Ee{Ee}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
