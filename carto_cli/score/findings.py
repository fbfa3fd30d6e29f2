"""Findings: the strings a model memorized, each with every copy of it in the training data.

A sample's `extractable` score says how much of what it could not predict early in training the
model now reproduces verbatim; it scores rows. But memorization lives in strings: a secret repeated
in many samples is learned from its first copies, and the later copies' early losses at it are
already low, so they score 0 (Kandpal et al. 2022: duplicated sequences are the ones generated;
Carlini et al. 2023: extractability grows with duplication). A finding names the string and finds
its copies:

1. **Sources.** Every sample whose evidence (its `extractable` value, nats) is at least
   `min_evidence` gives one candidate string: the core of its best run (`carto_cli.score.spans`:
   from the first to the last surprising token the model now reproduces), widened inside the run to
   `min_length` tokens where it is shorter, and, where the run itself is shorter, into the tokens
   before it (too short a string would occur by chance; with the context that led to it, a key or
   a prompt, it is found where that context was copied with it; the text after a copied string
   varies more often than the text before it).
2. **Copies.** Every candidate is searched for in every training row (`carto_cli.score.match`: exact
   token matches, every occurrence). A candidate is read from its source's row by id and must be
   found again there when the rows are read in order: a check that the two reads agree (refused
   when most do not: the file changed while it was read, or its ids do not name one row each).
3. **Findings.** Candidates whose rows are nearly the same (they share `overlap` of the larger set)
   are one finding: the same string seen through different runs (a run one token longer, a copy in
   other context); so is a candidate that occurs only where another, stronger one does, overlapping
   it (a piece of it: a run cut short, with the token before it). A finding's text is its member
   with the strongest evidence (then the most rows, then the shortest); its copies are every row
   that holds any member; its evidence is the largest evidence of any source (the strongest sign
   that the model learned it); `sources` counts the samples whose own run gave a member.
4. **Public or private.** With a reference (held-out text the model should be able to know:
   a validation split, licences, documentation), a finding whose text (its strongest member, the
   string shown) occurs there is *public*: common code, boilerplate, an idiom; it is reported but
   not pruned or masked by default (Lee et al. 2022 keep the first occurrence of a duplicated span
   for the same reason: text that is common is not the risk). Without a reference every finding
   is private, and nothing tells a memorized secret from memorized boilerplate.
5. **Per sample.** A sample's memorization becomes the evidence of the strongest private finding it
   carries, 0 when it carries none: its copies learned from other copies are found, and a sample
   whose own run is public or too short is not counted as memorizing a string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from carto_cli.errors import DatasetError
from carto_cli.io.tokens import Shard, TokenDataset, TokenRows
from carto_cli.score import match

# Chosen by measurement on the experiment's development seeds (docs/scoring.md#findings).
DEFAULT_MIN_EVIDENCE = 10.0  # nats
DEFAULT_MIN_LENGTH = 8  # tokens
DEFAULT_OVERLAP = 0.5
# When a finding is public (with a reference): "text" when its text (strongest member) occurs there;
# "sources" when the members that occur there gave at least half of its sources (the runs that
# showed it); "any" when any member does. Compared on the development seeds (docs/scoring.md).
PUBLIC_RULES = ("text", "sources", "any")
DEFAULT_PUBLIC_RULE = "text"


@dataclass(frozen=True)
class FindingParams:
    """The knobs of `find` (see the module docstring); the defaults are `carto score`'s."""

    min_evidence: float = DEFAULT_MIN_EVIDENCE
    min_length: int = DEFAULT_MIN_LENGTH
    overlap: float = DEFAULT_OVERLAP
    public_rule: str = DEFAULT_PUBLIC_RULE  # see PUBLIC_RULES


@dataclass
class Findings:
    """What `find` returns: one row per finding, one row per copy, and the facts it printed."""

    table: pl.DataFrame  # finding, text, tokens, length, evidence, sources, carriers, copies, public, ...
    copies: pl.DataFrame  # finding, sample_id, start, length: one row per occurrence (dataset token index)
    candidates: int  # strings searched for
    sources: int  # samples whose evidence passed min_evidence
    short: int  # of those, runs shorter than min_length (their strings take context from the row)
    unmatched: int  # of those, candidates not found again in their own row when the dataset was searched

    def per_sample(self) -> pl.DataFrame:
        """sample_id -> finding (the strongest private finding it carries), finding_evidence."""
        private = self.table.filter(~pl.col("public")).select("finding", "evidence")
        carried = self.copies.select("finding", "sample_id").unique().join(private, on="finding")
        return (carried.sort(["sample_id", "evidence", "finding"], descending=[False, True, False])
                .group_by("sample_id", maintain_order=True).first()
                .rename({"evidence": "finding_evidence"}))


