"""Where scoring runs. *What* runs is always `scoring.Kernel.state` over some parts; this module
decides *where*: bucket after bucket in this process, or as Ray tasks (see `carto_cli.engines.buckets`).

Buckets hold disjoint samples, so each is reduced on its own: peak memory is that of the largest
bucket, plus, for the exact quantile thresholds, two float columns over all samples (16 bytes per
sample).

Each bucket is reduced by `scoring.bucket_state`: the dense-id kernel when the bucket's ids are
dense once divided by the number of buckets (as dataset indices are), else `Kernel.state`.

Engines:
- `local`: buckets one after another in this process (a non-bucketed log is one bucket).
- `ray`: one Ray task per bucket (at most two per cluster CPU in flight), on a running cluster
  (`address`) or a local instance started for the run. Workers need carto installed and the parts
  readable at the same path or URL (shared storage or object storage, see `carto_cli.io.storage`).
  The driver receives one bucket's state at a time.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from carto_cli.errors import MissingDependencyError, OptionError
from carto_cli.io.logs import LogPart
from carto_cli.score import scoring

ENGINES = ("local", "ray")


def check(engine: str, address: str | None) -> None:
    """Refuse an unknown engine, or an address for an engine that takes none."""
    if engine not in ENGINES:
        raise OptionError(f"--engine must be one of {', '.join(ENGINES)}; got '{engine}'")
    if engine == "local" and address is not None:
        raise OptionError("--address applies to --engine ray only")


def bucket_states(
    kernel: scoring.Kernel,
    groups: dict[int | None, list[LogPart]],
    *,
    engine: str = "local",
    address: str | None = None,
    dense: bool = True,
    signal: tuple[scoring.Plan, scoring.ScoreParams] | None = None,
) -> Iterator[tuple[int | None, scoring.Bucket]]:
    """(bucket, its `scoring.Bucket`) for every bucket, as they finish. `dense=False` (a method the
    user forced) keeps to `Kernel.state`; `signal` asks each bucket for its memorization signal."""
    check(engine, address)
    # bucket b of n holds the ids = b mod n; n is taken as the highest bucket + 1 (the dense kernel
    # checks every id against it and declines where it does not hold)
    stride = 0 if not dense else 1 if None in groups else max(groups) + 1
    if engine == "local":
        for bucket, parts in groups.items():
            yield bucket, scoring.bucket_state(kernel, parts, stride=stride, signal=signal)
        return
    yield from _ray_states(kernel, groups, stride, signal, address)


def _ray_states(kernel: scoring.Kernel, groups: dict, stride: int, signal, address: str | None):
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            "--engine ray needs Ray: pip install 'carto-cli[ray]'"
        ) from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    try:
        remote = ray.remote(_reduce_bucket)
        # At most two tasks per cluster CPU in flight: finished states wait in Ray's object store
        # only until the driver fetches them, so the store holds a bounded number of buckets.
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        queue = iter(groups.items())
        pending: dict = {}

        def submit() -> None:
            for bucket, parts in itertools.islice(queue, limit - len(pending)):
                pending[remote.remote(kernel, parts, stride, signal)] = bucket

        submit()
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            result = ray.get(done)
            bucket = pending.pop(done)
            submit()
            yield bucket, result
    finally:
        if started:
            ray.shutdown()


def _reduce_bucket(kernel: scoring.Kernel, parts: list[LogPart], stride: int, signal) -> scoring.Bucket:
    """The Ray task: the same reduction the local engine runs."""
    return scoring.bucket_state(kernel, parts, stride=stride, signal=signal)


def score_buckets(
    plan: scoring.Plan,
    groups: dict[int | None, list[LogPart]],
    params: scoring.ScoreParams,
    *,
    engine: str = "local",
    address: str | None = None,
    on_bucket: Callable[[], None] | None = None,
) -> tuple[pl.LazyFrame, Callable[[], None], dict]:
    """Reduce every bucket, finalise its scores and spill them to a temporary directory.

    Returns a lazy frame over the spilled scores (sorted by (bucket, sample_id)), a cleanup
    function to call once the frame has been consumed, and run facts (rows, samples counted by
    the general path). Memory: one bucket's state at a time.
    """
    spill = Path(tempfile.mkdtemp(prefix="carto-buckets-"))
    facts = {"rows": 0, "samples_general": 0, "buckets": len(groups), "dense_buckets": 0}
    try:
        signal = (plan, params) if params.memorization != "forgets" else None
        for bucket, reduced in bucket_states(plan.kernel, groups, engine=engine, address=address,
                                             dense=params.method == "auto", signal=signal):
            scores = scoring.finalize(reduced.state, never_learned=params.never_learned)
            if reduced.signal is not None:
                scores = scoring.with_signal(scores, reduced.signal)
            # lz4: a temporary file, read once; 40% faster to write than zstd, 1.5x the size
            scores.write_parquet(spill / f"{0 if bucket is None else bucket:012d}.parquet", compression="lz4")
            facts["rows"] += int(reduced.state["n_seen"].sum())
            facts["samples_general"] += reduced.samples_general
            facts["dense_buckets"] += reduced.dense
            if on_bucket is not None:
                on_bucket()
    except BaseException:
        shutil.rmtree(spill, ignore_errors=True)
        raise
    frame = pl.scan_parquet(sorted(str(p) for p in spill.glob("*.parquet")))
    return frame, lambda: shutil.rmtree(spill, ignore_errors=True), facts
