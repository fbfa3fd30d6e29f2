"""Where the canary tokens sit in the early sketch and the late hit runs (carriers of extracted canaries)."""

import json
import sys

import numpy as np

sys.path.insert(0, "proto")
from candidates import run_mask, top_runs, topk_mask

run = sys.argv[1]
Ee = int(sys.argv[2])
meta = json.load(open(f"{run}/meta.json"))
rec = np.load(f"{run}/record.npz")
L = rec["loss"].astype(np.float32)
H = rec["hit"]
E, N, T = L.shape
for c in meta["canaries"]:
    ids = np.array(c["sample_ids"])
    off = np.array(c["offsets"])
    # canary text: "\nthe pin of KEY is DDDD\n": key bytes at off+12..16, digits at off+21..24;
    # the target position predicting byte b is b-1
    key = off[:, None] + np.arange(12, 17)[None] - 1
    dig = off[:, None] + np.arange(21, 25)[None] - 1
    pos = np.concatenate([key, dig], 1)
    res = {}
    for k in (8, 16):
        m = np.stack([topk_mask(L[e, ids], k)[0] for e in range(Ee)]).any(0)
        res[f"early top{k} holds >=1 key/digit"] = float(np.take_along_axis(m, pos, 1).any(1).mean())
        res[f"early top{k}: mean #key/digit"] = float(np.take_along_axis(m, pos, 1).sum(1).mean())
    rs, rl = top_runs(H[E - 1, ids], 4)
    inr = run_mask(T, rs, rl)
    res["digits all hit at last"] = float(np.take_along_axis(H[E - 1, ids], dig, 1).all(1).mean())
    res["digits in 4 longest runs"] = float(np.take_along_axis(inr, dig, 1).all(1).mean())
    res["early loss key/digit (mean)"] = float(np.take_along_axis(L[:Ee, ids].mean(0), pos, 1).mean())
    res["early 8th-largest loss (mean)"] = float(np.mean([topk_mask(L[e, ids], 8)[1].mean() for e in range(Ee)]))
    res["last loss digits"] = float(np.take_along_axis(L[E - 1, ids], dig, 1).mean())
    print(c["repetitions"], c["extracted"], {k: round(v, 2) for k, v in res.items()})
