"""Damaged log parts against carto: every case must end in the correct result or a one-line error.

    python scripts/fuzz_logs.py --cases 500 [--seed 0] [--first 0] [--timeout 60] [--keep DIR]

A case (reproducible: `--seed S --first N --cases 1` reruns case N of seed S) writes a small log as
the shim does (one part per rank and epoch; the sketch, tail_loss; now and then per-token losses,
sparse or uint64 ids, several epochs per part, page checksums or none, zstd or plain pages), damages
one part in one of the ways in DAMAGES, and runs one command on it (COMMANDS):

- `carto score` with a kernel (`--method auto | bitmask | general`), a build (the compiled loops, or
  `CARTO_NO_COMPILED=1`), a signal (`--memorization`), now and then `--skip-corrupt`;
- `carto score --update`, folding the damaged part into the state saved from the others;
- `carto logs summary --json`, `carto logs bucketize`.

The commands run in a worker process (`fuzz_worker.py`, beside this script) that calls carto's
`main()`, restarted when it dies: a signal,
a hang (no answer within `--timeout` seconds), a traceback, or an exit status other than 0 or 1
fails the case. A command that fails must print exactly one `Error:` line (after any `Warning:`
lines). A command that succeeds must give the correct result, which is what the files hold as
pyarrow reads them (page checksums verified), each column on its own (the ORACLE):

- score: the scores equal, bit for bit, those of the reference path on the same files (`--method
  general`, with the signal's Polars definition instead of its kernel), and the samples are the ids
  of the rows with a finite loss; with `--skip-corrupt`, the only part it may leave out is the
  damaged one, and then the reference runs on the log without it;
- score --update: the scores of a full reference run over every part;
- logs summary: the counts of what pyarrow reads; logs bucketize: the same rows, bucketed.

Prints one line per failing case (and, with --verbose, per case) and a summary by outcome; exits 1
if any case failed. `tests/test_damaged_logs.py` runs a fixed set of cases of every damage and
command in the test suite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fuzz_worker import Worker

N_EPOCHS = 4
DAMAGES = ("none", "flip", "zero_chunk", "truncate", "id_above", "id_negative", "id_huge", "epoch_negative",
           "epoch_huge", "footer_ids", "footer_epoch")
PATCHES = ("id_above", "id_negative", "id_huge", "epoch_negative", "epoch_huge")  # a value in a plain page
COMMANDS = ("score", "update", "summary", "bucketize")
SIGNALS = ("auto", "forgets", "extractable", "tail-var", "token-drop")


@dataclass
class Case:
    """One log, one damage, one command: everything drawn from (seed, index)."""

    seed: int
    index: int
    damage: str
    command: str
    samples: int
    ids: str  # "dense", "sparse" (ids among 10^6), "high" (uint64 ids >= 2^63)
    by_epoch: bool  # one part per rank and epoch (else each part holds every epoch of a share of samples)
    checksums: bool
    compression: str
    tokens: bool  # a token_loss column
    method: str = "auto"
    build: str = "compiled"
    signal: str = "forgets"
    skip_corrupt: bool = False
    victim: int = 0  # the damaged part's index among the sorted parts
    rng_state: dict = field(default_factory=dict, repr=False)

    def name(self) -> str:
        extra = f" --method {self.method} --memorization {self.signal}" if self.command == "score" else ""
        extra += f" [{self.build}]" if self.command in ("score", "update") else ""
        return (f"case {self.seed}:{self.index} {self.damage} {self.command}{extra}"
                f"{' --skip-corrupt' if self.skip_corrupt else ''} ({self.samples} {self.ids} ids, "
                f"{'by epoch' if self.by_epoch else 'mixed epochs'}, {self.compression}"
                f"{', checksums' if self.checksums else ''}{', token losses' if self.tokens else ''})")


def draw_case(seed: int, index: int, *, damage: str | None = None, command: str | None = None,
              **fixed: object) -> Case:
    """The case (seed, index): `damage`, `command` and any Case field in `fixed` are taken as given."""
    rng = np.random.default_rng([seed, index])
    case = Case(seed=seed, index=index, damage=damage or str(rng.choice(DAMAGES)),
                command=command or str(rng.choice(COMMANDS, p=[0.55, 0.15, 0.15, 0.15])),
                samples=int(rng.integers(40, 160)), ids=str(rng.choice(["dense", "sparse", "high"], p=[.7, .15, .15])),
                by_epoch=bool(rng.random() < 0.8), checksums=bool(rng.random() < 0.5),
                compression=str(rng.choice(["zstd", "none"])), tokens=bool(rng.random() < 0.3),
                method=str(rng.choice(["auto", "bitmask", "general"], p=[.6, .2, .2])),
                build=str(rng.choice(["compiled", "numpy"])), skip_corrupt=bool(rng.random() < 0.25))
    signals = [s for s in SIGNALS if s != "token-drop" or case.tokens]
    case.signal = str(rng.choice(signals))
    victim = int(rng.integers(0, 8))
    for name, value in fixed.items():
        setattr(case, name, value)
    if case.command == "update":  # --update keeps forget events only, and folds parts later in time
        case.signal, case.by_epoch, victim = "forgets", True, 6 + victim % 2
    case.victim = victim if case.by_epoch else victim % 3  # 8 parts (rank, epoch), or 3
    case.rng_state = rng.bit_generator.state
    return case


# ------------------------------------------------------------------ the log


def write_log(directory: Path, case: Case, rng: np.random.Generator) -> list[Path]:
    """The case's log, as the shim writes it: two ranks, the log contract's schema and types."""
    n = case.samples
    if case.ids == "dense":
        ids = np.arange(n, dtype=np.int64) + int(rng.integers(0, 1000))
    elif case.ids == "sparse":
        ids = np.sort(rng.choice(1_000_000, n, replace=False)).astype(np.int64)
    else:
        ids = (np.uint64(2**63) + np.arange(n, dtype=np.uint64) * np.uint64(3))
    k, r, width = 4, 2, 6
    rows = []
    for epoch in range(N_EPOCHS):
        order = rng.permutation(n)
        for position, i in enumerate(order):
            loss = float(np.float32(rng.gamma(2.0, 0.6)))
            rows.append((int(ids[i]), epoch, epoch * 1000 + position // 8, loss, position % 2, i % 3))
    directory.mkdir(parents=True)
    parts = []
    if case.by_epoch:
        groups = [[row for row in rows if row[1] == e and row[4] == rank] for e in range(N_EPOCHS) for rank in (0, 1)]
    else:  # each part: every epoch of a third of the samples, in step order
        groups = [[row for row in rows if row[5] == g] for g in range(3)]
    for g, group in enumerate(groups):
        m = len(group)
        sid = np.array([row[0] for row in group], dtype=np.uint64 if case.ids == "high" else np.int64)
        loss = np.array([row[3] for row in group], dtype=np.float32)
        columns = {
            "sample_id": pa.array(sid),
            "epoch": pa.array(np.array([row[1] for row in group], dtype=np.int32)),
            "step": pa.array(np.array([row[2] for row in group], dtype=np.int64)),
            "loss": pa.array(loss),
            "correct": pa.array(loss < 1.0),
            "tail_loss": pa.array(loss * np.float32(1.5)),
            "rank": pa.array(np.array([row[4] for row in group], dtype=np.int32)),
            "top_pos": _lists(rng.integers(0, width, (m, k)).astype(np.uint16)),
            "top_loss": _lists((rng.random((m, k)) * 5).astype(np.float16)),
            "hit_runs": _lists(rng.integers(0, 4, (m, 2 * r)).astype(np.uint16)),
        }
        if case.tokens:
            columns["token_loss"] = _lists((rng.random((m, width)) * 4).astype(np.float16))
        path = directory / f"part-r{g % 2:05d}-fuzz-{g:06d}.parquet"
        plain = g == case.victim and case.damage in PATCHES  # a value patch needs plain, uncompressed pages
        pq.write_table(pa.table(columns), path, compression="none" if plain else case.compression,
                       use_dictionary=not plain, write_page_checksum=case.checksums)
        parts.append(path)
    return parts


def _lists(values: np.ndarray) -> pa.Array:
    m, w = values.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (m + 1) * w, w, dtype=np.int32)), pa.array(values.ravel()))


# ------------------------------------------------------------------ the damage


def damage(path: Path, case: Case, rng: np.random.Generator) -> str:
    """Damage the part at `path` as `case.damage` says; returns what was done, in words."""
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata
    footer_start = len(data) - 8 - struct.unpack("<i", data[-8:-4])[0]
    kind = case.damage
    if kind == "none":
        return "none"
    if kind == "truncate":
        keep = int(rng.integers(0, len(data)))
        path.write_bytes(bytes(data[:keep]))
        return f"truncated to {keep} of {len(data)} bytes"
    if kind == "flip":
        flips = []
        for _ in range(int(rng.integers(1, 4))):
            start, end = _chunk(meta, str(rng.choice(meta.schema.names)))
            at, bit = int(rng.integers(start, end)), int(rng.integers(8))
            data[at] ^= 1 << bit
            flips.append(f"{at}.{bit}")
        path.write_bytes(bytes(data))
        return f"bits flipped at {', '.join(flips)}"
    if kind == "zero_chunk":
        length = int(rng.integers(64, 2048))
        at = int(rng.integers(4, max(5, footer_start - length)))
        data[at:at + length] = bytes(min(length, footer_start - at))
        path.write_bytes(bytes(data))
        return f"{length} bytes zeroed at {at}"
    table = pq.read_table(path)
    ids = table.column("sample_id").to_numpy()
    fmt = "<Q" if ids.dtype == np.uint64 else "<q"
    if kind in ("footer_ids", "footer_epoch"):  # the footer's statistics, not the pages
        column = "sample_id" if kind == "footer_ids" else "epoch"
        values = table.column(column).to_numpy()
        fmt = fmt if column == "sample_id" else "<i"
        which = str(rng.choice(["min", "max"]))
        old = int(values.max() if which == "max" else values.min())
        new = old + (-1 if which == "max" else 1) * int(rng.integers(1, 3))
        footer = bytes(data[footer_start:])
        count = footer.count(struct.pack(fmt, old))
        data[footer_start:] = footer.replace(struct.pack(fmt, old), struct.pack(fmt, new))
        path.write_bytes(bytes(data))
        return f"footer's {column} {which} {old} -> {new} ({count} place(s))"
    row = int(rng.integers(0, table.num_rows))
    if kind.startswith("id_"):
        column, fmt_one = "sample_id", fmt
        new = {"id_above": int(ids.max()) + 1, "id_negative": -1, "id_huge": 5_000_000_000}[kind]
        if fmt == "<Q" and new < 0:
            new = 2**64 - 1
    else:
        column, fmt_one = "epoch", "<i"
        new = -3 if kind == "epoch_negative" else 1_000_000
    values = table.column(column).to_numpy()
    size = struct.calcsize(fmt_one)
    _, end = _chunk(meta, column)  # one plain data page: its values come last, one after another
    at = end - len(values) * size + row * size
    if bytes(data[at:at + size]) != struct.pack(fmt_one, int(values[row])):
        raise RuntimeError(f"{path}: cannot place row {row} of {column} in its page")
    data[at:at + size] = struct.pack(fmt_one, new)
    path.write_bytes(bytes(data))
    return f"{column} of row {row}: {values[row]} -> {new}"


def _chunk(meta: pq.FileMetaData, column: str) -> tuple[int, int]:
    """The bytes of `column`'s chunk in the first row group (its dictionary and data pages)."""
    chunk = meta.row_group(0).column(meta.schema.names.index(column))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    return start, start + chunk.total_compressed_size


