"""What the report shows, computed (`carto report`): the numbers, the top samples, the findings;
`carto_cli.report.html` only formats them into the page.

    report = build_report(scores, prov, scores_path=path, scores_sha256=artifacts.file_digest(path),
                          frac=0.1, top=10, curves=curves, findings=findings, findings_path=found)

The top K samples of each quadrant are ranked by the score that sets the quadrant apart
(`RANKING`): memorization has one value, 0, across most of the low-memorization quadrants on real
scores, so ranking stable-easy and ambiguous-hard by it listed ids 0, 2, 3, 4; they are ranked by
confidence (the most confidently learned) and by difficulty (the hardest), as `carto inspect
--quadrant Q --by COLUMN` ranks them. A quadrant whose samples all have one value of its column
is said to be in sample_id order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from carto_cli.errors import OptionError
from carto_cli.export import manifests
from carto_cli.io.datasets import Dataset
from carto_cli.log import schema
from carto_cli.log.durable import write_atomic
from carto_cli.report import inspect as picking
from carto_cli.report import marks
from carto_cli.report.figures import Figure, figures
from carto_cli.score import quadrants as q

DEFAULT_FRAC = 0.1
DEFAULT_TOP = 10
FINDINGS_SHOWN = 50  # findings listed at most (`carto findings --top 0` lists all)
CONTEXT_TRIES = 5  # carriers of a finding looked at for a copy to show in context
CURVE_COLUMNS = (schema.EPOCH, schema.LOSS, schema.CORRECT)
# Each quadrant's samples ranked by what sets it apart, highest first (memorization where the
# scores file lacks the column): the most memorized, the hardest, the most confidently learned.
RANKING = {q.STABLE_EASY: "confidence", q.AMBIGUOUS_HARD: "difficulty", q.HOTSPOT: "memorization",
           q.NOISY_OUTLIER: "memorization", q.UNPLACED: "memorization"}


@dataclass
class Report:
    """Everything the page shows, computed; `render` only formats it."""

    scores_name: str
    scores_sha256: str
    provenance: dict
    samples: int
    quadrants: list[dict]  # quadrants.summary rows
    thresholds: dict
    frac: float
    pruned: int
    pruned_without_evidence: int
    exports: list[dict]  # per quadrant: samples, pruned, multiplier, weight
    top: int
    top_samples: dict[str, pl.DataFrame]  # quadrant -> ranked rows (with `text` when texts were given)
    matched: dict[str, int]  # quadrant -> samples in it
    text_source: str | None
    curves: pl.DataFrame | None  # epoch, presentations, samples, mean_loss, share_correct
    log_digest: str | None
    figures: list[Figure] = field(default_factory=list)
    ranked_by: dict[str, str] = field(default_factory=dict)  # quadrant -> the column its samples are ranked by
    tied: set[str] = field(default_factory=set)  # quadrants whose samples all have one value of it
    command: str = "carto report"  # the command as run
    findings: pl.DataFrame | None = None  # the findings listed (at most FINDINGS_SHOWN)
    findings_total: dict = field(default_factory=dict)  # findings, private, public, carriers, pruned, source
    contexts: dict[int, tuple[int, str, list]] = field(default_factory=dict)  # finding -> (sample_id, text, spans)


# ------------------------------------------------------------------------------ the numbers


def check_options(*, frac: float, top: int) -> None:
    """The options' ranges, before anything is read."""
    manifests.prune_count(0, frac)  # --frac must be in [0, 1), as carto prune has it
    if top < 0:
        raise OptionError(f"--top must be >= 0 (0 leaves the samples out); got {top}")


