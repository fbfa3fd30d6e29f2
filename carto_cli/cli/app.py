"""The `carto` command line: a thin layer that parses options, calls the core, and prints.

Output for people goes to stderr through Rich; data (`--json`) goes to stdout; artefacts to files.
Every CartoError becomes one `Error: ...` line on stderr and exit status 1.
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from carto_cli.cli import experiment as cli_experiment
from carto_cli.cli import findings_command, map_command, opening, report_command, score_command
from carto_cli.cli import inspect_command as cli_inspect
from carto_cli.cli.common import JsonOption, LogArguments, ScoresOption
from carto_cli.cli.common import emit_json as _emit_json
from carto_cli.cli.console import err, progress
from carto_cli.cli.lazy import lazy
from carto_cli.errors import CartoError, ChoiceError, OptionError, first_line
from carto_cli.version import __version__

# Imported on first use (`carto_cli.cli.lazy`): `carto --help` needs none of them.
pl = lazy("polars")
buckets, pipeline, runs = lazy("carto_cli.engines.buckets"), lazy("carto_cli.engines.pipeline"), lazy(
    "carto_cli.engines.runs")
export = lazy("carto_cli.export.manifests")
artifacts, logs, storage = lazy("carto_cli.io.artifacts"), lazy("carto_cli.io.logs"), lazy("carto_cli.io.storage")
schema = lazy("carto_cli.log.schema")
quadrants, rules = lazy("carto_cli.score.quadrants"), lazy("carto_cli.score.rules")
LOG_DIR_ENV = "CARTO_LOG_DIR"  # carto_cli.log.shim.LOG_DIR_ENV (tests/test_cli.py checks they agree)
PRUNE_BY = ("memorization", "quadrant", "difficulty", "random")  # export.manifests.PRUNE_BY (tested equal)

app = typer.Typer(
    name="carto",
    help="Generative data cartography: find the training samples a model memorizes, from its logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # Plain help: Typer's Rich panels (0.29) print "<bool>" after every flag (--version <bool>)
    rich_markup_mode=None,
)
logs_app = typer.Typer(help="Inspect training logs.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(logs_app, name="logs")




def _cli_errors(fn: Callable) -> Callable:
    """Turn domain errors (and engine errors about the data) into one line and exit status 1; a
    value that is not one of its option's choices (ChoiceError) into a usage error, as click's own
    (`main` prints it as one line, exit status 2): one rule for every command."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ChoiceError as exc:
            raise _UsageError(str(exc), ctx=_click_globals().get_current_context(silent=True)) from None
        except CartoError as exc:
            err.print(f"[bold red]Error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1) from None
        except pl.exceptions.PolarsError as exc:
            first = first_line(exc)
            err.print(
                f"[bold red]Error:[/] reading the logs failed: {escape(first)}; a part may be damaged: "
                "`carto logs summary` names unreadable parts, --skip-corrupt leaves them out",
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"carto {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """carto: per-sample difficulty and memorization from training logs; prune and weight exports."""


# --------------------------------------------------------------------------------------- log


@app.command(
    "log",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@_cli_errors
def log_command(
    command: Annotated[list[str], typer.Argument(help="The training command, after `--`.", show_default=False)],
    log_dir: Annotated[Path, typer.Option("--log-dir", help="Where the shim writes parts.")] = Path("logs"),
) -> None:
    """Run a training command with CARTO_LOG_DIR set, then summarise what it logged.

    Example: carto log -- python train.py --epochs 4
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    before = set(log_dir.rglob(f"*{schema.PART_SUFFIX}"))
    env = {**os.environ, LOG_DIR_ENV: str(log_dir)}
    err.print(f"carto log: {LOG_DIR_ENV}={escape(str(log_dir))}")
    try:
        rc = subprocess.call(command, env=env)
    except FileNotFoundError:
        raise OptionError(f"command not found: {command[0]}; give the training command after `--`") from None
    except KeyboardInterrupt:
        rc = 130
    if rc < 0:  # killed by a signal: report it the way a shell does
        rc = 128 - rc
    new = sorted(set(log_dir.rglob(f"*{schema.PART_SUFFIX}")) - before)
    new = [p for p in new if not schema.is_temporary_name(p.name)]
    if not new:
        err.print(
            f"[yellow]carto log: no parts were written to {escape(str(log_dir))}; does the training "
            "script create a CartoLogger() and close it?[/]"
        )
    else:
        summary = logs.summarize(logs.open_logs(new))
        err.print(_summary_line(f"carto log: wrote to {log_dir}", summary))
    if rc:
        err.print(f"carto log: the training command exited with status {rc}")
    raise typer.Exit(rc)


def _summary_line(prefix: str, s: dict) -> str:
    epochs = f"epochs {s['epoch_range'][0]}..{s['epoch_range'][1]}" if s["epoch_range"] else "no epochs"
    return (
        f"{escape(prefix)}: {s['parts']:,} part(s), {s['rows']:,} rows, {s['samples']:,} samples, "
        f"{s['epochs']} epoch(s) ({epochs}), {s['ranks']} rank(s)"
        + (f", {s['runs']} runs" if s["runs"] > 1 else "")
        + (f"; {s['replayed_rows']:,} rows left out as replays of a restart (the latest attempt counts)"
           if s["replayed_rows"] else "")
    )


@logs_app.command("summary")
@_cli_errors
def logs_summary(
    paths: LogArguments,
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help="Leave out unreadable or damaged parts.")
                            ] = False,
    as_json: JsonOption = False,
) -> None:
    """Parts, rows, samples, epochs and ranks of a log."""
    _, summary = opening.with_logs(paths, skip_corrupt, logs.summarize)
    if as_json:
        _emit_json(summary)
    else:
        err.print(_summary_line(", ".join(map(str, paths)), summary))