# ------------------------------------------------------------------ a case, run and judged


def run_case(case: Case, worker: Worker, root: Path) -> tuple[str, str]:
    """(outcome, detail): outcome "result" (the correct result), "skipped" (the correct result
    without the damaged part, with --skip-corrupt), "error" (a one-line error), or "FAIL: ..."."""
    rng = np.random.default_rng()
    rng.bit_generator.state = case.rng_state
    logs = root / "logs"
    parts = write_log(logs, case, rng)
    shutil.copytree(logs, root / "clean")  # the log before the damage (its parts have the same names)
    victim = parts[case.victim]
    env = {"CARTO_NO_COMPILED": "1"} if case.build == "numpy" else {}
    skip = ["--skip-corrupt"] if case.skip_corrupt else []
    out = root / "out.parquet"
    if case.command == "update":  # a state saved from the other parts, then the damaged one folded in
        held = root / victim.name
        victim.rename(held)
        argv = ["score", str(logs), "--out", str(out), "--update", "--memorization", "forgets", "--method",
                case.method, *skip]
        first = worker.ask({"op": "cli", "argv": argv, "env": env})
        if first.get("rc") != 0:
            return "FAIL: --update on the undamaged parts", json.dumps(first)[:2000]
        what = damage(held, case, rng)
        held.rename(victim)
    else:
        what = damage(victim, case, rng)
        argv = {"score": ["score", str(logs), "--out", str(out), "--method", case.method,
                          "--memorization", case.signal, *skip],
                "summary": ["logs", "summary", str(logs), "--json", *skip],
                "bucketize": ["logs", "bucketize", str(logs), "--out", str(root / "bucketed"), "--buckets", "3",
                              *skip]}[case.command]
    answer = worker.ask({"op": "cli", "argv": argv, "env": env})
    detail = f"{what}; {argv[0]} {argv[1]}: "
    if answer.get("hang"):
        return "FAIL: hang", detail + f"no answer in {worker.timeout:g} s"
    if "signal" in answer:
        return "FAIL: signal", detail + f"the process died (signal or status {answer['signal']})"
    lines = [line for line in answer["err"].splitlines() if line.strip()]
    if "Traceback" in answer["err"] or answer["rc"] not in (0, 1):
        return "FAIL: traceback", detail + answer["err"][-3000:]
    if answer["rc"] == 1:
        errors = [line for line in lines if line.startswith("Error:")]
        others = [line for line in lines if not line.startswith(("Error:", "Warning:", "Note:"))]
        if len(errors) != 1 or others or lines[-1] != errors[0]:
            return "FAIL: not one Error: line", detail + answer["err"][-3000:]
        if case.damage == "none":
            return "FAIL: an error on an undamaged log", detail + errors[0]
        return "error", detail + errors[0]
    skipped = {line.split("skipped ", 1)[1].split(": ", 1)[0] for line in lines if line.startswith("Warning: skipped")}
    if skipped - {str(victim)}:
        return "FAIL: skipped an undamaged part", detail + ", ".join(sorted(skipped))
    kept = [p for p in parts if str(p) not in skipped]
    truth = worker.ask({"op": "read", "paths": [str(p) for p in kept]})
    if "hang" in truth or "signal" in truth:
        return "FAIL: pyarrow itself failed to read the parts", detail + json.dumps(truth)
    problem = {"score": _check_scores, "update": _check_scores, "summary": _check_summary,
               "bucketize": _check_buckets}[case.command](case, worker, root, kept, truth, answer, env)
    if problem and problem[0] == "unread":  # the damage lies where the command does not read
        return "result (damage not read)", detail + problem[1]
    if problem:
        return f"FAIL: {problem[0]}", detail + problem[1]
    return ("skipped" if skipped else "result"), detail + "ok"


