"""The samples behind a quadrant or an id list, ranked, with their text (`carto inspect`).

    picked = select(scores, quadrant="hotspot-memorized", by="memorization", top=20)
    shown = with_texts(picked, open_dataset(Path("train.parquet")), max_id=scores["sample_id"].max())

Ranking: the `by` column descending (any numeric column of the scores file; nulls last), ties by
sample_id ascending; `rank` counts from 1. A quadrant is one of the four or `unplaced` (a null
quadrant); an id list keeps only those ids, and every one of them must be in the scores file.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from carto_cli.errors import ChoiceError, OptionError
from carto_cli.io.datasets import Dataset
from carto_cli.score import quadrants

QUADRANT_CHOICES = (*quadrants.QUADRANTS, quadrants.UNPLACED)
DEFAULT_BY = "memorization"
DEFAULT_TOP = 20


@dataclass(frozen=True)
class Selection:
    rows: pl.DataFrame  # rank, then the scores' columns, ranked; at most `top` rows
    matched: int  # samples that matched the quadrant or id list, before --top
    total: int  # samples in the scores file


def numeric_columns(scores: pl.DataFrame) -> list[str]:
    return [name for name, dtype in scores.schema.items() if dtype.is_numeric() and name != "sample_id"]


def select(
    scores: pl.DataFrame,
    *,
    quadrant: str | None = None,
    ids: list[int] | None = None,
    by: str = DEFAULT_BY,
    top: int = DEFAULT_TOP,
    source: str = "the scores file",
    ids_from: str = "--ids",
) -> Selection:
    """The `top` samples of a quadrant, of an id list, or of all samples (neither), ranked by `by`.
    `top` 0 keeps every matching sample. `source` names the scores file in messages, `ids_from`
    where the ids came from (the option)."""
    if quadrant is not None and ids is not None:
        raise OptionError("--quadrant and --ids choose the samples in two ways; pass one of them")
    if top < 0:
        raise OptionError(f"--top must be >= 0 (0 shows every sample); got {top}")
    numeric = numeric_columns(scores)
    if by not in numeric:
        raise ChoiceError(f"--by {by}: not a numeric column of {source}; choose one of {', '.join(numeric)}")
    frame = scores
    if quadrant is not None:
        if quadrant not in QUADRANT_CHOICES:
            raise ChoiceError(f"--quadrant must be one of {', '.join(QUADRANT_CHOICES)}; got '{quadrant}'")
        frame = frame.filter(pl.col("quadrant").is_null() if quadrant == quadrants.UNPLACED
                             else pl.col("quadrant") == quadrant)
    if ids is not None:
        wanted = pl.DataFrame({"sample_id": ids}, schema={"sample_id": scores.schema["sample_id"]})
        frame = frame.join(wanted, on="sample_id", how="semi")
        missing = len(set(ids)) - frame.height
        if missing:
            example = sorted(set(ids) - set(frame["sample_id"].to_list()))[:3]
            raise OptionError(
                f"{ids_from}: {missing:,} of the {len(set(ids)):,} ids are not in {source} (such as "
                f"{', '.join(map(str, example))}); pass ids of samples that carto scored"
            )
    ranked = frame.sort([by, "sample_id"], descending=[True, False], nulls_last=True)
    if top:
        ranked = ranked.head(top)
    ranked = ranked.with_row_index("rank", offset=1).with_columns(pl.col("rank").cast(pl.Int64))
    return Selection(rows=ranked, matched=frame.height, total=scores.height)


def with_texts(rows: pl.DataFrame, dataset: Dataset, *, max_id: int | None) -> pl.DataFrame:
    """`rows` with a `text` column from the dataset (see carto_cli.io.datasets for the matching)."""
    texts = dataset.texts(rows["sample_id"].cast(pl.Int64).to_list(), max_id=max_id)
    return rows.join(texts.with_columns(pl.col("sample_id").cast(rows.schema["sample_id"])),
                     on="sample_id", how="left", maintain_order="left")
