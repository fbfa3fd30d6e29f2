"""The logging shim's cost: a training loop with and without CartoLogger, measured side by side.

    python benchmarks/bench_shim.py                 # CPU, the default model (~1 minute)
    python benchmarks/bench_shim.py --device cuda   # on a GPU: also checks for host-device syncs

Runs the same tiny-GPT training steps (same data, same seed) alternately without and with the
logger (logits path: per-sample loss, token accuracy, tail loss, the sketch), in `--rounds`
interleaved rounds so that the machine's drift hits both arms alike; which arm goes first
alternates from round to round. The whole shim is timed: parts rotate during the timed steps
(`--rows-per-part`, by default half a round's rows, so every logged arm of every round writes
parts: Arrow conversion, zstd, fsync and rename on the writer thread), and the number of parts
written while timing is reported. `--repeat K` runs the whole measurement K times (a fresh model
and logger each) and reports every ratio and their spread; the ratio of a run is the median
logged step over the median plain step. The goal (issue "Scoring at scale"): logging adds at most
2% to step time.

On CUDA it then checks, three ways, that `record` never synchronises host and device and logs
the right numbers:
- logged steps under `torch.cuda.set_sync_debug_mode("error")`, which raises on the synchronising
  CUDA calls PyTorch knows of (`.item()`, blocking copies, ...);
- `record` called while the GPU is still busy with a long kernel (`torch.cuda._sleep`): it must
  return long before that kernel ends, which no call that waits for the device can do;
- the rows written for known logits are compared with a float64 CPU reference.
The last check (every logged column, padded and empty samples, forced ties for the greedy
prediction) runs on the CPU too: `check_logged_values`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from common import carto_source

from carto_cli import CartoLogger
from carto_cli.experiment.tinygpt import GPT, GPTConfig
from carto_cli.log import fused


def steps(model, opt, data, ids, n_steps: int, logger, device: str, step0: int,
          record_times: list[float] | None = None, bf16: bool = False) -> list[float]:
    """Run n_steps training steps; return each step's wall time in seconds (and append the time
    spent inside `record` to `record_times`). `bf16`: forward and loss under bfloat16 autocast."""
    times = []
    for i in range(n_steps):
        t0 = time.perf_counter()
        x, y = data[i % len(data)]
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        if logger is not None:
            r0 = time.perf_counter()
            logger.record(ids[i % len(ids)], epoch=0, step=step0 + i, logits=logits, labels=y)
            if record_times is not None:
                record_times.append(time.perf_counter() - r0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()  # timing only: the step is complete on the device
        times.append(time.perf_counter() - t0)
    return times


def check_record_while_busy(model, data, ids, bf16: bool = False) -> str:
    """Queue a long GPU kernel, then call `record`: a `record` that waited for the device could
    not return before the kernel ends."""
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=bf16)
    with tempfile.TemporaryDirectory() as out, CartoLogger(out) as logger:
        with autocast:
            logits = model(data[0][0])
        logger.record(ids[0], epoch=0, step=0, logits=logits, labels=data[0][1])  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.cuda._sleep(int(2e9))  # spin the GPU for about a second (2e9 cycles)
        torch.cuda.synchronize()
        kernel_s = time.perf_counter() - t0
        torch.cuda._sleep(int(2e9))
        with autocast:
            logits = model(data[1][0])  # queued behind the sleeping kernel
        t0 = time.perf_counter()
        logger.record(ids[1], epoch=0, step=1, logits=logits, labels=data[1][1])
        record_s = time.perf_counter() - t0
        torch.cuda.synchronize()
        logger.flush()
    verdict = "passed" if record_s < 0.1 * kernel_s else "FAILED"
    return (f"{verdict}: record() returned in {record_s * 1e3:.2f} ms while a {kernel_s * 1e3:.0f} ms "
            "kernel was still running")


def check_logged_values(data, device: str = "cuda", vocab: int = 5000) -> str:
    """Log known logits on `device`, in fp32 and in bf16, and compare every column the logits path
    writes (loss, token_acc, tail_loss, n_tokens) with a float64 reference on the CPU (computed from
    the same values: bf16 logits as rounded). A vocabulary that is no multiple of a power of two
    exercises a partial last block of the fused kernel. The samples: every position a target, a
    padded tail, fewer targets than tail_k (the tail is then all of them), no target at all (NaN
    means, n_tokens 0), and forced ties for the greedy prediction (two equal largest logits, in
    one block and across blocks, the target at the first or at the second): the prediction is the
    first index of the largest logit, as torch.argmax (`carto_cli.log.fused`), so only the first
    is a hit. Half the other targets are the greedy prediction, so token_acc is not all zeros
    (bf16's coarse values make more ties there)."""
    gen = torch.Generator(device="cpu").manual_seed(1)
    tail_k = 8
    B, T = 8, max(int(data[0][1].shape[1]), 4 * tail_k)  # T > tail_k: the tail is not the mean
    # (position, first tied index, second tied index, target): hits at 0, 1 and 4 (the first
    # index), misses at 2 and 3 (the second): 3 hits where a last-index rule gives 2 and any-tie 5
    ties = [(0, 100, 4500, 100), (1, 10, 20, 10), (2, 30, 40, 40), (3, 200, 4700, 4700), (4, 50, 60, 50)]
    errors = {"loss": 0.0, "tail_loss": 0.0, "token_acc": 0.0}
    n_tokens_wrong = sketch_wrong = 0
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.randn(B, T, vocab, generator=gen)
        labels = torch.randint(0, vocab, (B, T), generator=gen)
        greedy = logits.to(dtype).double().argmax(-1)  # (B, T), of the logits as logged
        labels[4:, ::2] = greedy[4:, ::2]
        for t, first, second, target in ties:
            logits[3, t, [first, second]] = 50.0  # exact in bf16 too
            labels[3, t] = target
        labels[0, T // 2:] = -100  # a padded tail: those positions must not count
        labels[1, 3:] = -100  # 3 targets, fewer than tail_k
        labels[2, :] = -100  # no target
        labels[5, :3] = -100  # a masked prefix: sketch positions count from the first target
        logits = logits.to(dtype)
        with tempfile.TemporaryDirectory() as out:
            with CartoLogger(out, tail_k=tail_k) as logger:
                logger.record(torch.arange(B, device=device), epoch=0, step=0, logits=logits.to(device),
                              labels=labels.to(device))
            table = pq.read_table(logger.parts_written[0]).sort_by("sample_id")
        exact = logits.double()
        valid = labels != -100
        n = valid.sum(1)  # (B,)
        tok = F.cross_entropy(exact.reshape(-1, vocab), labels.clamp_min(0).reshape(-1), reduction="none").view(B, T)
        hit = (exact.argmax(-1) == labels) & valid  # torch.argmax: the first index of the largest
        reference = {
            "loss": (tok * valid).sum(1) / n,
            "token_acc": hit.sum(1) / n,
            "tail_loss": torch.stack([tok[b][valid[b]].sort(descending=True).values[:tail_k].mean()
                                      for b in range(B)]),  # mean of the min(tail_k, n) largest; NaN if none
        }
        assert hit[3, :5].tolist() == [True, True, False, False, True]  # the reference follows the tie rule
        for name, ref in reference.items():
            got = torch.tensor(table.column(name).to_numpy(zero_copy_only=False), dtype=torch.float64)
            same_nan = torch.equal(got.isnan(), ref.isnan())
            diff = (got - ref).abs().nan_to_num(0.0).max().item() if same_nan else float("inf")
            errors[name] = max(errors[name], diff)
        got_n = table.column("n_tokens").to_pylist()
        n_tokens_wrong += sum(g != r for g, r in zip(got_n, n.tolist()))
        sketch_wrong += _sketch_mismatches(table, tok, hit, valid)
    ok = (errors["loss"] < 1e-4 and errors["tail_loss"] < 1e-4 and errors["token_acc"] < 1e-6
          and n_tokens_wrong == 0 and sketch_wrong == 0)
    return (f"{'passed' if ok else 'FAILED'}: fp32 and bf16 logits, {B} x {T}, vocabulary {vocab}, padded, "
            f"fewer than tail_k={tail_k} and no targets, forced argmax ties: max |loss - float64 reference| "
            f"{errors['loss']:.2e}, max |tail_loss - reference| {errors['tail_loss']:.2e}, "
            f"max |token_acc - reference| {errors['token_acc']:.2e}, n_tokens mismatches {n_tokens_wrong}, "
            f"sketch mismatches {sketch_wrong}")


def _sketch_mismatches(table, tok, hit, valid) -> int:
    """Samples whose logged sketch (top_pos, top_loss, hit_runs) disagrees with the float64
    reference: the runs exactly (they follow the hits), the k largest losses within float16's
    resolution, and each logged position's reference loss equal to the loss logged beside it (the
    order of near-equal losses may differ between fp32 and float64). Logged positions count from the
    sample's first target (carto_cli/log/sketch.py)."""
    wrong = 0
    positions, losses, runs = (table.column(c).to_pylist() for c in ("top_pos", "top_loss", "hit_runs"))
    for b in range(tok.shape[0]):
        k, r = len(positions[b]), len(runs[b]) // 2
        targets = valid[b].nonzero().flatten().tolist()
        first = targets[0] if targets else 0
        ref_losses = sorted((float(tok[b, t]) for t in targets), reverse=True)[:k]
        got = [(p, x) for p, x in zip(positions[b], losses[b]) if x == x]  # NaN pads the missing
        ok = len(got) == len(ref_losses) and all(
            abs(x - ref) <= 2e-3 * max(1.0, ref) and abs(x - float(tok[b, first + p])) <= 2e-3 * max(1.0, ref)
            for (p, x), ref in zip(got, ref_losses))
        spans, t = [], 0
        hits = (hit[b] & valid[b]).tolist()
        while t < len(hits):  # maximal runs of hits, then the r longest (earlier first on ties)
            if hits[t]:
                start = t
                while t < len(hits) and hits[t]:
                    t += 1
                spans.append((start, t - start))
            else:
                t += 1
        spans = [(start - first, length) for start, length in sorted(spans, key=lambda s: (-s[1], s[0]))[:r]]
        spans += [(0, 0)] * r
        ok = ok and runs[b] == [x for s in spans[:r] for x in s]
        wrong += not ok
    return wrong


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=8, help="steps per arm per round")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=256, help="vocabulary size (256: bytes)")
    ap.add_argument("--bf16", action="store_true", help="forward and loss under bfloat16 autocast")
    ap.add_argument("--rows-per-part", type=int, default=None,
                    help="the logger's part size (default: half a round's rows, so parts rotate while timing)")
    ap.add_argument("--repeat", type=int, default=3, help="whole measurements, each with a fresh logger")
    ap.add_argument("--no-sketch", action="store_true",
                    help="log without the memorization sketch (CartoLogger(sketch_k=0, sketch_runs=0))")
    ap.add_argument("--sketch-ops", choices=("auto", "torch"), default="auto",
                    help="torch: compute the sketch with the PyTorch ops even where the CUDA sketch kernel "
                         "applies (to compare the two on one machine)")
    args = ap.parse_args()
    if args.sketch_ops == "torch":
        fused._KERNELS["sketch_kernel"] = False  # as after a failed launch: the shim uses carto_cli.log.sketch's ops
    source = carto_source()  # the commit, and a hash of the sources for copies without .git (a lent GPU machine)
    print(f"command: python benchmarks/bench_shim.py {' '.join(sys.argv[1:])}; carto_cli {source['git']} "
          f"(sources sha256 {source['sha256']}); load {os.getloadavg()[0]:.2f}", flush=True)
    torch.manual_seed(0)
    device = args.device
    sketch = {"sketch_k": 0, "sketch_runs": 0} if args.no_sketch else {}
    config = GPTConfig(vocab_size=args.vocab, block_size=args.context, n_layer=args.layers, n_head=4,
                       n_embd=args.width)
    model = GPT(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = []
    for _ in range(4):
        seq = torch.randint(0, args.vocab, (args.batch, args.context + 1), device=device)
        data.append((seq[:, :-1], seq[:, 1:]))
    ids = [torch.arange(i * args.batch, (i + 1) * args.batch, device=device) for i in range(4)]

    rows_per_part = args.rows_per_part or max(1, args.batch * args.steps // 2)
    runs = []
    for _ in range(args.repeat):
        plain, logged, in_record = [], [], []
        with tempfile.TemporaryDirectory() as out, CartoLogger(out, rows_per_part=rows_per_part, **sketch) as logger:
            steps(model, opt, data, ids, 3, None, device, 0, bf16=args.bf16)  # warm-up
            steps(model, opt, data, ids, 3, logger, device, 0, bf16=args.bf16)
            logger.flush()
            parts_before = len(logger.parts_written)
            for r in range(args.rounds):
                arms = [None, logger]  # plain, logged; the order alternates
                for arm_logger in (arms if r % 2 == 0 else arms[::-1]):
                    # steps after the warm-up's 0..2: a logger's steps never go back
                    times = steps(model, opt, data, ids, args.steps, arm_logger, device, 3 + r * args.steps,
                                  in_record if arm_logger else None, bf16=args.bf16)
                    (logged if arm_logger else plain).extend(times)
            parts_timed = len(logger.parts_written) - parts_before  # parts the writer finished while timing
            logger.flush()
            rows = logger.rows_written
        runs.append({"ratio": statistics.median(logged) / statistics.median(plain),
                     "median_step_s_without": statistics.median(plain),
                     "median_step_s_with": statistics.median(logged),
                     "median_record_s": statistics.median(in_record), "parts_written_while_timing": parts_timed})
    with tempfile.TemporaryDirectory() as out, CartoLogger(out, **sketch) as logger:
        sync_check = "not run (CPU)"
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("error")
            try:
                for i in range(4):
                    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=args.bf16):
                        logits = model(data[i][0])
                    logger.record(ids[i], epoch=1, step=10_000 + i, logits=logits, labels=data[i][1])
                sync_check = "passed: record() made no synchronising CUDA call"
            except RuntimeError as exc:
                sync_check = f"FAILED: {exc}"
            finally:
                torch.cuda.set_sync_debug_mode(0)
    if device == "cuda":
        busy_check = check_record_while_busy(model, data, ids, args.bf16)
    else:
        busy_check = "not run (CPU)"
    values_check = check_logged_values(data, device)
    ratios = sorted(r["ratio"] for r in runs)
    middle = runs[[r["ratio"] for r in runs].index(ratios[len(ratios) // 2])]  # the median run
    base, with_log = middle["median_step_s_without"], middle["median_step_s_with"]
    result = {
        "device": device,
        "threads": torch.get_num_threads(),
        "params": model.num_params(),
        "batch": args.batch,
        "context": args.context,
        "vocab": args.vocab,
        "bf16": args.bf16,
        "sketch": not args.no_sketch,
        "sketch_ops": ("kernel" if fused._load("sketch_kernel") and device == "cuda" else "torch"),
        "steps_per_arm": len(plain),
        "rows_per_part": rows_per_part,
        "repeat": args.repeat,
        "median_step_s_without": round(base, 5),
        "median_step_s_with": round(with_log, 5),
        "overhead_ratio": round(with_log / base, 4),
        "overhead_ratios": [round(r, 4) for r in ratios],
        "median_record_s": round(middle["median_record_s"], 5),
        "record_share_of_step": round(middle["median_record_s"] / base, 4),
        "parts_written_while_timing": [r["parts_written_while_timing"] for r in runs],
        "rows_logged": rows,
        "sync_check": sync_check,
        "busy_check": busy_check,
        "values_check": values_check,
    }
    print(f"model {result['params'] / 1e6:.2f}M params, vocab {args.vocab}, batch {args.batch} x {args.context}, "
          f"{device}{' bf16 autocast' if args.bf16 else ''}, "
          f"{result['threads']} threads, {len(plain)} steps per arm, "
          f"sketch {'off' if args.no_sketch else 'on (' + result['sketch_ops'] + ')'}, "
          f"rows_per_part {rows_per_part}")
    print(f"parts written while timing, per run: {result['parts_written_while_timing']}")
    print(f"ratio with/without per run: {', '.join(f'{r:.4f}' for r in ratios)} "
          f"(min {ratios[0]:.4f}, median {ratios[len(ratios) // 2]:.4f}, max {ratios[-1]:.4f}; goal <= 1.02)")
    print(f"median run: step without logger {base * 1e3:.1f} ms, with logger {with_log * 1e3:.1f} ms")
    print(f"time inside record() in the median run: {middle['median_record_s'] * 1e3:.2f} ms per step, "
          f"{100 * middle['median_record_s'] / base:.2f}% of a step")
    print(f"sync check: {sync_check}")
    print(f"busy-GPU check: {busy_check}")
    print(f"values check: {values_check}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