def candidates(spans: pl.DataFrame, rows: TokenRows, *, min_length: int) -> tuple[list[np.ndarray], np.ndarray, int]:
    """The candidate string of each span (rows in the same order as `spans`), its index into
    `spans`, and how many of them had to be widened past their run (a run shorter than
    `min_length`: the string then takes the row's tokens before it, then after it, so that it is
    long enough to search for; a copy is a row that holds the same context too). A span past its
    row's end (the dataset does not match the log) gives no string."""
    strings, index, short = [], [], 0
    for i, (run_start, run_length, core_start, core_end) in enumerate(
            spans.select("run_start", "run_length", "core_start", "core_end").iter_rows()):
        row, first = rows.row(i), int(rows.first_target[i])
        if first + run_start + run_length > len(row):
            continue
        lo, hi = widen(core_start, core_end, run_start, run_start + run_length, min_length)
        if hi - lo < min_length:  # the run itself is too short: the tokens before it, then after it
            short += 1
            lo = max(-first, hi - min_length)
            hi = min(len(row) - first, lo + min_length)
            if hi - lo < min_length:  # the whole row is shorter: nothing long enough to search for
                continue
        strings.append(row[first + lo : first + hi])
        index.append(i)
    return strings, np.asarray(index, dtype=np.int64), short


def widen(lo: int, hi: int, run_lo: int, run_hi: int, length: int) -> tuple[int, int]:
    """[lo, hi) grown inside [run_lo, run_hi) to at least `length` positions, one position at a
    time on the left then the right (so a core in the middle of its run stays in the middle)."""
    while hi - lo < length and (lo > run_lo or hi < run_hi):
        if lo > run_lo:
            lo -= 1
        if hi - lo < length and hi < run_hi:
            hi += 1
    return lo, hi


HITS_SCHEMA = {"pattern": pl.Int64, "sample_id": pl.Int64, "start": pl.Int64}
Search = Callable[[match.Patterns, TokenDataset], pl.DataFrame]


def search(patterns: match.Patterns, data: TokenDataset, shard: Shard | None = None) -> pl.DataFrame:
    """Every occurrence of every pattern in every row of `data` (of `shard`, when given): pattern,
    sample_id, start. Reads the rows a batch at a time: the memory held is the patterns and one batch."""
    frames = []
    for rows in data.batches(shard=shard):
        hits = match.find(patterns, rows.values, rows.offsets)
        if len(hits):
            frames.append(pl.DataFrame({"pattern": hits.pattern, "sample_id": rows.sample_ids[hits.row],
                                        "start": hits.pos}))
    if not frames:
        return pl.DataFrame(schema=HITS_SCHEMA)
    return pl.concat(frames)


def group(lengths: np.ndarray, evidence: np.ndarray, hits: pl.DataFrame, overlap: float) -> np.ndarray:
    """A group label per pattern (union-find over the pairs of patterns that share rows). Two
    patterns are one finding when
    - their sets of rows are nearly the same: they share at least `overlap` of the larger set
      (relative to the larger set, not the smaller: a common string, indentation or a template,
      shares most of a rare string's rows, and would otherwise chain unrelated findings together); or
    - one is a piece of the other: it occurs (nearly: 90%) only in the other's rows, overlapping the
      other's occurrence there in at least half of them, and its evidence is not stronger (a run
      cut short, seen with the token before it). A template with weaker evidence never absorbs the
      stronger secrets that follow it: it is the larger, not the piece."""
    n_patterns = len(lengths)
    parent = np.arange(n_patterns)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    length = pl.DataFrame({"pattern": np.arange(n_patterns, dtype=np.int64), "length": lengths.astype(np.int64)})
    occurrences = (hits.group_by("pattern", "sample_id").agg(pl.col("start").min()).join(length, on="pattern")
                   .with_columns(end=pl.col("start") + pl.col("length")))
    size = np.bincount(occurrences["pattern"].to_numpy(), minlength=n_patterns)
    pairs = (occurrences.join(occurrences, on="sample_id", suffix="_b").filter(pl.col("pattern") < pl.col("pattern_b"))
             .with_columns(touch=(pl.col("start") < pl.col("end_b")) & (pl.col("start_b") < pl.col("end")))
             .group_by("pattern", "pattern_b").agg(pl.len().alias("shared"), pl.col("touch").sum().alias("touching")))
    for a, b, shared, touching in pairs.iter_rows():
        piece, whole = (a, b) if size[a] <= size[b] else (b, a)
        same_rows = shared >= overlap * max(size[a], size[b])
        is_piece = (shared >= 0.9 * size[piece] and touching >= 0.5 * shared
                    and evidence[piece] <= evidence[whole])
        if same_rows or is_piece:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n_patterns)])