@logs_app.command("bucketize")
@_cli_errors
def logs_bucketize(
    paths: LogArguments,
    out: Annotated[Path, typer.Option("--out", "-o", help="New directory for the bucketed log.")],
    n_buckets: Annotated[int, typer.Option("--buckets", help="Number of buckets (sample_id mod N).")] = 64,
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help="Leave out unreadable or damaged parts.")
                            ] = False,
    as_json: JsonOption = False,
) -> None:
    """Rewrite a log as bucket=<sample_id mod N>/ parts, so scoring can go one bucket at a time."""
    artifacts.ensure_not_input(out, opening.local_paths(paths))

    def bucketize(logset: logs.LogSet) -> dict[int, int]:
        with progress(f"bucketizing {logset.num_rows:,} rows"):
            return buckets.bucketize(logset, out, n_buckets)

    _, rows = opening.with_logs(paths, skip_corrupt, bucketize)
    if as_json:
        _emit_json({"out": str(out), "buckets": n_buckets, "rows": sum(rows.values()),
                    "largest_bucket_rows": max(rows.values(), default=0)})
        return
    largest = max(rows.values(), default=0)
    err.print(f"carto logs bucketize: {sum(rows.values()):,} rows into {len(rows)} non-empty of {n_buckets} "
              f"buckets (largest {largest:,} rows) in {escape(str(out))}")


# --------------------------------------------------------------------------------------- prune


