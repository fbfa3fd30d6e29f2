"""Reading a training dataset's texts, to show them beside their scores (`carto inspect --data`).

    ds = open_dataset(Path("train.jsonl"))             # the text column found by name
    texts = ds.texts([3, 17, 42], max_id=2024)         # sample_id, text for those ids

A dataset is a Parquet, JSON Lines (`.jsonl`, `.ndjson`, `.json`) or CSV file, or a directory
written by Hugging Face's `Dataset.save_to_disk` (read with `datasets.load_from_disk`; needs the
`datasets` package). A sample is matched to its row by the dataset's `sample_id` column, or,
without one, by row order: row i (from 0) is sample_id i, as the shim's default ids are the
dataset index. The text column is the one named, else the first of TEXT_COLUMNS present, else
the only string column.

Edge cases, each a DatasetError with one line that names the file and the fix: an unknown
extension, an unreadable file, no text column (the columns are listed), a `sample_id` column that
is not integer or repeats an id, selected ids missing from the dataset (how many), and, by row
order, a dataset with fewer rows than the scores' largest sample_id + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from carto_cli.errors import DatasetError, MissingDependencyError, first_line

SAMPLE_ID = "sample_id"
# Column names that hold a sample's text, in the order they are tried.
TEXT_COLUMNS = ("text", "content", "document", "sentence", "sentences", "passage", "body", "code",
                "prompt", "question", "input", "source")
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".json": "jsonl", ".csv": "csv"}
KNOWN = ".parquet, .jsonl, .ndjson, .json (JSON Lines), .csv, or a `datasets` save_to_disk directory"


@dataclass(frozen=True)
class Dataset:
    """A dataset opened lazily: `frame` has the id column (or none: row order) and the text column."""

    path: Path
    frame: pl.LazyFrame
    text_column: str
    by_row_order: bool  # no sample_id column: row i is sample_id i

    def texts(self, ids: list[int], *, max_id: int | None = None) -> pl.DataFrame:
        """`sample_id`, `text` of the given ids (String; null where the dataset's text is null).

        `max_id` is the largest sample_id in the scores file: by row order the dataset must have at
        least max_id + 1 rows, whether or not the selected ids need them, or it is not the dataset
        the model was trained on."""
        rows = self._rows()
        if self.by_row_order:
            need = max(max_id if max_id is not None else -1, *ids, -1) + 1
            if rows < need:
                raise DatasetError(
                    f"{self.path}: {rows:,} rows, but the scores have sample_id up to {need - 1:,}; "
                    f"matching by row order (row i is sample_id i) needs at least {need:,} rows: pass "
                    "the dataset the model was trained on, or add a sample_id column"
                )
            frame = self.frame.with_row_index(SAMPLE_ID).with_columns(pl.col(SAMPLE_ID).cast(pl.Int64))
        else:
            frame = self.frame
        wanted = pl.DataFrame({SAMPLE_ID: ids}, schema={SAMPLE_ID: pl.Int64})
        found = self._collect(
            frame.select(pl.col(SAMPLE_ID).cast(pl.Int64), pl.col(self.text_column).alias("text"))
            .join(wanted.lazy(), on=SAMPLE_ID, how="semi")
        )
        if not self.by_row_order:
            if found[SAMPLE_ID].n_unique() < found.height:
                dup = found.filter(pl.col(SAMPLE_ID).is_duplicated())[SAMPLE_ID].min()
                raise DatasetError(f"{self.path}: sample_id {dup} appears more than once; each sample "
                                   "needs exactly one row")
            missing = len(set(ids) - set(found[SAMPLE_ID].to_list()))
            if missing:
                raise DatasetError(
                    f"{self.path}: {missing:,} of the {len(set(ids)):,} selected sample ids are not in its "
                    "sample_id column; pass the dataset the model was trained on"
                )
        return found.with_columns(_as_text(pl.col("text"), found.schema["text"]))

    def _rows(self) -> int:
        return int(self._collect(self.frame.select(pl.len())).item())

    def _collect(self, frame: pl.LazyFrame) -> pl.DataFrame:
        try:
            return frame.collect()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DatasetError(f"{self.path}: not readable as a dataset ({first_line(exc)}); "
                               f"pass a {KNOWN}") from None


def open_dataset(path: Path, *, text_column: str | None = None) -> Dataset:
    """Open `path` (see the module docstring) and find its text column. Raises DatasetError."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory; pass the training dataset with --data")
    frame = _scan(path)
    try:
        schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DatasetError(f"{path}: not readable as a dataset ({first_line(exc)}); pass a {KNOWN}") from None
    columns = list(schema.names())
    text = _text_column(path, schema, text_column)
    by_row_order = SAMPLE_ID not in columns
    if not by_row_order and not schema[SAMPLE_ID].is_integer():
        raise DatasetError(f"{path}: its sample_id column is {schema[SAMPLE_ID]}, not integers; rename it, "
                           "or make it the integer ids the training run logged")
    keep = [text] if by_row_order else [SAMPLE_ID, text]
    return Dataset(path=path, frame=frame.select(keep), text_column=text, by_row_order=by_row_order)