def learning_curves(rows: pl.LazyFrame) -> pl.DataFrame:
    """Per epoch: presentations, distinct samples, mean loss and the share of presentations counted
    correct, from a log's rows (`epoch`, `loss`, `correct`; `sample_id` for the samples)."""
    return (
        rows.group_by(schema.EPOCH)
        .agg(
            pl.len().alias("presentations"),
            pl.col(schema.SAMPLE_ID).n_unique().alias("samples"),
            pl.col(schema.LOSS).mean().alias("mean_loss"),
            pl.col(schema.CORRECT).cast(pl.Float64).mean().alias("share_correct"),
        )
        .sort(schema.EPOCH)
        .collect()
    )


def export_effects(scores: pl.DataFrame, *, frac: float, forgets: bool) -> tuple[list[dict], int, int]:
    """Per quadrant, what a prune at `frac` removes (carto prune's default ranking, by memorization)
    and the weight carto weights gives (its default multipliers; None where every sample would get
    weight 0, which carto weights refuses); then the pruned total and how many of those the
    tie-break chose, not the score (`forgets`: memorization counts forget events)."""
    manifest = manifests.prune_manifest(scores, frac=frac)
    quadrant = pl.col("quadrant").fill_null(q.UNPLACED)
    pruned = dict(manifest.filter(~pl.col("keep")).group_by(quadrant).len().iter_rows())
    try:
        weights = dict(manifests.sample_weights(scores).group_by(quadrant).agg(pl.col("weight").mean()).iter_rows())
    except OptionError:  # no sample would keep any weight
        weights = {}
    counts = dict(scores.group_by(quadrant).len().iter_rows())
    rows = [{"quadrant": name, "samples": counts[name], "pruned": int(pruned.get(name, 0)),
             "multiplier": manifests.DEFAULT_MULTIPLIERS[name], "weight": weights.get(name)}
            for name in (*q.QUADRANTS, q.UNPLACED) if name in counts]
    unranked = manifests.pruned_without_evidence(scores, manifest, forgets=forgets)
    return rows, int((~manifest["keep"]).sum()), unranked


def ranking(scores: pl.DataFrame) -> dict[str, str]:
    """The column each quadrant's samples are ranked by (RANKING, where the scores have it)."""
    return {name: column if column in scores.columns else "memorization" for name, column in RANKING.items()}


def top_samples(scores: pl.DataFrame, *, top: int, dataset: Dataset | None = None,
                findings: pl.DataFrame | None = None) -> tuple[dict[str, pl.DataFrame], dict[str, int], set[str]]:
    """The `top` samples of each quadrant (and of `unplaced`, when any), ranked as `carto inspect
    --quadrant Q --by RANKING[Q]` ranks them, with a `text` column from `dataset` when given (and
    `marked`, each sample's strongest private finding in it, with `findings`); each quadrant's
    count; and the quadrants whose samples all have the same value of their ranking column (their
    order is by sample_id). `top` 0: no samples."""
    names = [row["quadrant"] for row in q.summary(scores)]
    by = ranking(scores)
    picked = {name: picking.select(scores, quadrant=name, by=by[name], top=max(top, 1)) for name in names}
    matched = {name: selection.matched for name, selection in picked.items()}
    quadrant = pl.col("quadrant").fill_null(q.UNPLACED)
    spread = scores.group_by(quadrant).agg(*(pl.col(c).n_unique().alias(c) for c in set(by.values())))
    tied = {row["quadrant"] for row in spread.iter_rows(named=True) if row[by[row["quadrant"]]] == 1
            and matched.get(row["quadrant"], 0) > 1}
    if top == 0:
        return {}, matched, tied
    rows = {name: selection.rows for name, selection in picked.items()}
    if dataset is not None:  # one read of the dataset for every quadrant's samples
        both = picking.with_texts(pl.concat(list(rows.values()), how="diagonal_relaxed"), dataset,
                                  max_id=scores["sample_id"].max())
        both = marks.with_marks(both, findings)
        rows = {name: both.filter(quadrant == name) for name in rows}
    return rows, matched, tied


