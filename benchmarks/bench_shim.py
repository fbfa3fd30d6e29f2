"""The logging shim's cost: a training loop with and without CartoLogger, measured side by side.

    python benchmarks/bench_shim.py                 # CPU, the default model (~1 minute)
    python benchmarks/bench_shim.py --device cuda   # on a GPU: also checks for host-device syncs

Runs the same tiny-GPT training steps (same data, same seed) alternately without and with the
logger (logits path: per-sample loss, token accuracy, tail loss), in `--rounds` interleaved rounds
so that the machine's drift hits both arms alike, and prints the median step time of each arm and
their ratio. The goal (issue "Scoring at scale"): logging adds at most 2% to step time.

On CUDA it then checks, three ways, that `record` never synchronises host and device and logs
the right numbers:
- logged steps under `torch.cuda.set_sync_debug_mode("error")`, which raises on the synchronising
  CUDA calls PyTorch knows of (`.item()`, blocking copies, ...);
- `record` called while the GPU is still busy with a long kernel (`torch.cuda._sleep`): it must
  return long before that kernel ends, which no call that waits for the device can do;
- the rows written for known logits are compared with a float64 CPU reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from carto_cli import CartoLogger
from carto_cli.experiment.tinygpt import GPT, GPTConfig


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
    """Log known logits on `device`, in fp32 and in bf16, and compare the written rows with a
    float64 reference on the CPU (computed from the same values: bf16 logits as rounded). A
    vocabulary that is no multiple of a power of two exercises a partial last block, and bf16's
    coarse values make ties for the greedy prediction (the first index counts, as torch.argmax)."""
    gen = torch.Generator(device="cpu").manual_seed(1)
    B, T = data[0][1].shape
    B = min(B, 8)
    errors = []
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.randn(B, T, vocab, generator=gen).to(dtype)
        labels = torch.randint(0, vocab, (B, T), generator=gen)
        labels[0, T // 2:] = -100  # a padded tail: those positions must not count
        with tempfile.TemporaryDirectory() as out:
            with CartoLogger(out) as logger:
                logger.record(torch.arange(B, device=device), epoch=0, step=0, logits=logits.to(device),
                              labels=labels.to(device))
            table = pq.read_table(logger.parts_written[0]).sort_by("sample_id")
        exact = logits.double()
        valid = labels != -100
        tok = F.cross_entropy(exact.reshape(-1, vocab), labels.clamp_min(0).reshape(-1), reduction="none").view(B, T)
        ref_loss = (tok * valid).sum(1) / valid.sum(1)
        ref_acc = ((exact.argmax(-1) == labels) & valid).sum(1) / valid.sum(1)
        got_loss = torch.tensor(table.column("loss").to_numpy(), dtype=torch.float64)
        got_acc = torch.tensor(table.column("token_acc").to_numpy(), dtype=torch.float64)
        errors.append(((got_loss - ref_loss).abs().max().item(), (got_acc - ref_acc).abs().max().item()))
    loss_err = max(e[0] for e in errors)
    acc_err = max(e[1] for e in errors)
    verdict = "passed" if loss_err < 1e-4 and acc_err < 1e-6 else "FAILED"
    return (f"{verdict}: fp32 and bf16 logits, vocabulary {vocab}: max |loss - float64 reference| {loss_err:.2e}, "
            f"max |token_acc - reference| {acc_err:.2e}")


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
    args = ap.parse_args()
    torch.manual_seed(0)
    device = args.device
    config = GPTConfig(vocab_size=args.vocab, block_size=args.context, n_layer=args.layers, n_head=4,
                       n_embd=args.width)
    model = GPT(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = []
    for _ in range(4):
        seq = torch.randint(0, args.vocab, (args.batch, args.context + 1), device=device)
        data.append((seq[:, :-1], seq[:, 1:]))
    ids = [torch.arange(i * args.batch, (i + 1) * args.batch, device=device) for i in range(4)]

    plain, logged, in_record = [], [], []
    with tempfile.TemporaryDirectory() as out, CartoLogger(out) as logger:
        steps(model, opt, data, ids, 3, None, device, 0, bf16=args.bf16)  # warm-up
        steps(model, opt, data, ids, 3, logger, device, 0, bf16=args.bf16)
        for r in range(args.rounds):
            plain += steps(model, opt, data, ids, args.steps, None, device, 0, bf16=args.bf16)
            logged += steps(model, opt, data, ids, args.steps, logger, device, r * args.steps, in_record,
                            bf16=args.bf16)
        logger.flush()
        rows = logger.rows_written
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
    base, with_log = statistics.median(plain), statistics.median(logged)
    result = {
        "device": device,
        "threads": torch.get_num_threads(),
        "params": model.num_params(),
        "batch": args.batch,
        "context": args.context,
        "vocab": args.vocab,
        "bf16": args.bf16,
        "steps_per_arm": len(plain),
        "median_step_s_without": round(base, 5),
        "median_step_s_with": round(with_log, 5),
        "overhead_ratio": round(with_log / base, 4),
        "median_record_s": round(statistics.median(in_record), 5),
        "record_share_of_step": round(statistics.median(in_record) / base, 4),
        "rows_logged": rows,
        "sync_check": sync_check,
        "busy_check": busy_check,
        "values_check": values_check,
    }
    print(f"model {result['params'] / 1e6:.2f}M params, vocab {args.vocab}, batch {args.batch} x {args.context}, "
          f"{device}{' bf16 autocast' if args.bf16 else ''}, "
          f"{result['threads']} threads, {len(plain)} steps per arm")
    print(f"median step without logger: {base * 1e3:8.1f} ms")
    print(f"median step with logger:    {with_log * 1e3:8.1f} ms")
    print(f"ratio with/without: {with_log / base:.4f}   (goal <= 1.02)")
    print(f"time inside record(): median {statistics.median(in_record) * 1e3:.2f} ms per step, "
          f"{100 * statistics.median(in_record) / base:.2f}% of a step")
    print(f"sync check: {sync_check}")
    print(f"busy-GPU check: {busy_check}")
    print(f"values check: {values_check}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
