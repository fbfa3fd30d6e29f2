"""`carto experiment`: the command-line face of `carto_cli.experiment.run` (parse, call, print).

    carto experiment --out exp/ --quick          # smoke run, every arm, under a minute
    carto experiment --out exp/ --seeds 5        # the short regime: carto's arms against the peers
    carto experiment --out exp/ --regime data-rich   # an earlier protocol's regime (256-byte samples)
    carto experiment --out exp/ --device cuda    # on a GPU: the data-rich-gpu regime (a larger model)

The experiment itself (torch, scipy, matplotlib) is imported only when the command runs, so the
rest of the CLI works without those extras.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from carto_cli.cli.console import err as console
from carto_cli.errors import MissingDependencyError


def experiment_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for results.json, .md, .png and the runs.")],
    quick: Annotated[
        bool, typer.Option("--quick", help="A smoke run: tiny model, few samples, every arm, under a minute.")
    ] = False,
    regime: Annotated[
        str | None, typer.Option("--regime", help="short (64-byte samples, 12 canaries, carto's arms against "
                                 "deduplication and the Goldfish loss, 10 arms), data-rich (256-byte samples, 3 "
                                 "epochs, 6 arms), small (64-byte samples, 9 epochs) or data-rich-gpu (data-rich "
                                 "with a 3.2M-parameter model, on a GPU) [default: short, or data-rich-gpu with "
                                 "--device cuda].", show_default=False)
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Where to train and evaluate: cpu or cuda [default: the "
                                 "regime's].", show_default=False)
    ] = None,
    arms: Annotated[
        str | None, typer.Option("--arms", help="Comma-separated arms to run instead of the regime's (the baseline "
                                 "always runs): default, mask, default-half, random, oracle, dedup-exact, "
                                 "dedup-exact-tuned, dedup-near, goldfish, goldfish-flagged, paper, signal, carto, "
                                 "loss, weights.", show_default=False)
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Reported seeds (fresh canaries each).")] = 3,
    first_seed: Annotated[
        int, typer.Option("--first-seed", help="The reported seeds are FIRST_SEED .. FIRST_SEED + SEEDS - 1.")
    ] = 0,
    frac: Annotated[
        float, typer.Option("--frac", help="Fraction of the training samples each pruning arm removes.")
    ] = 0.1,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", help="Training runs at once, each in its own process with 1 torch thread "
                     "[default: the number of CPUs].", show_default=False),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print results.json on stdout.")] = False,
) -> None:
    """Train the arms of a regime on CPython text with canaries (the short regime: carto's findings
    pruned or masked, random, the oracle, deduplication and the Goldfish loss); report each arm's
    extraction, exposure and validation perplexity against its own seed's baseline."""
    run_experiment = _load()  # it checks the options (OptionError) before any work
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed:.1f}/{task.total:.0f} runs"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("starting", total=None)
        finished = [0]
        started = time.monotonic()

        def progress(description: str, completed: float, total: int) -> None:
            bar.update(task, description=description, completed=completed, total=total)
            if not console.is_terminal and int(completed) > finished[0]:  # a log line per finished run
                finished[0] = int(completed)
                console.print(f"{finished[0]}/{total} runs finished ({time.monotonic() - started:.0f} s)")

        chosen_arms = tuple(a.strip() for a in arms.split(",") if a.strip()) if arms else None
        if regime is None:  # a GPU runs the larger configuration unless a regime is named
            regime = "data-rich-gpu" if device is not None and device.startswith("cuda") else "short"
        results = run_experiment(out, quick=quick, regime=regime, arms=chosen_arms, seeds=seeds,
                                 first_seed=first_seed, frac=frac, device=device,
                                 jobs=jobs if jobs is not None else (os.cpu_count() or 1), progress=progress)
    console.print(_summary_table(results))
    extracted = results["arms"]["baseline"]["extraction_rate"]["mean"]
    if extracted < 0.5:
        console.print(f"[yellow]Warning:[/] the baseline extracted only {extracted:.0%} of its canaries "
                      "(< 50%): read exposure rather than extraction")
    console.print(f"wrote {escape(str(out / 'results.json'))}, results.md and results.png")
    if json_:
        typer.echo(json.dumps(results, indent=2))


def _load():
    try:
        from carto_cli.experiment.run import run_experiment
    except ImportError as exc:
        raise MissingDependencyError(
            f"`carto experiment` needs torch, scipy and matplotlib ({exc.name} is missing): "
            "pip install 'carto-cli[torch]' scipy matplotlib"
        ) from exc
    return run_experiment


def _summary_table(results: dict) -> Table:
    base = results["arms"]["baseline"]["val_ppl"]["mean"]
    table = Table(header_style="bold", caption=f"means over seeds {results['seeds']}; intervals in results.md")
    for name in ("arm", "extraction", "exposure", "val ppl", "vs baseline", "MIA AUC", "kept copies"):
        table.add_column(name, justify="left" if name == "arm" else "right")
    for name, arm in results["arms"].items():
        table.add_row(
            name,
            f"{arm['extraction_rate']['mean']:.0%}",
            f"{arm['exposure']['mean']:.2f}",
            f"{arm['val_ppl']['mean']:.3f}",
            f"{100 * (arm['val_ppl']['mean'] / base - 1):+.2f}%",
            f"{arm['mia_auc']['mean']:.3f}",
            f"{arm['kept_copies']['mean']:.0%}",
        )
    return table