def _readable(truth: dict, columns: list[str]) -> tuple[dict, str | None]:
    """{part: {column: values}} of `columns` (those a part has), or the first part and column
    pyarrow cannot read."""
    found = {}
    for path, part in truth.items():
        if isinstance(part, str):
            return {}, f"{path}: {part}"
        found[path] = {}
        for name in columns:
            if name in part:
                if isinstance(part[name], str):
                    return {}, f"{path} column {name}: {part[name]}"
                found[path][name] = part[name]
    return found, None


def _check_scores(case: Case, worker: Worker, root: Path, kept: list[Path], truth: dict, answer: dict,
                  env: dict) -> tuple[str, str] | None:
    import polars as pl

    columns, unreadable = _readable(truth, ["sample_id", "loss"])
    if unreadable:
        return "scored what pyarrow cannot read", unreadable
    ids = {sid for part in columns.values() for sid, loss in zip(part["sample_id"], part["loss"])
           if loss is not None and np.isfinite(loss)}
    logs = root / "logs"
    if len(kept) < len(list(logs.glob("*.parquet"))):  # the reference runs on the parts that were kept
        logs = root / "kept"
        logs.mkdir()
        for path in kept:
            shutil.copy(path, logs / path.name)
    got = pl.read_parquet(root / "out.parquet").sort("sample_id")
    if set(got["sample_id"].to_list()) != ids:
        missing, extra = ids - set(got["sample_id"].to_list()), set(got["sample_id"].to_list()) - ids
        return "another set of samples", f"missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
    ref = _reference(worker, logs, root / "reference.parquet", case.signal)
    if ref.get("rc") == 0:
        differs = _differences(got, pl.read_parquet(root / "reference.parquet").sort("sample_id"))
        return ("scores differ from the reference path", differs) if differs else None
    # The reference path reads what the command did not (the hit runs of an early part, say): the
    # command succeeded only if the damage it met decoded (no checksum), and then its scores are
    # the reference's on the files as pyarrow reads them, the columns it cannot read taken from the
    # log before the damage (which the command cannot have read: it reads with pyarrow too).
    mended = _mended(root, kept, truth)
    if mended is None:
        return "succeeded where the reference path failed", json.dumps(ref)[-2000:]
    again = _reference(worker, mended, root / "mended.parquet", case.signal)
    if again.get("rc") != 0:
        return "succeeded where the reference path fails on the readable columns", json.dumps(again)[-2000:]
    differs = _differences(got, pl.read_parquet(root / "mended.parquet").sort("sample_id"))
    if differs:
        return "succeeded where the reference path failed, with other scores than the readable columns give", (
            differs + "; reference: " + json.dumps(ref)[-1000:])
    return "unread", "the reference path reads what the command did not: " + ref["err"].strip()[-300:]


