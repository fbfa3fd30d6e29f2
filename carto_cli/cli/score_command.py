"""`carto score`: the command-line face of `carto_cli.engines.pipeline` (parse, call, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from carto_cli.cli import opening
from carto_cli.cli.common import JsonOption, LogArguments, fmt
from carto_cli.cli.common import emit_json as _emit_json
from carto_cli.cli.console import err, progress
from carto_cli.cli.lazy import lazy
from carto_cli.errors import OptionError

buckets, pipeline, runs = lazy("carto_cli.engines.buckets"), lazy("carto_cli.engines.pipeline"), lazy(
    "carto_cli.engines.runs")
findings_pass = lazy("carto_cli.engines.findings")
artifacts, logs, tokens = lazy("carto_cli.io.artifacts"), lazy("carto_cli.io.logs"), lazy("carto_cli.io.tokens")
findings, rules = lazy("carto_cli.score.findings"), lazy("carto_cli.score.rules")
# findings.DEFAULT_MIN_EVIDENCE and DEFAULT_MIN_LENGTH, written out so that the options' help needs no
# import (tests/test_findings.py checks they agree)
DEFAULT_MIN_EVIDENCE = 10.0
DEFAULT_MIN_SPAN = 8


def score_command(
    paths: LogArguments,
    out: Annotated[Path, typer.Option("--out", "-o", help="Scores file to write.")] = Path("scores.parquet"),
    early_epochs: Annotated[
        int, typer.Option("--early-epochs", help="Difficulty is the mean loss over epochs < K.")
    ] = 2,
    correct_from: Annotated[
        str, typer.Option("--correct-from", help="Correctness: log | loss | tail | acc.")
    ] = "log",
    threshold: Annotated[
        str | None,
        typer.Option(help="Threshold for loss/tail (<) or acc (>=): a number or a percentile like p50."),
    ] = None,
    never_learned: Annotated[
        str, typer.Option("--never-learned", help="Memorization of never-learned samples: zero | max | exclude.")
    ] = "zero",
    d_quantile: Annotated[float, typer.Option("--d-quantile", help="Difficulty threshold quantile.")] = 0.5,
    m_quantile: Annotated[float, typer.Option("--m-quantile", help="Memorization threshold quantile.")] = 0.5,
    d_threshold: Annotated[
        float | None, typer.Option("--d-threshold", help="Absolute difficulty threshold (overrides the quantile).")
    ] = None,
    m_threshold: Annotated[
        float | None, typer.Option("--m-threshold", help="Absolute memorization threshold (overrides the quantile).")
    ] = None,
    nonfinite: Annotated[
        str, typer.Option("--nonfinite", help="Rows with NaN/inf loss: drop (and report) | error.")
    ] = "drop",
    method: Annotated[str, typer.Option("--method", help="Forget-event counting: auto | bitmask | general.")] = "auto",
    memorization: Annotated[
        str,
        typer.Option("--memorization", help="Memorization signal: auto (extractable when the log has the "
                     "shim's sketch, else forgets) | extractable | forgets (the paper) | token-drop | tail-var."),
    ] = "auto",
    drop_k: Annotated[
        int, typer.Option("--drop-k", help="token-drop: average of the K largest per-token loss drops.")
    ] = 4,
    late_from: Annotated[
        int | None, typer.Option("--late-from", help="tail-var: first late epoch (default: second half).")
    ] = None,
    skip_corrupt: Annotated[
        bool, typer.Option("--skip-corrupt", help="Leave out unreadable or damaged parts (with a warning) "
                           "instead of failing.")
    ] = False,
    update: Annotated[
        bool, typer.Option("--update", help="Fold only parts new since the last --update run into its saved state.")
    ] = False,
    engine: Annotated[str, typer.Option("--engine", help="Where to run: local | ray.")] = "local",
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (default: start a local instance).")
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run", help="Score one run of a log that holds several (default: all of "
                                 "them, counted per run and summed).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="The training dataset (input_ids, or texts with --tokenizer): find "
                                  "every copy of what the model memorized (writes --findings).")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="Tokens of --data's texts: a tokenizer.json file, a local "
                                 "tokenizer directory, or `bytes` (one token per UTF-8 byte).")
    ] = None,
    text_column: Annotated[
        str | None, typer.Option("--text-column", help="--data's text column (default: found by name).")
    ] = None,
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Held-out text (a validation split): a finding that occurs "
                                  "there is public, reported but not pruned.")
    ] = None,
    findings_out: Annotated[
        Path, typer.Option("--findings", help="Findings file to write with --data.")
    ] = Path("findings.parquet"),
    label_shift: Annotated[
        int | None, typer.Option("--label-shift", min=0, help="--data: the row token that logged position 0 of an "
                                 "unmasked row is (default: declared by the log, else measured).")
    ] = None,
    min_evidence: Annotated[
        float, typer.Option("--min-evidence", min=0.0, help="--data: nats of extractable a sample needs for its "
                            "span to become a finding.")
    ] = DEFAULT_MIN_EVIDENCE,
    min_span: Annotated[
        int, typer.Option("--min-span", min=1, help="--data: the shortest memorized string searched for (tokens).")
    ] = DEFAULT_MIN_SPAN,
    as_json: JsonOption = False,
) -> None:
    """Score every sample: difficulty, forget events, memorization, quadrant; with --data, the
    memorized strings and every copy of them."""
    params = rules.ScoreParams(
        early_epochs=early_epochs,
        never_learned=never_learned,
        correct_from=correct_from,
        threshold=threshold,
        nonfinite=nonfinite,
        method=method,
        memorization=memorization,
        drop_k=drop_k,
        late_from=late_from,
    )
    placement = pipeline.Placement(d_quantile, m_quantile, d_threshold, m_threshold)
    inputs = opening.local_paths(paths) + [p for p in (data, reference) if p is not None]
    artifacts.ensure_not_input(out, inputs)
    request = None
    if data is not None:
        artifacts.ensure_not_input(findings_out, inputs, option="--findings")
        if findings_out.resolve() == out.resolve():
            raise OptionError(f"--findings {findings_out} is also --out; choose another path")
        request = findings_pass.FindingsRequest(
            data=tokens.open_tokens(data, tokenizer=tokenizer, text_column=text_column), out=findings_out,
            params=findings.FindingParams(min_evidence=min_evidence, min_length=min_span),
            reference=None if reference is None else tokens.open_tokens(reference, tokenizer=tokenizer,
                                                                         text_column=text_column),
            label_shift=label_shift, m_threshold=m_threshold)
    elif reference is not None:
        raise OptionError("--reference needs --data: public or private is said of the findings --data makes")

    def score(logset: logs.LogSet) -> tuple[logs.LogSet, pipeline.ScoreRun]:
        if run_id is not None:
            logset = runs.select_run(logset, run_id)
        groups = buckets.bucket_groups(logset)
        with progress(f"scoring {logset.num_rows:,} rows", total=len(groups)) as advance:
            return logset, pipeline.run_score(logset, params, out=out, inputs=[str(p) for p in paths],
                                              placement=placement, engine=engine, address=address, update=update,
                                              on_bucket=advance, findings=request)

    _, (logset, run) = opening.with_logs(paths, skip_corrupt, score)
    for note in run.notes:
        err.print(f"[yellow]Note:[/] {escape(note)}" if note.startswith(("folded", "no saved", "left out"))
                  else f"[yellow]Warning:[/] {escape(note)}")
    if as_json:
        _emit_json({"out": str(out), "samples": run.samples, "rows": run.rows, "parts": run.parts,
                    "quadrants": run.table, "correctness_rule": run.rule.describe(),
                    "memorization": run.memorization,
                    "thresholds": run.thresholds.as_dict(), "method_used": run.method, "dense_build": run.dense_build,
                    "rows_dropped_nonfinite": run.rows_dropped_nonfinite, "engine": run.engine,
                    "buckets": run.buckets, "replayed_rows": logset.replayed_rows,
                    "runs": runs.run_ids(logset), "findings": _findings_json(run.findings)})
        return
    _print_score_report(run, never_learned, early_epochs)
    if run.findings is not None:
        _print_findings_summary(run.findings)
    elif run.memorization.startswith("largest early loss"):  # extractable, per sample
        err.print("[yellow]Note:[/] memorization here is each sample's own; copies of a string learned from "
                  "other copies score 0: pass --data TRAIN (and --reference HELDOUT) to find the memorized "
                  "strings and every copy of them")
    err.print(f"wrote {escape(str(out))}" + ("" if run.findings is None else f" and {escape(str(findings_out))}"))


def _print_score_report(run: pipeline.ScoreRun, never_learned: str, early_epochs: int) -> None:
    where = f" ({run.buckets} buckets, {run.engine} engine)" if run.buckets or run.engine != "local" else ""
    err.print(
        f"carto score: {run.samples:,} samples from {run.rows:,} presentations in {run.parts:,} part(s)"
        f"{where}; {run.ever_learned:,} ever learned"
    )
    err.print(
        f"correct = {escape(run.rule.describe())}; difficulty = mean loss over epochs < {early_epochs}; "
        f"memorization = {escape(run.memorization)}"
        + (f" (never-learned: {never_learned})" if run.memorization.startswith("forget") else "")
    )
    t = run.thresholds
    d_q = f" (q{t.difficulty_quantile:.2f})" if t.difficulty_quantile is not None else ""
    m_q = f" (q{t.memorization_quantile:.2f})" if t.memorization_quantile is not None else ""
    high_m = f"> {fmt(t.memorization, 4)}{m_q}" if run.findings is None or t.memorization else \
        "carries a private finding"
    err.print(f"high difficulty: > {fmt(t.difficulty, 4)}{d_q}; high memorization: {high_m}")
    grid = Table(header_style="bold", caption="difficulty, memorization, forgets: means per quadrant")
    for name, justify in (("quadrant", "left"), ("samples", "right"), ("share", "right"),
                          ("difficulty", "right"), ("memorization", "right"),
                          ("forgets", "right"), ("action", "left")):
        grid.add_column(name, justify=justify)
    for row in run.table:
        grid.add_row(row["quadrant"], f"{row['samples']:,}", f"{100 * row['share']:.1f}%",
                     fmt(row["mean_difficulty"]), fmt(row["mean_memorization"]),
                     fmt(row["mean_forget_events"], 2), row["action"])
    err.print(grid)




def _findings_json(found: findings_pass.FindingsRun | None) -> dict | None:
    if found is None:
        return None
    table = found.findings.table
    return {"out": str(found.path), "findings": table.height, "private": int((~table["public"]).sum()),
            "public": int(table["public"].sum()), "carriers_of_private": found.carriers,
            "label_shift": found.label_shift, "label_shift_source": found.label_shift_source,
            "sources": found.findings.sources, "short_runs": found.findings.short}


def _print_findings_summary(found: findings_pass.FindingsRun) -> None:
    table = found.findings.table
    private = int((~table["public"]).sum())
    err.print(f"findings: {table.height:,} memorized string(s) from {found.findings.sources:,} sample(s) with "
              f"evidence: {private:,} private, {table.height - private:,} public; {found.carriers:,} sample(s) "
              "carry a private one")
    if found.label_shift_source != "declared by the log":
        err.print(f"[yellow]Note:[/] logged positions mapped to row tokens with a label shift of "
                  f"{found.label_shift} ({escape(found.label_shift_source)})")
    err.print("`carto findings` lists them; `carto prune` removes every copy of the private ones; "
              "`carto mask` drops only their tokens from the loss")
