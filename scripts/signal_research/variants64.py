"""Budget variants of the sketch+runs signal (4k + 4R bytes <= 64), and two late-side variants."""

import json
import sys

import numpy as np

sys.path.insert(0, "proto")
from candidates import auc, run_sum, top_frac, top_runs, topk_mask

for run, Ee in [(a.split(":")[0], int(a.split(":")[1])) for a in sys.argv[1:]]:
    meta = json.load(open(f"{run}/meta.json"))
    rec = np.load(f"{run}/record.npz")
    L = rec["loss"].astype(np.float32)
    H = rec["hit"]
    E, N, T = L.shape
    car = np.zeros(N, bool)
    ext = np.zeros(N, bool)
    for c in meta["canaries"]:
        car[c["sample_ids"]] = True
        ext[c["sample_ids"]] |= c["extracted"]
    print(f"\n## {run} (Ee={Ee})\n")
    print("| variant | B/pres | AUC | rec@10% | AUC ext | rec@10% ext |\n|---|---|---|---|---|---|")
    runs = {R: top_runs(H[E - 1], R) for R in (2, 4, 6, 8)}
    runs_all = {R: [top_runs(H[e], R) for e in range(Ee, E)] for R in (4,)}
    for k, R in [(8, 4), (8, 8), (10, 6), (12, 4), (14, 2), (16, 4)]:
        mk = np.stack([topk_mask(L[e], k)[0] for e in range(Ee)])
        e_lb = np.where(mk, L[:Ee], 0.0).mean(0)
        rs, rl = runs[R]
        sig = np.max([run_sum(e_lb, rs[:, i], rl[:, i]) for i in range(R)], axis=0)
        variants = {"last presentation": sig}
        if R == 4 and E - Ee > 1:
            # max over every late presentation's runs
            variants["max over late presentations"] = np.max(
                [np.max([run_sum(e_lb, s[:, i], n[:, i]) for i in range(R)], axis=0) for s, n in runs_all[R]],
                axis=0,
            )
        for vname, sig in variants.items():
            top = top_frac(sig, 0.1)
            ae = auc(sig, ext, ~car) if ext.any() else float("nan")
            re_ = top[ext].mean() if ext.any() else float("nan")
            print(
                f"| sketch{k}+runs{R}, {vname} | {4 * k + 4 * R} | {auc(sig, car, ~car):.3f} | "
                f"{top[car].mean():.2f} | {ae:.3f} | {re_:.2f} |"
            )