def _mended(root: Path, kept: list[Path], truth: dict) -> Path | None:
    """A copy of the kept parts, each as pyarrow reads it column by column, a column it cannot read
    taken from the log before the damage; None where that cannot be made (a footer pyarrow cannot
    read, columns of different lengths)."""
    mended = root / "mended"
    mended.mkdir()
    for path in kept:
        read = truth[str(path)]
        if isinstance(read, str):
            return None
        clean = pq.read_table(root / "clean" / path.name)
        columns = {name: clean.column(name) if isinstance(read.get(name), str) or name not in read
                   else pa.array(read[name], type=clean.schema.field(name).type) for name in clean.column_names}
        if len({len(c) for c in columns.values()}) > 1:
            return None
        pq.write_table(pa.table(columns), mended / path.name)
    return mended


def _reference(worker: Worker, logs: Path, out: Path, signal: str) -> dict:
    """The reference path's run over `logs`: the general kernel, the signal's Polars definition."""
    argv = ["score", str(logs), "--out", str(out), "--method", "general", "--memorization", signal]
    return worker.ask({"op": "cli", "argv": argv, "env": {"CARTO_NO_COMPILED": "1"}, "reference": True})


def _differences(got, want) -> str:
    """The columns where two frames differ (NaN equal to NaN, null to null), or ""."""
    if got.columns != want.columns or got.height != want.height:
        return f"shape {got.shape} {got.columns} against {want.shape} {want.columns}"
    bad = []
    for name in got.columns:
        a, b = got[name], want[name]
        if not (a.is_null() == b.is_null()).all():
            bad.append(f"{name} (nulls)")
            continue
        a, b = a.drop_nulls().to_numpy(), b.drop_nulls().to_numpy()
        same = np.array_equal(a, b, equal_nan=True) if a.dtype.kind == "f" else np.array_equal(a, b)
        if not same:
            bad.append(name)
    return ", ".join(bad)


