"""The memorized strings in the samples' texts: where a finding occurs in a text, and which part of
a long text to show (`carto inspect` marks them in the terminal, `carto report` in the page).

    found = findings_for(scores_path, prov, given=None)       # the findings file of a scores file
    spans = locate(text, needle(findings_text))               # [(start, end), ...] in characters

A finding holds tokens; its `text` is their decoding (`carto_cli.io.tokens`), and the texts shown
are the dataset's own, so a finding is found in a sample's text by its decoded string: every
occurrence, overlapping ones merged. A finding groups several strings (its members: runs of one
memorized string widened differently), and its text is the strongest; a copy may hold another
member, shifted by a character or two. So where the text does not occur, the longest part of it
(at least half of it, and `MIN_PART` characters) that does is marked. Edge cases: a finding cut
inside a multi-byte character decodes with U+FFFD at its ends, which are left out of the string
searched for; a finding decoded without a tokenizer (token ids, `[12 7 ...]`), or whose decoding
differs from the dataset's text (a tokenizer that normalises), is not found, and nothing is
marked: the sample is still listed, as a carrier, by its id.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from carto_cli.errors import OptionError
from carto_cli.io import artifacts

REPLACEMENT = "\ufffd"
FINDINGS_NAME = "findings.parquet"  # carto score --data's default findings file, next to the scores
MIN_PART = 4  # characters: a shorter part of a finding's text is not marked (it would match anywhere)
MAX_NEEDLE = 200  # characters of a finding's text searched for parts (the search is quadratic in it)


def findings_for(scores_path: Path, prov: dict, given: Path | None) -> tuple[pl.DataFrame, Path] | None:
    """The findings of a scores file and where they were read: `given` (`--findings`), else the
    path the scores' provenance records (`carto score --findings`), else findings.parquet next to
    the scores; None when none of these exists (and none was given)."""
    if given is not None:
        if not given.exists():
            raise OptionError(f"--findings {given}: no such file; pass the findings file `carto score --data` wrote")
        frame, _ = artifacts.read(given, "findings")
        return frame, given
    recorded = (prov.get("findings") or {}).get("path")
    for path in ([Path(recorded)] if recorded else []) + [scores_path.parent / FINDINGS_NAME]:
        if path.is_file():
            frame, _ = artifacts.read(path, "findings")
            return frame, path
    return None


def carriers(findings: pl.DataFrame, finding: int, source: Path) -> list[int]:
    """The samples that hold finding `finding` (every copy, from `copies_at`), in id order."""
    rows = findings.filter(pl.col("finding") == finding)
    if not rows.height:
        known = findings["finding"]
        span = f" ({known.min()}..{known.max()})" if len(known) else " (it has none)"
        raise OptionError(f"--finding {finding}: no such finding in {source}{span}; `carto findings` lists them")
    ids = rows.select(pl.col("copies_at").explode().struct.field("sample_id")).to_series().drop_nulls()
    return sorted(set(ids.to_list()))


def with_marks(rows: pl.DataFrame, findings: pl.DataFrame | None, finding: int | None = None) -> pl.DataFrame:
    """`rows` (samples with a `text` column) with `marked`: where the finding each row is shown for
    occurs in its text, [start, end) character pairs: `finding`'s, else the sample's own `finding`
    (its strongest private one); `rows` as they are without findings."""
    if findings is None or (finding is None and "finding" not in rows.columns):
        return rows
    texts = dict(findings.select("finding", "text").iter_rows())
    wanted = [finding] * rows.height if finding is not None else rows["finding"].to_list()
    spans = [[list(s) for s in locate(text, needle(texts.get(f)))] if f is not None else []
             for text, f in zip(rows["text"].to_list(), wanted)]
    return rows.with_columns(pl.Series("marked", spans, dtype=pl.List(pl.List(pl.Int64))))


def needle(text: str | None) -> str:
    """The string searched for: the finding's text without U+FFFD at its ends (a character its
    tokens cut)."""
    return (text or "").strip(REPLACEMENT)


def locate(text: str | None, found: str) -> list[tuple[int, int]]:
    """Every [start, end) where `found` occurs in `text` (overlapping occurrences merged), in order;
    where it does not occur, every occurrence of its longest part that does (see the module
    docstring); [] where neither does."""
    if not text or not found:
        return []
    spans = _occurrences(text, found)
    if spans:
        return spans
    part = _longest_part(text, found[:MAX_NEEDLE])
    return _occurrences(text, part) if part else []


def _longest_part(text: str, found: str) -> str | None:
    """The longest substring of `found`, at least half of it and MIN_PART characters, in `text`
    (the first such, scanning `found` left to right); None where none is."""
    for length in range(len(found) - 1, max(MIN_PART, (len(found) + 1) // 2) - 1, -1):
        for at in range(len(found) - length + 1):
            if found[at:at + length] in text:
                return found[at:at + length]
    return None


def _occurrences(text: str, found: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    at = text.find(found)
    while at >= 0:
        end = at + len(found)
        if spans and at <= spans[-1][1]:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((at, end))
        at = text.find(found, at + 1)
    return spans


def window(text: str, spans: list[tuple[int, int]], width: int, before: int = 40) -> tuple[int, int]:
    """The [start, end) of `text` to show in at most `width` characters: from the start, or, when
    the first span would not fit, from `before` characters ahead of it."""
    if len(text) <= width or not spans or spans[0][1] <= width:
        return 0, min(len(text), width)
    start = max(0, spans[0][0] - before)
    return start, min(len(text), start + width)


def pieces(text: str, spans: list[tuple[int, int]], start: int, end: int) -> list[tuple[str, bool]]:
    """text[start:end] cut into (piece, marked) runs by `spans`."""
    out, at = [], start
    for lo, hi in spans:
        lo, hi = max(lo, start), min(hi, end)
        if hi <= lo:
            continue
        if lo > at:
            out.append((text[at:lo], False))
        out.append((text[lo:hi], True))
        at = hi
    if at < end:
        out.append((text[at:end], False))
    return out