def findings_summary(findings: pl.DataFrame, scores: pl.DataFrame, *, source: Path,
                     dataset: Dataset | None) -> tuple[pl.DataFrame, dict, dict]:
    """The findings listed (private first, strongest first; at most FINDINGS_SHOWN), the totals
    (findings, private, public, samples carrying a private one, what `carto prune` without --frac
    removes), and, with a dataset, one copy of each listed finding in context: its first carrier's
    text and where the finding is in it."""
    listed = findings.sort(["public", "evidence", "finding"], descending=[False, True, False]).head(FINDINGS_SHOWN)
    private = findings.filter(~pl.col("public"))
    carriers = (private.select(pl.col("copies_at").explode().struct.field("sample_id")).to_series().n_unique()
                if private.height else 0)
    pruned = int((~manifests.findings_manifest(scores)["keep"]).sum()) if manifests.has_findings(scores) else None
    totals = {"findings": findings.height, "private": private.height, "public": findings.height - private.height,
              "carriers": carriers, "pruned": pruned, "source": str(source)}
    return listed, totals, _contexts(listed, dataset, max_id=scores["sample_id"].max()) if dataset else {}


def _contexts(listed: pl.DataFrame, dataset: Dataset, *, max_id: int) -> dict[int, tuple[int, str, list]]:
    """One copy of each finding in its sample's text: the first of its first CONTEXT_TRIES carriers
    (by id) whose text holds it (or part of it), else the first carrier, with nothing found."""
    carriers = {row["finding"]: sorted({c["sample_id"] for c in row["copies_at"]})[:CONTEXT_TRIES]
                for row in listed.select("finding", "copies_at").iter_rows(named=True)}
    ids = sorted({i for some in carriers.values() for i in some})
    texts = dict(dataset.texts(ids, max_id=max_id).iter_rows()) if ids else {}
    contexts = {}
    for finding, found in listed.select("finding", "text").iter_rows():
        tries = [(i, texts.get(i)) for i in carriers[finding] if texts.get(i) is not None]
        located = [(i, text, marks.locate(text, marks.needle(found))) for i, text in tries]
        if located:
            contexts[finding] = next((c for c in located if c[2]), located[0])
    return contexts


# ------------------------------------------------------------------------------ the report


def build_report(scores: pl.DataFrame, prov: dict, *, scores_path: Path, scores_sha256: str,
                 frac: float = DEFAULT_FRAC, top: int = DEFAULT_TOP, dataset: Dataset | None = None,
                 curves: pl.DataFrame | None = None, log_digest: str | None = None,
                 findings: pl.DataFrame | None = None, findings_path: Path | None = None,
                 command: str = "carto report") -> Report:
    """Compute everything the page shows from a scores file (`scores`, its provenance `prov`), and
    its findings when given (`findings`, read from `findings_path`); `command` is the command as run."""
    check_options(frac=frac, top=top)
    forgets = str(prov.get("memorization", "forget")).startswith("forget")
    exports, pruned, unranked = export_effects(scores, frac=frac, forgets=forgets)
    samples, matched, tied = top_samples(scores, top=top, dataset=dataset, findings=findings)
    report = Report(
        scores_name=str(scores_path), scores_sha256=scores_sha256, provenance=prov, samples=scores.height,
        quadrants=q.summary(scores), thresholds=prov.get("thresholds") or {}, frac=frac, pruned=pruned,
        pruned_without_evidence=unranked, exports=exports, top=top, top_samples=samples, matched=matched,
        text_source=None if dataset is None else f"column '{dataset.text_column}' of {dataset.path}, matched by "
        + ("row order" if dataset.by_row_order else "sample_id"),
        curves=curves, log_digest=log_digest, figures=figures(scores, prov, curves), ranked_by=ranking(scores),
        tied=tied, command=command,
    )
    if findings is not None:
        report.findings, report.findings_total, report.contexts = findings_summary(
            findings, scores, source=findings_path or Path("findings.parquet"), dataset=dataset)
    return report


def write_report(page: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