def _check_summary(case: Case, worker: Worker, root: Path, kept: list[Path], truth: dict, answer: dict,
                   env: dict) -> tuple[str, str] | None:
    columns, unreadable = _readable(truth, ["sample_id", "epoch", "rank"])
    if unreadable:
        return "summarised what pyarrow cannot read", unreadable
    ids = [sid for part in columns.values() for sid in part["sample_id"]]
    epochs = {e for part in columns.values() for e in part["epoch"]}
    ranks = {r for part in columns.values() for r in part.get("rank", []) if r is not None}
    want = {"parts": len(kept), "rows": len(ids), "samples": len(set(ids)), "epochs": len(epochs),
            "epoch_range": [min(epochs), max(epochs)] if epochs else None, "ranks": len(ranks) or 1}
    got = json.loads(answer["out"])
    wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    return ("another summary than the files hold", json.dumps(wrong)) if wrong else None


def _check_buckets(case: Case, worker: Worker, root: Path, kept: list[Path], truth: dict, answer: dict,
                   env: dict) -> tuple[str, str] | None:
    names = sorted({name for part in truth.values() if isinstance(part, dict) for name in part})
    columns, unreadable = _readable(truth, names)
    if unreadable:
        return "bucketized what pyarrow cannot read", unreadable

    def key(values: list) -> tuple:
        return tuple("nan" if isinstance(v, float) and v != v else tuple(key(v)) if isinstance(v, list) else v
                     for v in values)

    want = Counter()
    for part in columns.values():
        width = len(next(iter(part.values())))
        want.update(key([part.get(name, [None] * width)[i] for name in names]) for i in range(width))
    got, misplaced = Counter(), 0
    for path in (root / "bucketed").rglob("*.parquet"):
        table = pq.read_table(path)
        bucket = int(path.parent.name.split("=")[1])
        rows = table.to_pylist()
        misplaced += sum(row["sample_id"] % 3 != bucket for row in rows)
        got.update(key([row.get(name) for name in names]) for row in rows)
    if misplaced:
        return "rows in the wrong bucket", f"{misplaced} row(s)"
    if got != want:
        missing, extra = sum((want - got).values()), sum((got - want).values())
        return "other rows than the files hold", f"{missing} missing, {extra} extra"
    return None


