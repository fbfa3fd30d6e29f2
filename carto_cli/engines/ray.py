"""The Ray engine: one Ray task per bucket (at most two per cluster CPU in flight), on a running
cluster (`address`) or a local instance started for the run. Each task runs the same reduction as
the local engine (`buckets.bucket_scores`). Workers need carto installed and the parts readable at
the same path or URL (shared storage or object storage, see `carto_cli.io.storage`). The driver
receives one bucket's state at a time. `carto score --data` searches the dataset for the findings'
copies the same way: one task per shard of the dataset (`ray_search`), each the local search.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import polars as pl

from carto_cli.engines.buckets import Bucket, SignalRequest, bucket_scores
from carto_cli.engines.plan import Kernel
from carto_cli.errors import CartoError, MissingDependencyError
from carto_cli.io.logs import LogPart
from carto_cli.io.tokens import Shard, TokenDataset
from carto_cli.score import findings, match


def _ray(address: str | None):
    """The ray module, initialised (on `address`, or a local instance); whether this call started it."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray: pip install 'carto-cli[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray, started


def ray_search(address: str | None) -> findings.Search:
    """`findings.find`'s search as Ray tasks: one task per shard of the dataset
    (`TokenDataset.shards`), each the same `findings.search` the local engine runs; the driver
    gathers the occurrences (few: the copies of the findings)."""

    def run(patterns: match.Patterns, data: TokenDataset) -> pl.DataFrame:
        ray, started = _ray(address)
        try:
            remote = ray.remote(_search_shard)
            frames = ray.get([remote.remote(patterns, data, shard) for shard in data.shards()])
        finally:
            if started:
                ray.shutdown()
        return pl.concat(frames) if frames else pl.DataFrame(schema=findings.HITS_SCHEMA)

    return run


def _search_shard(patterns: match.Patterns, data: TokenDataset, shard: Shard) -> pl.DataFrame:
    """The Ray task: the local engine's search over one shard."""
    return findings.search(patterns, data, shard)


def ray_buckets(kernel: Kernel, groups: dict[int | None, list[LogPart]], *, never_learned: str, stride: int,
                signal: SignalRequest | None, address: str | None) -> Iterator[tuple[int | None, Bucket]]:
    """(bucket, its `Bucket`) for every bucket, as the Ray tasks finish."""
    ray, started = _ray(address)
    try:
        remote = ray.remote(_reduce_bucket)
        # At most two tasks per cluster CPU in flight: finished states wait in Ray's object store
        # only until the driver fetches them, so the store holds a bounded number of buckets.
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        queue = iter(groups.items())
        pending: dict = {}

        def submit() -> None:
            for bucket, parts in itertools.islice(queue, limit - len(pending)):
                pending[remote.remote(kernel, parts, never_learned, stride, signal)] = bucket

        submit()
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            try:
                result = ray.get(done)
            except ray.exceptions.RayTaskError as exc:  # a worker's CartoError (a damaged part): its one line
                if isinstance(exc.cause, CartoError):
                    raise exc.cause from None
                raise
            bucket = pending.pop(done)
            submit()
            yield bucket, result
    finally:
        if started:
            ray.shutdown()


def _reduce_bucket(kernel: Kernel, parts: list[LogPart], never_learned: str, stride: int,
                   signal: SignalRequest | None) -> Bucket:
    """The Ray task: the same reduction the local engine runs."""
    return bucket_scores(kernel, parts, never_learned=never_learned, stride=stride, signal=signal)
