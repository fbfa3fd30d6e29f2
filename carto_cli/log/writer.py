"""The shim's writer side: each `record`'s columns on their way to the host, the background thread
that buffers them, and the Parquet parts it writes.

The training loop hands every `record` to `to_host`, which starts device -> pinned-host copies with
`non_blocking=True` and records a CUDA event behind them (no wait), then to `PartWriter.put`. The
writer thread (`PartWriter`) waits for each batch's event, converts it to Arrow, and writes a part
once `rows_per_part` rows are buffered or on `flush`. A part is written under a hidden `.tmp` name,
fsynced and renamed (`carto_cli.log.durable`), so a reader only ever sees whole parts, with Parquet
page checksums (`write_parquet`).

What a part says about itself (the run, the attempt, the rank, the sketch, ...) is asked of the
logger when the part is written (`describe`), not when the writer starts. The writer adds what
only it knows: the correctness rules of the batches in the part (`carto.correct_rule`) and when
the part was written (`carto.written_ns`, which ends its attempt's lifetime as far as a reader
knows: two attempts of one run and rank whose lifetimes overlap are concurrent writers, never a
crash and its resume; see `carto_cli.io.replays`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from carto_cli.errors import CartoError
from carto_cli.log import packed, schema
from carto_cli.log.durable import write_atomic

KEEP = "_keep"  # the batch's row mask on its way to the writer thread (not a log column)
# Columns of one fixed-width list per sample: (B, W) arrays on their way to the writer.
LIST_COLUMNS = (schema.TOKEN_LOSS, *schema.SKETCH_COLUMNS)
# (rank, metadata) of the part about to be written; asked of the logger at each part
Describe = Callable[[], tuple[int, dict[str, str]]]


@dataclass
class Batch:
    """One `record` call in flight: host tensors (maybe still being copied) and the copy's event."""

    epoch: int
    step: int
    rule: str  # the correctness rule behind this batch's `correct` column
    columns: dict[str, Any]  # column name -> host torch tensor or numpy array, each (B,) or (B, W)
    ready: Any = None  # torch.cuda.Event to wait on, or None when already on the host


@dataclass
class Flush:
    done: threading.Event


_STOP = object()


def to_host(torch: Any, epoch: int, step: int, rule: str, columns: dict[str, Any]) -> Batch:
    """Start device -> pinned-host copies without waiting for them; copy host data defensively (the
    caller may reuse its buffers)."""
    host: dict[str, Any] = {}
    on_cuda = False
    for name, value in columns.items():
        if torch.is_tensor(value):
            value = value.detach()
            value = value.reshape(value.shape[0], -1) if name in LIST_COLUMNS else value.reshape(-1)
            if value.is_cuda:
                pinned = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                pinned.copy_(value, non_blocking=True)
                host[name] = pinned
                on_cuda = True
            else:
                host[name] = value.to("cpu", copy=True)
        else:
            value = np.array(value)
            host[name] = value.reshape(len(value), -1) if name in LIST_COLUMNS else value.reshape(-1)
    ready = None
    if on_cuda:
        ready = torch.cuda.Event()
        ready.record()
    return Batch(epoch=epoch, step=step, rule=rule, columns=host, ready=ready)


