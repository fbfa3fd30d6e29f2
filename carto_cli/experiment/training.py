"""One arm's training run and its evaluation: a fresh tiny GPT trained on a `Run`'s rows (logged
with the `CartoLogger` where the run asks for it), then every metric of the trained model.

    from carto_cli.experiment.training import train_and_evaluate
    metrics = train_and_evaluate(run)   # {"extraction_rate": ..., "val_ppl": ..., "per_canary": [...], ...}

Runs in the experiment's process or in a spawned worker (`executor.py`): it takes everything it
needs from the `Run` and returns plain numbers.
"""

from __future__ import annotations

import resource
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from carto_cli.experiment import metrics
from carto_cli.experiment.arms import Run, SeedData
from carto_cli.experiment.config import Config, OnStep
from carto_cli.experiment.tinygpt import GPT, GPTConfig, count_steps, row_losses, train_epochs
from carto_cli.log.shim import CartoLogger


def train_and_evaluate(run: Run, on_step: OnStep = None) -> dict:
    """Train a fresh model on `run`'s rows (initial weights fixed by its seed), then evaluate it at
    the moving average of its weights (every metric) and at its final weights (val_ppl_final)."""
    cfg = run.cfg
    started = time.perf_counter()
    torch.manual_seed(run.seed)
    model = GPT(GPTConfig(block_size=cfg.sample_len, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd))
    model.to(cfg.device)  # made on the CPU first: the same initial weights on any device
    rows = run.data.train[run.rows] if run.train_rows is None else run.train_rows
    budget = (len(run.order) if run.order is not None
              else run.epochs * len(rows) if run.presentations is None else run.presentations)
    steps = count_steps(len(rows), cfg.batch_size, budget)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay(cfg, steps)))
    with ExitStack() as stack:
        logger = eval_logger = on_epoch_end = None
        if run.log_dir is not None:
            logger = stack.enter_context(CartoLogger(_fresh(run.log_dir), token_losses=True))
        if run.eval_log_dir is not None:
            eval_logger = stack.enter_context(CartoLogger(_fresh(run.eval_log_dir), token_losses=True))

            def on_epoch_end(epoch: int, step: int) -> None:
                log_evaluation_pass(model, rows, run.rows, eval_logger, epoch=epoch, step=step,
                                    batch_size=cfg.batch_size)

        train_epochs(model, rows, epochs=run.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=run.seed,
                     logger=logger, progress=on_step, on_epoch_end=on_epoch_end, presentations=run.presentations,
                     order=run.order, target_keep=run.target_keep, after_step=lambda: ema.update_parameters(model))
    final_ppl = float(np.exp(row_losses(model, run.data.val).mean()))  # as evaluate computes val_ppl
    result = evaluate(ema.module, run.data, run.kept_share, steps=steps)
    return {**result, "val_ppl_final": final_ppl, "rows_removed": run.rows_removed,
            "targets_removed": run.targets_removed, "wall_s": time.perf_counter() - started,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def ema_decay(cfg: Config, steps: int) -> float:
    """The decay of the weights' moving average: a window of about `cfg.ema_frac` of the steps."""
    return 1.0 - 1.0 / max(1.0, cfg.ema_frac * steps)


@torch.no_grad()
def log_evaluation_pass(model: GPT, rows: np.ndarray, sample_ids: np.ndarray, logger: CartoLogger, *,
                        epoch: int, step: int, batch_size: int) -> None:
    """One forward pass over `rows` in eval mode, no update, each row logged as a presentation
    (epoch = the training epoch just finished, step = the steps so far): the forgetting
    literature's periodic evaluation, against which training-time logging is compared."""
    model.eval()
    device = next(model.parameters()).device
    data = torch.as_tensor(rows, dtype=torch.long)  # (N, T + 1)
    ids = torch.as_tensor(sample_ids)
    for lo in range(0, len(data), batch_size):
        batch = data[lo : lo + batch_size].to(device)  # (B, T + 1)
        logger.record(ids[lo : lo + batch_size], epoch=epoch, step=step, logits=model(batch[:, :-1]),
                      labels=batch[:, 1:])
    model.train()


def evaluate(model: GPT, data: SeedData, kept_share: np.ndarray, *, steps: int) -> dict:
    """Every metric of one trained arm. `kept_share[i]`: row i's presence (0/1) or weight."""
    cs = data.canaries
    prefixes = [c.prefix for c in cs.canaries]
    secrets = [c.secret for c in cs.canaries]
    refs = list(cs.references)
    canary_lp = metrics.secret_log_perplexity(model, prefixes, secrets)  # (C,) bits
    ref_lp = metrics.secret_log_perplexity(
        model, [p for p in prefixes for _ in refs], refs * len(prefixes)
    ).reshape(len(prefixes), len(refs))  # (C, R): the references under each canary's prefix
    per_canary = [
        {
            "key": c.key,
            "repetitions": c.repetitions,
            "extracted": bool(hit),
            "exposure": metrics.exposure(lp, ref),
            "exposure_skewnorm": metrics.exposure_skewnorm(lp, ref),
            "kept_copies": float(kept_share[list(c.sample_ids)].sum() / c.repetitions),
        }
        for c, hit, lp, ref in zip(cs.canaries, metrics.extraction_successes(model, prefixes, secrets),
                                   canary_lp, ref_lp)
    ]
    val_nll = row_losses(model, data.val)  # (M,) each validation row's mean loss: paired comparisons
    return {
        "extraction_rate": float(np.mean([c["extracted"] for c in per_canary])),
        "exposure": float(np.mean([c["exposure"] for c in per_canary])),
        "exposure_skewnorm": float(np.mean([c["exposure_skewnorm"] for c in per_canary])),
        "val_ppl": float(np.exp(val_nll.mean())),
        "val_row_nll": [round(float(x), 6) for x in val_nll],
        "mia_auc": metrics.membership_auc(canary_lp, ref_lp.ravel()),
        "kept_copies": float(np.mean([c["kept_copies"] for c in per_canary])),
        "steps": steps,
        "per_canary": per_canary,
    }


def _fresh(directory: Path) -> Path:
    """An empty log directory: a rerun must not mix its presentations with an earlier run's."""
    if directory.exists():
        shutil.rmtree(directory)
    return directory
