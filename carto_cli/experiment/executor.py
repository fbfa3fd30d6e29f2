"""Where the experiment's training runs go: in this process, one after another, or `jobs` at a
time in spawned worker processes; each run's metrics saved as soon as it finishes, and progress
reported as runs advance.

    from carto_cli.experiment.executor import Tracker, run_all, torch_threads

    with torch_threads(cfg.threads):
        results = run_all(runs, jobs, Tracker(progress, total=len(runs)))

What each run trains is `arms.py`'s; how it trains, `training.py`'s.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from carto_cli.experiment.arms import Run, baseline_run
from carto_cli.experiment.config import Config, OnStep, Progress
from carto_cli.experiment.rankings import prepare_arms
from carto_cli.experiment.training import train_and_evaluate


def run_all(runs: list[Run], jobs: int, tracker: Tracker) -> list[dict]:
    """`train_and_evaluate` every run, in order, or `jobs` at a time in spawned worker processes."""
    if jobs == 1 or len(runs) == 1:
        return [save_run(run, train_and_evaluate(run, tracker.run(run.label))) for run in runs]
    threads = runs[0].cfg.threads or 1
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    with ProcessPoolExecutor(max_workers=min(jobs, len(runs)), mp_context=context,
                             initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(train_and_evaluate, run): run for run in runs}
        for future in as_completed(futures):
            save_run(futures[future], future.result())  # a failed run stops the experiment here
            tracker.finished(futures[future].label)
        return [future.result() for future in futures]


def run_pipelined(cfg: Config, data: dict, reported: range, work: dict, out: Path, frac: float, jobs: int,
                  tracker: Tracker) -> tuple[dict, list[dict], list[dict]]:
    """Every reported seed's baseline, then its arms as soon as that baseline is done, `jobs` runs
    at a time in spawned worker processes (the same runs as `run_all` makes, in another order:
    no worker waits for the last baseline). Returns the baselines' metrics by seed, each seed's
    `prepare_arms`, and the arms' metrics in seed order, then `cfg.arms` order."""
    context = multiprocessing.get_context("spawn")
    prepared, metrics = {}, {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(cfg.threads or 1,)) as pool:
        pending = {pool.submit(train_and_evaluate, run): (seed, "baseline", run)
                   for seed, run in ((s, baseline_run(cfg, data[s], s, work[s], out)) for s in reported)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                seed, arm, run = pending.pop(future)
                metrics[seed, arm] = save_run(run, future.result())  # a failed run stops the experiment here
                tracker.finished(run.label)
                if arm == "baseline":  # its arms follow from its own logs only
                    prepared[seed] = prepare_arms(cfg, data[seed], frac, seed, None, work[seed])
                    for index, arm_run in enumerate(prepared[seed]["runs"]):
                        arm_run = replace(arm_run, out_dir=out)
                        pending[pool.submit(train_and_evaluate, arm_run)] = (seed, index, arm_run)
    arms = [metrics[s, i] for s in reported for i in range(len(prepared[s]["runs"]))]
    return {s: metrics[s, "baseline"] for s in reported}, [prepared[s] for s in reported], arms


def save_run(run: Run, metrics: dict) -> dict:
    """Write one run's metrics to runs/<label>.json beside the seed's work as soon as it finishes,
    so that a later failure loses no finished run (a record, never read back as a cache)."""
    directory = run.out_dir / "runs" if run.out_dir is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        name = run.label.replace(" · ", "-").replace(" ", "-")
        (directory / f"{name}.json").write_text(json.dumps(metrics, indent=1, default=float) + "\n")
    return metrics


@contextmanager
def torch_threads(threads: int | None):
    """Run the block with `threads` torch intra-op threads (when given), then restore the setting."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Tracker:
    """Turns per-step callbacks of each training run into `progress(description, runs done, runs)`."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.started = 0

    def finished(self, description: str) -> None:
        """A run finished in a worker process (no per-step progress from there)."""
        self.started += 1
        if self.progress is not None:
            self.progress(description, self.started, self.total)

    def run(self, description: str) -> OnStep:
        index = self.started
        self.started += 1
        if self.progress is None:
            return None
        self.progress(description, index, self.total)
        return lambda step, steps: self.progress(description, index + step / steps, self.total)