class PartWriter:
    """A background thread that buffers batches and writes them as parts of `out_dir`.

    `put` queues a batch (or a `Flush`), waiting while `max_pending` items wait (back-pressure);
    an error in the thread is kept in `error` and the thread drops everything after it (the logger
    reports it at its next call). `token_probe`: sorted ids whose `token_loss` is kept (None: all).
    """

    def __init__(self, out_dir: Path, *, rows_per_part: int, max_pending: int, buckets: int | None,
                 token_probe: np.ndarray | None, describe: Describe) -> None:
        self.out_dir = out_dir
        self.rows_per_part = rows_per_part
        self.buckets = buckets
        self.token_probe = token_probe
        self.describe = describe
        self.parts_written: list[Path] = []
        self.rows_written = 0
        self.error: BaseException | None = None
        self._seq = 0
        self._buffer: list[Batch] = []
        self._buffered_rows = 0
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.thread = threading.Thread(target=self._loop, name="carto-writer", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ called from the training loop

    def put(self, item: object) -> None:
        """Queue an item, waiting while the queue is full (back-pressure) but not on a dead writer."""
        while True:
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                self.raise_if_failed()
                if not self.thread.is_alive():
                    raise CartoError("CartoLogger: the writer thread has stopped") from None

    def raise_if_failed(self) -> None:
        """The writer's error, if any, as a `CartoError` for the training loop."""
        if self.error is not None:
            raise CartoError(f"CartoLogger: writing parts to {self.out_dir} failed: {self.error}") from self.error

    def flush(self) -> None:
        """Block until every batch put so far is in a finished part (or the writer failed)."""
        done = threading.Event()
        self.put(Flush(done))
        while not done.wait(0.1):
            if not self.thread.is_alive():
                break

    def stop(self) -> None:
        """Stop the thread after what it holds (call `flush` first to write it)."""
        if self.thread.is_alive():
            self.put(_STOP)
            self.thread.join()

    # ------------------------------------------------------------------ the writer thread

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is _STOP:
                    return
                if self.error is None:
                    if isinstance(item, Flush):
                        self.write_part()
                    else:
                        packed.compact(item)  # a packed batch: its document slots only
                        self._buffer.append(item)
                        self._buffered_rows += len(item.columns[schema.SAMPLE_ID])
                        if self._buffered_rows >= self.rows_per_part:
                            self.write_part()
            except BaseException as exc:  # reported to the training loop on its next call
                self.error = exc
            finally:
                if isinstance(item, Flush):
                    item.done.set()

    def _batch_arrays(self, batch: Batch, rank: int) -> dict[str, np.ndarray]:
        if batch.ready is not None:
            batch.ready.synchronize()
        arrays = {name: value.numpy() if hasattr(value, "numpy") else value for name, value in batch.columns.items()}
        keep = arrays.pop(KEEP, None)
        if keep is not None:
            keep = np.asarray(keep, dtype=bool)
            arrays = {name: value[keep] for name, value in arrays.items()}
        n = len(arrays[schema.SAMPLE_ID])
        arrays[schema.EPOCH] = np.full(n, batch.epoch, dtype=np.int32)
        arrays[schema.STEP] = np.full(n, batch.step, dtype=np.int64)
        arrays[schema.RANK] = np.full(n, rank, dtype=np.int32)
        return arrays

    def write_part(self) -> None:
        """Write the buffered batches as one part (one file per bucket present with `buckets`)."""
        if not self._buffer:
            return
        rank, metadata = self.describe()
        tables = [self._batch_arrays(b, rank) for b in self._buffer]
        columns, fields = [], []
        for field in schema.LOG_SCHEMA:
            if field.name in (schema.TOP_POS, schema.HIT_RUNS) and any(
                    field.name in t and len(t[field.name]) and t[field.name].max() > np.iinfo(np.uint16).max
                    for t in tables):
                field = field.with_type(pa.list_(pa.uint32()))  # positions of sequences of 65,536 and more
            # Optional columns a batch did not give are nulls; NaN stays NaN (the reader reports it).
            pieces = [
                self._list_array(t, field) if field.name in LIST_COLUMNS and field.name in t
                else pa.array(t[field.name], type=field.type) if field.name in t
                else pa.nulls(len(t[schema.SAMPLE_ID]), type=field.type)
                for t in tables
            ]
            columns.append(pa.concat_arrays(pieces))
            fields.append(field)
        metadata = {**metadata, schema.META_CORRECT_RULE: ",".join(sorted({b.rule for b in self._buffer})),
                    schema.META_WRITTEN: str(time.time_ns())}
        table = pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=metadata))
        if table.num_rows:  # else every row of the buffered batches was masked out by `keep`
            self._write_table(table, f"part-r{rank:05d}-{metadata[schema.META_ATTEMPT]}-{self._seq:06d}")
        self._buffer = []
        self._buffered_rows = 0

    def _write_table(self, table: pa.Table, stem: str) -> None:
        name = f"{stem}{schema.PART_SUFFIX}"
        if self.buckets is None:
            self._write_atomic(table, self.out_dir / name)
        else:  # one file per bucket present, in bucket=<b>/ (b = sample_id mod buckets, floored)
            ids = table.column(schema.SAMPLE_ID).to_numpy()
            bucket = np.mod(ids, self.buckets)
            for b in np.unique(bucket):
                rows = np.flatnonzero(bucket == b)
                directory = self.out_dir / f"bucket={int(b)}"
                directory.mkdir(exist_ok=True)
                self._write_atomic(table.take(rows), directory / name)
        self._seq += 1
        self.rows_written += table.num_rows

    def _list_array(self, table: dict[str, np.ndarray], field: pa.Field) -> pa.Array:
        """A (B, W) array as a list column of `field`'s type; token losses are null outside the
        probe subset."""
        values = np.ascontiguousarray(table[field.name], dtype=field.type.value_type.to_pandas_dtype())
        B, W = values.shape
        offsets = pa.array(np.arange(0, (B + 1) * W, W, dtype=np.int32))
        mask = None
        if field.name == schema.TOKEN_LOSS and self.token_probe is not None:
            mask = pa.array(~np.isin(np.asarray(table[schema.SAMPLE_ID]), self.token_probe))
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=field.type.value_type), mask=mask)

    def _write_atomic(self, table: pa.Table, final: Path) -> None:
        write_atomic(final, lambda tmp: write_parquet(table, tmp))
        self.parts_written.append(final)


