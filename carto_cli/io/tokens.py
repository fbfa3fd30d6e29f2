"""A training dataset as token rows: what memorized strings are read from and matched against
(`carto score --data`).

    data = open_tokens(Path("train.parquet"))                   # an input_ids column
    data = open_tokens(Path("train.jsonl"), tokenizer="bytes")  # texts, one token per UTF-8 byte
    data = open_tokens(Path("train.jsonl"), tokenizer="tok.json")  # texts, a local tokenizer
    for rows in data.batches():                                 # TokenRows, a batch at a time
        ...
    rows = data.rows(np.array([3, 17]))                         # the rows of given sample ids

A dataset is any file `carto inspect --data` reads (Parquet, JSON Lines, CSV, a `datasets`
save_to_disk directory), matched to the log by its `sample_id` column or by row order (row i is
sample_id i), as there. Its tokens come from, in this order:
- an `input_ids` column (lists of integers): the tokens as the model was fed them, no padding (a
  tokenizer, when given, only decodes them for display);
- a text column with `tokenizer="bytes"`: each UTF-8 byte a token (byte-level models);
- a text column with a local tokenizer: a `tokenizer.json` file (the `tokenizers` package) or a
  directory `transformers.AutoTokenizer` loads without network; special tokens added as the
  tokenizer adds them by default.

Where a logged position lands in a row (`first_target`): the log's sketch positions count from the
sample's first target token (`carto_cli.log.sketch`), so logged position j is row token
`first_target + j`. `first_target` is the label shift (1 for a causal LM whose labels are its
inputs, shifted inside the model; 0 when a row holds the targets themselves), moved past a masked
prompt where the dataset has a `labels` column: the first index t >= shift with labels[t] != -100.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from carto_cli.errors import DatasetError, MissingDependencyError, OptionError, first_line
from carto_cli.io import datasets

INPUT_IDS = "input_ids"
LABELS = "labels"
IGNORE_INDEX = -100
BYTES = "bytes"  # the tokenizer name of byte-level models: each UTF-8 byte is one token
# Rows read at a time: a quarter of the CPU of 65,536-row batches in bench_findings' development runs.
BATCH_ROWS = 8_192


@dataclass(frozen=True)
class TokenRows:
    """Rows of tokens, flat: row i is `values[offsets[i]:offsets[i + 1]]`, the row of `sample_ids[i]`;
    logged position j of that sample is its token `first_target[i] + j`."""

    sample_ids: np.ndarray  # (n,) int64
    values: np.ndarray  # (offsets[-1],) the tokens, in the dataset's integer type
    offsets: np.ndarray  # (n + 1,) int64
    first_target: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.sample_ids)

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class Shard:
    """A piece of a dataset read apart: its Parquet row groups (None: the whole file) and the index
    of its first row in the dataset (the sample id of that row, by row order)."""

    row_groups: tuple[int, ...] | None
    first_row: int


@dataclass
class TokenDataset:
    """A dataset opened for its tokens (see the module docstring)."""

    path: Path
    frame: pl.LazyFrame  # sample_id (when the dataset has one), the token source column, labels (maybe)
    source: str  # the column tokens come from: input_ids, or a text column
    tokenizer: Any  # None (input_ids), BYTES, or an object with encode/decode
    by_row_order: bool
    has_labels: bool
    label_shift: int = 1
    _cached: tuple[bytes, pl.DataFrame] | None = field(default=None, repr=False, compare=False)

    @property
    def describe(self) -> str:
        how = {None: "token ids", BYTES: "UTF-8 bytes"}.get(self.tokenizer if isinstance(self.tokenizer, str | None)
                                                           else "", "tokenized")
        return f"{self.path} ({self.source}, {how})"

    def shards(self, rows_per_shard: int = 262_144) -> list[Shard]:
        """The dataset cut into pieces that can be read apart (by another process: `--engine ray`):
        a Parquet file's row groups, about `rows_per_shard` rows a piece; any other format, one piece."""
        if not self._is_parquet():
            return [Shard(None, 0)]
        metadata = pq.ParquetFile(self.path).metadata
        shards, groups, first, rows = [], [], 0, 0
        for g in range(metadata.num_row_groups):
            groups.append(g)
            rows += metadata.row_group(g).num_rows
            if rows >= rows_per_shard or g == metadata.num_row_groups - 1:
                shards.append(Shard(tuple(groups), first))
                first, groups, rows = first + rows, [], 0
        return shards or [Shard((), 0)]

    def batches(self, batch_rows: int = BATCH_ROWS, shard: Shard | None = None) -> Iterator[TokenRows]:
        """Every row (of `shard`, when given), in dataset order, `batch_rows` at a time (a Parquet file
        is read a row group's batch at a time; other formats are read whole first)."""
        columns = self.frame.collect_schema().names()
        start = 0 if shard is None else shard.first_row
        for frame in self._frames(columns, batch_rows, None if shard is None else shard.row_groups):
            if self.by_row_order:
                frame = frame.with_columns(pl.int_range(start, start + frame.height, dtype=pl.Int64)
                                           .alias(datasets.SAMPLE_ID))
            start += frame.height
            yield self._token_rows(frame)

    def rows(self, ids: np.ndarray) -> TokenRows:
        """The rows of the given sample ids, in that order; DatasetError when one is missing. The
        rows last asked for are kept: asking again (another label shift, the findings after the
        shift was measured on them) reads the dataset once."""
        ids = np.asarray(ids, dtype=np.int64)
        key = ids.tobytes()
        if self._cached is None or self._cached[0] != key:
            self._cached = key, self._read_rows(ids)
        return self._token_rows(self._cached[1])

    def _read_rows(self, ids: np.ndarray) -> pl.DataFrame:
        wanted = pl.DataFrame({datasets.SAMPLE_ID: ids}, schema={datasets.SAMPLE_ID: pl.Int64})
        frame = self.frame
        if self.by_row_order:
            frame = frame.with_row_index(datasets.SAMPLE_ID).with_columns(pl.col(datasets.SAMPLE_ID).cast(pl.Int64))
        found = self._collect(frame.with_columns(pl.col(datasets.SAMPLE_ID).cast(pl.Int64))
                              .join(wanted.lazy(), on=datasets.SAMPLE_ID, how="semi"))
        if found[datasets.SAMPLE_ID].n_unique() < found.height:
            dup = found.filter(pl.col(datasets.SAMPLE_ID).is_duplicated())[datasets.SAMPLE_ID].min()
            raise DatasetError(f"{self.path}: sample_id {dup} appears more than once; each sample needs exactly "
                               "one row")
        missing = np.setdiff1d(ids, found[datasets.SAMPLE_ID].to_numpy())
        if len(missing):
            raise DatasetError(
                f"{self.path}: {len(missing):,} of the {len(np.unique(ids)):,} sample ids the log scored as "
                f"memorized are not in it (such as {int(missing[0])}); pass the dataset the model was trained on")
        order = pl.DataFrame({datasets.SAMPLE_ID: ids}).with_row_index("_order")
        return found.join(order, on=datasets.SAMPLE_ID).sort("_order").drop("_order")

    def decode(self, tokens: np.ndarray) -> str:
        """Tokens as text: bytes as UTF-8 (invalid bytes replaced), a tokenizer's decode, else the ids."""
        if self.tokenizer == BYTES:
            return bytes(np.asarray(tokens, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")
        if self.tokenizer is not None:
            return self.tokenizer.decode([int(t) for t in tokens])
        return "[" + " ".join(str(int(t)) for t in tokens) + "]"

    # ------------------------------------------------------------------ reading

    def _is_parquet(self) -> bool:
        return self.path.is_file() and datasets.SUFFIXES.get(self.path.suffix.lower()) == "parquet"

    def _frames(self, columns: list[str], batch_rows: int, row_groups: tuple[int, ...] | None
                ) -> Iterator[pl.DataFrame]:
        if self._is_parquet():
            try:
                # no pre-buffering: pyarrow's default grew to the file's size (16 GiB for 15.5 GiB of
                # tokens, docs/benchmark-results/findings-10M-3119f1c.txt); 1 MiB reads keep it bounded
                file = pq.ParquetFile(self.path, pre_buffer=False, buffer_size=1 << 20)
                for batch in file.iter_batches(batch_size=batch_rows, columns=columns, row_groups=row_groups):
                    yield pl.from_arrow(batch)
            except (OSError, ValueError) as exc:
                raise DatasetError(f"{self.path}: not readable as a dataset ({first_line(exc)})") from None
            return
        whole = self._collect(self.frame)
        for lo in range(0, max(whole.height, 1), batch_rows):
            yield whole.slice(lo, batch_rows)

    def _collect(self, frame: pl.LazyFrame) -> pl.DataFrame:
        try:
            return frame.collect()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DatasetError(f"{self.path}: not readable as a dataset ({first_line(exc)})") from None

    def _token_rows(self, frame: pl.DataFrame) -> TokenRows:
        ids = frame[datasets.SAMPLE_ID].cast(pl.Int64).to_numpy()
        if self.source == INPUT_IDS:
            column = frame[self.source]
            if column.null_count():
                raise DatasetError(f"{self.path}: {column.null_count():,} null {self.source} value(s); every row "
                                   "needs its tokens")
            lengths = column.list.len().to_numpy().astype(np.int64)
            # the column's own integer type (uint16 tokens stay 2 bytes): the search takes any
            values = column.explode().to_numpy() if len(column) else np.zeros(0, dtype=np.int64)
        else:
            encoded = [self._encode(text) for text in frame[self.source].to_list()]
            lengths = np.array([len(e) for e in encoded], dtype=np.int64)
            values = np.concatenate(encoded) if encoded else np.zeros(0, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        first = np.full(len(ids), self.label_shift, dtype=np.int64)
        if self.has_labels:
            first = self._first_targets(frame[LABELS], first)
        return TokenRows(ids, values, offsets, first)

    def _encode(self, text: Any) -> np.ndarray:
        if text is None:
            return np.zeros(0, dtype=np.int64)
        if self.tokenizer == BYTES:
            data = text if isinstance(text, bytes) else str(text).encode("utf-8")
            return np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        encoded = self.tokenizer.encode(str(text))
        ids = getattr(encoded, "ids", encoded)  # tokenizers' Encoding, or a transformers list
        return np.asarray(ids, dtype=np.int64)

    def _first_targets(self, labels: pl.Series, shift: np.ndarray) -> np.ndarray:
        """Per row, the first index t >= the shift whose label is not IGNORE_INDEX (the shift where
        the row has none)."""
        first = shift.copy()
        for i, row in enumerate(labels.to_list()):
            if row is None:
                continue
            targets = np.flatnonzero(np.asarray(row[self.label_shift:]) != IGNORE_INDEX)
            if len(targets):
                first[i] = self.label_shift + int(targets[0])
        return first


def open_tokens(path: Path, *, tokenizer: str | None = None, text_column: str | None = None,
                label_shift: int = 1) -> TokenDataset:
    """Open `path` for its tokens (see the module docstring). Raises DatasetError or OptionError."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory; pass the training dataset with --data")
    frame = datasets._scan(path)
    try:
        schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DatasetError(f"{path}: not readable as a dataset ({first_line(exc)}); pass a {datasets.KNOWN}") from None
    names = list(schema.names())
    by_row_order = datasets.SAMPLE_ID not in names
    if not by_row_order and not schema[datasets.SAMPLE_ID].is_integer():
        raise DatasetError(f"{path}: its sample_id column is {schema[datasets.SAMPLE_ID]}, not integers; rename it, "
                           "or make it the integer ids the training run logged")
    has_labels = LABELS in names and isinstance(schema[LABELS], pl.List)
    if INPUT_IDS in names and text_column is None:  # the tokens themselves; a tokenizer only decodes them
        if not (isinstance(schema[INPUT_IDS], pl.List) and schema[INPUT_IDS].inner.is_integer()):
            raise DatasetError(f"{path}: its input_ids column is {schema[INPUT_IDS]}, not lists of integers")
        source = INPUT_IDS
        loaded = tokenizer if tokenizer in (None, BYTES) else load_tokenizer(tokenizer)
    else:
        if tokenizer is None:
            raise OptionError(
                f"{path} has no input_ids column; pass --tokenizer: a tokenizer.json file or a local tokenizer "
                "directory for the model's tokenizer, or `bytes` for a byte-level model")
        source = datasets._text_column(path, schema, text_column)
        loaded = tokenizer if tokenizer == BYTES else load_tokenizer(tokenizer)
    keep = [c for c in (datasets.SAMPLE_ID, source, LABELS if has_labels else None) if c is not None and c in names]
    return TokenDataset(path, frame.select(keep), source, loaded, by_row_order, has_labels, label_shift)


def load_tokenizer(location: str) -> Any:
    """A local tokenizer: a tokenizer.json file (tokenizers) or a directory (transformers), no network."""
    where = Path(location)
    if not where.exists():
        raise OptionError(f"--tokenizer {location}: no such file or directory; pass a tokenizer.json file, a local "
                          "tokenizer directory, or `bytes`")
    if where.is_file():
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise MissingDependencyError("--tokenizer with a tokenizer.json file needs the tokenizers package: "
                                         "pip install tokenizers") from None
        try:
            return Tokenizer.from_file(str(where))
        except Exception as exc:  # the Rust side raises its own exception type
            raise OptionError(f"--tokenizer {location}: not a tokenizer.json file ({first_line(exc)})") from None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise MissingDependencyError("--tokenizer with a directory needs the transformers package: "
                                     "pip install transformers") from None
    try:
        return AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds; any of them means the same to the user
        raise OptionError(f"--tokenizer {location}: not a tokenizer directory ({first_line(exc)})") from None