# ------------------------------------------------------------------ the command line


def run(cases: list[Case], *, timeout: float, keep: Path | None = None, verbose: bool = False,
        echo=print) -> Counter:
    """Run `cases`; the outcomes counted; each failure (each case, with `verbose`) echoed in a line."""
    worker = Worker(timeout)
    outcomes: Counter = Counter()
    try:
        for case in cases:
            root = Path(tempfile.mkdtemp(prefix="carto-fuzz-", dir=keep))
            try:
                outcome, detail = run_case(case, worker, root)
            except Exception as exc:  # the harness itself: say which case, and go on
                outcome, detail = "FAIL: harness", f"{type(exc).__name__}: {exc}"
            outcomes[outcome] += 1
            if verbose or outcome.startswith("FAIL"):
                echo(f"{outcome}: {case.name()}: {detail}")
            if keep is None or not outcome.startswith("FAIL"):
                shutil.rmtree(root, ignore_errors=True)
    finally:
        worker.stop()
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="index of the first case")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a command counts as a hang")
    parser.add_argument("--keep", type=Path, help="keep the directories of failing cases here")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cases = [draw_case(args.seed, i) for i in range(args.first, args.first + args.cases)]
    outcomes = run(cases, timeout=args.timeout, keep=args.keep, verbose=args.verbose)
    failed = sum(n for outcome, n in outcomes.items() if outcome.startswith("FAIL"))
    print(f"{len(cases)} cases in {time.monotonic() - started:.0f} s: "
          + ", ".join(f"{outcome} {n}" for outcome, n in sorted(outcomes.items())))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