def write_parquet(table: pa.Table, path: Path, **options) -> None:
    """How carto writes a log part: zstd, each column in the encoding that suits it
    (`column_encodings`), with a CRC-32 checksum in each data page's header
    (`write_page_checksum`, Parquet's `crc` field), which a reader can verify
    (`pq.ParquetFile(..., page_checksum_verification=True)`) to find a flipped bit in a page instead of
    scoring the wrong value: a zstd page with a flipped bit can decompress without an error. The
    footer, page headers and the file's length are not covered: a damaged footer or header fails
    to parse, a truncated file has no footer. `options`: more of `pq.write_table`'s (the
    benchmarks' row group size)."""
    pq.write_table(table, path, compression="zstd", write_page_checksum=True, **column_encodings(table.schema),
                   **options)


def column_encodings(arrow_schema: pa.Schema) -> dict:
    """`pq.write_table`'s per-column encoding options for a part (docs/logging.md, "Encodings"):

    - float32 and float64 columns (loss, token_acc, tail_loss): BYTE_STREAM_SPLIT, which puts the
      bytes of each position of the values together (sign and exponent apart from the noisy low
      mantissa) before zstd, and no dictionary (a float rarely repeats): the loss and tail_loss
      take about 2 bytes a presentation less each on the real logs (docs/benchmarks.md);
    - the sketch's losses (top_loss, float16 lists): PLAIN. pyarrow decodes a dictionary of float16
      values slowly (with them plain, the sketch's three columns read back with 34-42% less CPU on
      the real logs), and the default signal reads them for every early presentation; DuckDB 2.0
      reads no BYTE_STREAM_SPLIT float16;
    - everything else as pyarrow does by default: dictionary-encoded where a part holds few
      distinct values (ids, epochs, steps, positions and runs, the per-token losses).
    Every reader decodes these (pyarrow, Polars, DuckDB); the values, so the scores, are unchanged.
    """
    dictionary, split = [], {}
    for field in arrow_schema:
        listed = pa.types.is_list(field.type) or pa.types.is_large_list(field.type)
        value_type = field.type.value_type if listed else field.type
        path = f"{field.name}.list.element" if listed else field.name
        if not listed and (pa.types.is_float32(value_type) or pa.types.is_float64(value_type)):
            split[path] = "BYTE_STREAM_SPLIT"
        elif field.name != schema.TOP_LOSS:
            dictionary.append(path)
    return {"use_dictionary": dictionary, "column_encoding": split}