def _scan(path: Path) -> pl.LazyFrame:
    if path.is_dir():
        return _load_from_disk(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DatasetError(f"{path}: unknown dataset format '{path.suffix or path.name}'; pass a {KNOWN}")
    try:
        if kind == "parquet":
            return pl.scan_parquet(path)
        if kind == "jsonl":
            return pl.scan_ndjson(path, infer_schema_length=10_000)
        return pl.scan_csv(path, infer_schema_length=10_000)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DatasetError(f"{path}: not readable as a dataset ({first_line(exc)}); pass a {KNOWN}") from None


def _load_from_disk(path: Path) -> pl.LazyFrame:
    """A `Dataset.save_to_disk` directory, through `datasets.load_from_disk`."""
    if not (path / "state.json").exists() and not (path / "dataset_dict.json").exists():
        raise DatasetError(f"{path}: a directory, but not one written by `datasets` save_to_disk (no "
                           f"state.json); pass a {KNOWN}")
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError(
            f"{path} is a Hugging Face datasets directory, and reading it needs the datasets package: "
            "pip install datasets"
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many kinds; any of them means the same to the user
        raise DatasetError(f"{path}: datasets.load_from_disk failed ({first_line(exc)}); pass a {KNOWN}") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = ", ".join(loaded)
        raise DatasetError(f"{path}: holds several splits ({splits}); pass the training split's directory, "
                           f"such as {path / next(iter(loaded), 'train')}")
    return pl.from_arrow(loaded.with_format("arrow")[:]).lazy()  # respects a select/shuffle's indices


def _text_column(path: Path, schema: pl.Schema, named: str | None) -> str:
    columns = list(schema.names())
    listed = ", ".join(columns) or "none"
    if named is not None:
        if named not in columns:
            raise DatasetError(f"{path}: no column '{named}' (columns: {listed}); pass one of them to --text-column")
        return named
    for name in TEXT_COLUMNS:
        if name in columns:
            return name
    strings = [c for c in columns if schema[c] == pl.String]
    if len(strings) == 1:
        return strings[0]
    why = "no text column found" if not strings else f"{len(strings)} string columns"
    raise DatasetError(f"{path}: {why} (columns: {listed}); name the text column with --text-column")


def _as_text(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Text as a String: bytes decoded as UTF-8 (invalid bytes replaced), other values as written."""
    if dtype == pl.String:
        return column
    if dtype == pl.Binary:
        return column.map_elements(lambda b: b.decode("utf-8", errors="replace"), return_dtype=pl.String)
    return column.map_elements(str, return_dtype=pl.String)


def read_ids(path: Path, *, option: str = "--ids") -> list[int]:
    """Sample ids from a file: Parquet or CSV with a sample_id column, or text with one id a line
    (blank lines and lines starting with # are skipped). Order kept, repeats dropped. `option`
    names the option that passed the file, in the messages."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file; pass {option} a text file with one sample id a line, "
                           "or a Parquet or CSV file with a sample_id column")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind in ("parquet", "csv"):
        frame = _scan(path)
        try:
            names = frame.collect_schema().names()
            if SAMPLE_ID not in names:
                raise DatasetError(f"{path}: no sample_id column (columns: {', '.join(names) or 'none'}); "
                                   f"{option} needs a sample_id column, or a text file with one id a line")
            column = frame.select(SAMPLE_ID).collect()[SAMPLE_ID]
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DatasetError(f"{path}: not readable as an id list ({first_line(exc)})") from None
        if not column.dtype.is_integer() or column.null_count():
            raise DatasetError(f"{path}: its sample_id column must hold integers without nulls; "
                               f"it is {column.dtype} with {column.null_count():,} null(s)")
        ids = column.to_list()
    else:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: not readable as an id list ({first_line(exc)})") from None
        ids = []
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                ids.append(int(line))
            except ValueError:
                raise DatasetError(f"{path}, line {number}: '{line[:40]}' is not a sample id; "
                                   f"{option} takes one integer id a line") from None
    return list(dict.fromkeys(ids))