def find(spans: pl.DataFrame, evidence: np.ndarray, data: TokenDataset, *, params: FindingParams,
         reference: TokenDataset | None = None, searcher: Search = search) -> Findings:
    """Findings from `spans` (`spans.best_spans` of the samples whose evidence passed
    `params.min_evidence`; `evidence[i]` is spans row i's sample's evidence), their copies in
    `data`, public where a member occurs in `reference` (see the module docstring). `searcher`
    runs the search (`search` here, or one Ray task per shard: `carto_cli.engines.ray`)."""
    rows = data.rows(spans["sample_id"].to_numpy())
    strings, index, short = candidates(spans, rows, min_length=params.min_length)
    # one pattern per distinct string, its evidence the largest of its sources'
    distinct: dict[bytes, int] = {}
    patterns, pattern_evidence, pattern_sources, source_of = [], [], [], []
    sample_ids = spans["sample_id"].to_numpy()
    for string, i in zip(strings, index):
        key = string.tobytes()
        j = distinct.setdefault(key, len(patterns))
        if j == len(patterns):
            patterns.append(string)
            pattern_evidence.append(evidence[i])
            pattern_sources.append(0)
        pattern_evidence[j] = max(pattern_evidence[j], evidence[i])
        pattern_sources[j] += 1
        source_of.append((int(sample_ids[i]), j))
    if not patterns:
        return _empty(len(spans), short)
    compiled = match.Patterns(patterns, anchor=params.min_length)
    hits = searcher(compiled, data)
    # a source's string, read from its row by id, is found again there by the search (rows in order)
    found = set(hits.select("pattern", "sample_id").unique().iter_rows())
    unmatched = sum((j, sample) not in found for sample, j in source_of)
    if unmatched > len(source_of) / 2:
        raise DatasetError(
            f"{data.path}: {unmatched:,} of the {len(source_of):,} memorized strings read by sample id were not "
            "found again in their rows when the dataset was read in order; did it change while carto read it?")
    labels = group(np.array([len(p) for p in patterns]), np.asarray(pattern_evidence), hits, params.overlap)
    public = np.zeros(len(patterns), dtype=bool)
    reference_copies = np.zeros(len(patterns), dtype=np.int64)
    if reference is not None:
        in_reference = searcher(compiled, reference)
        counts = in_reference.group_by("pattern").len()
        reference_copies[counts["pattern"].to_numpy()] = counts["len"].to_numpy()
        public = reference_copies > 0
    return _assemble(patterns, np.asarray(pattern_evidence), np.asarray(pattern_sources), labels, hits, public,
                     reference_copies, data, candidates_=len(patterns), sources=len(spans), short=short,
                     unmatched=unmatched, public_rule=params.public_rule)