@app.command("prune")
@_cli_errors
def prune_command(
    frac: Annotated[float | None, typer.Option(
        "--frac", help="Fraction of samples to remove, in [0, 1) (default, on scores with findings: every carrier "
        "of a private finding).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest to write.")] = Path("manifest.parquet"),
    scores_path: ScoresOption = Path("scores.parquet"),
    by: Annotated[
        str, typer.Option("--by", help="Ranking: " + " | ".join(PRUNE_BY) + ".")
    ] = "memorization",
    seed: Annotated[int, typer.Option("--seed", help="Seed of --by random.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Write a manifest that removes every copy of what the model memorized (scores with findings), or
    the fraction FRAC of samples ranked most memorization-prone."""
    if by not in PRUNE_BY:
        raise ChoiceError(f"--by must be one of {', '.join(PRUNE_BY)}; got '{by}'")
    if frac is not None:
        export.prune_count(0, frac)  # validate --frac before reading anything
    artifacts.ensure_not_input(out, [scores_path])
    scores, scores_prov = artifacts.read(scores_path, "scores")
    by_findings = by == "memorization" and export.has_findings(scores)
    if frac is None and not by_findings:
        raise OptionError(f"--frac is needed: {scores_path} has no findings to prune by (score with "
                          "`carto score --data TRAIN` to prune every copy of what was memorized)"
                          if by == "memorization" else f"--by {by} needs --frac")
    manifest = (export.findings_manifest(scores, frac=frac) if by_findings
                else export.prune_manifest(scores, frac=frac, by=by, seed=seed))
    n_pruned = int((~manifest["keep"]).sum())
    prov = artifacts.provenance(
        "manifest",
        inputs=[{"path": str(scores_path), "sha256": artifacts.file_digest(scores_path),
                 "provenance": scores_prov}],
        parameters={"frac": frac, "by": "findings" if by_findings else by, "seed": seed if by == "random" else None},
        samples=manifest.height,
        pruned=n_pruned,
    )
    artifacts.write(manifest, out, prov, sidecar=True)
    pruned_by_quadrant = (
        manifest.filter(~pl.col("keep"))
        .with_columns(pl.col("quadrant").fill_null(quadrants.UNPLACED))
        .group_by("quadrant").len().sort("quadrant")
    )
    counts = {row[0]: row[1] for row in pruned_by_quadrant.iter_rows()}
    if as_json:
        _emit_json({"out": str(out), "samples": manifest.height, "pruned": n_pruned, "kept": manifest.height - n_pruned,
                    "by": by, "pruned_by_quadrant": counts})
        return
    share = n_pruned / manifest.height if manifest.height else 0.0
    detail = ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"
    if by_findings:
        _print_findings_prune(scores, manifest, frac, n_pruned, share)
        err.print(f"wrote {escape(str(out))} and {escape(str(out))}{artifacts.SIDECAR_SUFFIX}")
        return
    err.print(f"carto prune: removing {n_pruned:,} of {manifest.height:,} samples ({100 * share:.1f}%) by {by}")
    err.print(f"pruned by quadrant: {detail}")
    asked = export.prune_count(manifest.height, frac)
    if n_pruned < asked:
        what = "a memorization score" if by == "memorization" else "a quadrant"
        err.print(f"[yellow]Note:[/] only {n_pruned:,} sample(s) have {what}, fewer than the {asked:,} that "
                  f"--frac {frac:g} asks for; the {manifest.height - export.rankable(scores, by):,} without one "
                  f"are never pruned by {by} (`carto score` says why they are unplaced)")
    if by == "memorization":
        forgets = str((scores_prov or {}).get("memorization", "forget")).startswith("forget")
        unranked = export.pruned_without_evidence(scores, manifest, forgets=forgets)
        if unranked:
            what, which = ("no forget event", "forgotten") if forgets else ("a memorization of 0", "memorized")
            err.print(
                f"[yellow]Note:[/] {unranked:,} pruned sample(s) have {what}: the ranking ran out "
                f"of {which} samples and the tie-break (lowest difficulty) chose them"
            )
    err.print(f"wrote {escape(str(out))} and {escape(str(out))}{artifacts.SIDECAR_SUFFIX}")


def _print_findings_prune(scores: Any, manifest: Any, frac: float | None, n_pruned: int, share: float) -> None:
    carriers = int(scores["finding"].is_not_null().sum())
    head = f"carto prune: removing {n_pruned:,} of {manifest.height:,} samples ({100 * share:.1f}%): "
    if n_pruned == carriers:
        err.print(head + "every sample that carries a private finding")
        return
    err.print(head + f"the carriers of the strongest private findings that fit --frac {frac:g}")
    err.print(f"[yellow]Note:[/] {carriers - n_pruned:,} of the {carriers:,} carriers are kept: only whole "
              "findings are removed, strongest first (the copies left would teach the string again); "
              "`carto mask` drops every copy's tokens from the loss instead")


# --------------------------------------------------------------------------------------- weights


@app.command("weights")
@_cli_errors
def weights_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Weights file to write.")] = Path("weights.parquet"),
    scores_path: ScoresOption = Path("scores.parquet"),
    stable_easy: Annotated[float, typer.Option("--stable-easy", help="Multiplier of stable-easy samples.")] = 1.0,
    ambiguous_hard: Annotated[
        float, typer.Option("--ambiguous-hard", help="Multiplier of ambiguous-hard samples.")
    ] = 2.0,
    hotspot_memorized: Annotated[
        float, typer.Option("--hotspot-memorized", help="Multiplier of hotspot-memorized samples.")
    ] = 0.5,
    noisy_outlier: Annotated[float, typer.Option("--noisy-outlier", help="Multiplier of noisy-outlier samples.")] = 0.0,
    as_json: JsonOption = False,
) -> None:
    """Write per-sample weights from quadrant multipliers, normalised to mean 1."""
    multipliers = {
        quadrants.STABLE_EASY: stable_easy,
        quadrants.AMBIGUOUS_HARD: ambiguous_hard,
        quadrants.HOTSPOT: hotspot_memorized,
        quadrants.NOISY_OUTLIER: noisy_outlier,
    }
    artifacts.ensure_not_input(out, [scores_path])
    scores, scores_prov = artifacts.read(scores_path, "scores")
    weights = export.sample_weights(scores, multipliers)
    prov = artifacts.provenance(
        "weights",
        inputs=[{"path": str(scores_path), "sha256": artifacts.file_digest(scores_path),
                 "provenance": scores_prov}],
        parameters={"multipliers": multipliers, "unplaced": export.DEFAULT_MULTIPLIERS[quadrants.UNPLACED],
                    "normalisation": "mean 1 over all samples"},
        samples=weights.height,
    )
    artifacts.write(weights, out, prov, sidecar=True)
    per_quadrant = (
        weights.with_columns(pl.col("quadrant").fill_null(quadrants.UNPLACED))
        .group_by("quadrant")
        .agg(pl.len().alias("samples"), pl.col("multiplier").first(), pl.col("weight").first())
    )
    rows = {r["quadrant"]: r for r in per_quadrant.iter_rows(named=True)}
    if as_json:
        _emit_json({"out": str(out), "samples": weights.height, "quadrants": rows})
        return
    grid = Table(header_style="bold")
    for name in ("quadrant", "samples", "multiplier", "weight"):
        grid.add_column(name, justify="left" if name == "quadrant" else "right")
    for name in (*quadrants.QUADRANTS, quadrants.UNPLACED):
        if name in rows:
            r = rows[name]
            grid.add_row(name, f"{r['samples']:,}", f"{r['multiplier']:g}", f"{r['weight']:.4f}")
    err.print(f"carto weights: {weights.height:,} samples, weights normalised to mean 1")
    err.print(grid)
    err.print(f"wrote {escape(str(out))} and {escape(str(out))}{artifacts.SIDECAR_SUFFIX}")


# `carto experiment` lives in its own module; it imports torch only when it runs.
app.command("score")(_cli_errors(score_command.score_command))
app.command("findings")(_cli_errors(findings_command.findings_command))
app.command("mask")(_cli_errors(findings_command.mask_command))
app.command("experiment")(_cli_errors(cli_experiment.experiment_command))
app.command("inspect")(_cli_errors(cli_inspect.inspect_command))
# `carto map` too; Matplotlib is imported only when a map is drawn.
app.command("map")(_cli_errors(map_command.map_command))
app.command("report")(_cli_errors(report_command.report_command))


def main() -> None:
    """The `carto` script. Usage errors (a missing argument, a malformed option) are one line too:
    `Error: ...; see `carto CMD --help``, exit status 2, as click's own convention has it."""
    try:
        code = app(prog_name="carto", standalone_mode=False)
    except _UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `carto` or `carto logs` alone: the help
            typer.echo(exc.ctx.get_help(), err=True)
            sys.exit(0)
        where = exc.ctx.command_path if exc.ctx is not None else "carto"
        err.print(f"Error: {exc.format_message().rstrip('.')}; see `{where} --help`",
                  soft_wrap=True, markup=False, highlight=False)
        sys.exit(2)
    except typer.Abort:
        err.print("Aborted")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


# click's UsageError (the base of typer.BadParameter), whether Typer vendors click (typer._click,
# recent releases) or uses click itself (older ones); and the same click's globals (the context
# of the command running, for the usage line).
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _click_globals():
    return importlib.import_module(_UsageError.__module__.rsplit(".", 1)[0] + ".globals")


if __name__ == "__main__":  # pragma: no cover
    main()