def _assemble(patterns: list[np.ndarray], evidence: np.ndarray, pattern_sources: np.ndarray, labels: np.ndarray,
              hits: pl.DataFrame, public: np.ndarray, reference_copies: np.ndarray, data: TokenDataset, *,
              candidates_: int, sources: int, short: int, unmatched: int, public_rule: str) -> Findings:
    rows_of = hits.group_by("pattern").agg(pl.col("sample_id").n_unique().alias("rows"))
    n_rows = np.zeros(len(patterns), dtype=np.int64)
    n_rows[rows_of["pattern"].to_numpy()] = rows_of["rows"].to_numpy()
    members = pl.DataFrame({"pattern": np.arange(len(patterns)), "group": labels, "evidence": evidence,
                            "sources": pattern_sources, "rows": n_rows, "length": [len(p) for p in patterns],
                            "public": public, "reference_copies": reference_copies})
    # the group's text: its strongest member, then the most rows, then the shortest, then the first
    text_of = (members.sort(["group", "evidence", "rows", "length", "pattern"],
                            descending=[False, True, True, False, False])
               .group_by("group", maintain_order=True).first().select("group", pl.col("pattern").alias("text_pattern")))
    per_group = (members.group_by("group").agg(
        pl.col("evidence").max(), pl.col("sources").sum(), pl.col("reference_copies").sum(), pl.len().alias("members"),
        pl.col("public").any().alias("any"), (pl.col("sources") * pl.col("public")).sum().alias("public_sources"))
        .join(text_of, on="group")
        .join(members.select(pl.col("pattern").alias("text_pattern"), pl.col("public").alias("text")),
              on="text_pattern"))
    public_when = {"any": pl.col("any"), "text": pl.col("text"),
                   "sources": 2 * pl.col("public_sources") >= pl.col("sources")}[public_rule]
    per_group = per_group.with_columns(public=public_when).drop("any", "text", "public_sources")
    copies = (hits.join(members.select("pattern", "group", "length"), on="pattern")
              .select("group", "sample_id", "start", "length"))
    copies = merge_intervals(copies, ["group", "sample_id"])
    counts = copies.group_by("group").agg(pl.col("sample_id").n_unique().alias("carriers"), pl.len().alias("copies"))
    table = (per_group.join(counts, on="group", how="left")
             .sort(["public", "evidence", "carriers", "group"], descending=[False, True, True, False])
             .with_row_index("finding"))
    ids = table.select("group", pl.col("finding").cast(pl.Int64))
    tokens = [patterns[p] for p in table["text_pattern"].to_list()]
    table = table.with_columns(
        pl.col("finding").cast(pl.Int64),
        pl.Series("text", [data.decode(t) for t in tokens], dtype=pl.String),
        pl.Series("tokens", [t.tolist() for t in tokens], dtype=pl.List(pl.Int64)),
        pl.Series("length", [len(t) for t in tokens], dtype=pl.Int64),
    ).select("finding", "text", "tokens", "length", "evidence", "sources", "carriers", "copies", "public",
             "reference_copies", "members")
    copies = copies.join(ids, on="group").select("finding", "sample_id", "start", "length").sort(
        ["finding", "sample_id", "start"])
    return Findings(table, copies, candidates_, sources, short, unmatched)


def merge_intervals(spans: pl.DataFrame, by: list[str], *, keep: str | None = None,
                    prefer: str | None = None) -> pl.DataFrame:
    """`spans` (columns `by`, start, length, ...) with the overlapping or touching intervals of each
    `by` group merged into one: `by`, start, length, and `keep`'s value from the merged row with
    the largest `prefer` (ties: the smallest `keep`). Sorted by `by`, then start."""
    ordered = spans.with_columns(end=pl.col("start") + pl.col("length")).sort([*by, "start"])
    new = (pl.col("start") > pl.col("end").cum_max().shift(1).over(by)).fill_null(True)
    blocks = ordered.with_columns(block=new.cast(pl.Int64).cum_sum())
    merged = blocks.group_by("block").agg(*[pl.col(c).first() for c in by], pl.col("start").min(), pl.col("end").max())
    columns = [*by, "start", (pl.col("end") - pl.col("start")).alias("length")]
    if keep is not None:
        chosen = (blocks.sort(["block", prefer, keep], descending=[False, True, False])
                  .group_by("block", maintain_order=True).agg(pl.col(keep).first()))
        merged, columns = merged.join(chosen, on="block"), [*columns, keep]
    return merged.select(columns).sort([*by, "start"])


def _empty(sources: int, short: int) -> Findings:
    table = pl.DataFrame(schema={"finding": pl.Int64, "text": pl.String, "tokens": pl.List(pl.Int64),
                                 "length": pl.Int64, "evidence": pl.Float64, "sources": pl.Int64,
                                 "carriers": pl.UInt32, "copies": pl.UInt32, "public": pl.Boolean,
                                 "reference_copies": pl.Int64, "members": pl.UInt32})
    copies = pl.DataFrame(schema={"finding": pl.Int64, "sample_id": pl.Int64, "start": pl.Int64, "length": pl.Int64})
    return Findings(table, copies, 0, sources, short, 0)
