"""A Lightning callback that logs every training sample's presentation with `CartoLogger`.

    from carto_cli.integrations.lightning import CartoCallback

    class LM(lightning.LightningModule):
        def training_step(self, batch, batch_idx):
            ids, x = batch                                    # ids (B,), x (B, T + 1) token ids
            logits = self.model(x[:, :-1])                    # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
            return {"loss": loss, "carto_ids": ids,
                    "carto_logits": logits.detach(), "carto_labels": x[:, 1:]}

    trainer = lightning.Trainer(callbacks=[CartoCallback(log_dir="logs/")], ...)

What `training_step` returns: a dict with Lightning's `loss` and the keys below (`CARTO_KEYS`),
each handed to `CartoLogger.record` under the name after `carto_`:

| key | shape | meaning |
|---|---|---|
| `carto_ids` | (B,) int | the samples' ids (required; `IndexedDataset` puts them in the batch) |
| `carto_logits` | (B, T, V) | logits, already shifted: position t scores `carto_labels[:, t]` |
| `carto_labels` | (B, T) int | targets, -100 where there is none |
| `carto_loss` | (B,) float | instead of logits and labels: each sample's loss... |
| `carto_correct` | (B,) bool | ...and whether it counts as learned |
| `carto_token_acc`, `carto_tail_loss`, `carto_n_tokens`, `carto_token_loss` | | optional, with `carto_loss` |
| `carto_keep` | (B,) bool | optional: rows where it is False are not logged |
| `carto_segment_ids` | (B, T) int | packed rows, instead of `carto_ids`: the sample id of each position's document |

What is logged, and when: in `on_train_batch_end`, every micro-batch, on every rank (each rank its
own `CartoLogger` and parts, its rank from `trainer.global_rank`), with `epoch` =
`trainer.current_epoch` and `step` = `trainer.global_step` *as it was when the batch started*: the
number of optimizer steps done before it, i.e. the 0-based index of the optimizer step the batch
contributes to. Under gradient accumulation every micro-batch of one accumulation window gets the
same step (read at the batch's end, the last micro-batch of a window would get the next one). That
is also the step at which a run resumed from a checkpoint saved after S optimizer steps logs again:
S, which is how `carto score` recognises the replayed rows of the interrupted attempt.

Under DDP the sampler Lightning injects (`DistributedSampler`, `drop_last=False`) pads the last
batch of an epoch with repeated samples; the callback masks them (`drop_padding=True`, see
`carto_cli.integrations.distributed`), so each sample counts once per epoch over all ranks.

The label shift is yours too: the callback logs `carto_logits[:, t]` against `carto_labels[:, t]` as
returned. Declare how those positions map to the dataset's tokens with `label_shift=`: 1 when
`carto_labels` is the input shifted by one (`x[:, 1:]`, as above: logged position t is token t + 1
of the sample), 0 when it is aligned with the input as given. It is recorded in the log's metadata
where the logger supports it (`CartoLogger.label_shift`), for what maps logged positions back to text.

The logger is flushed when Lightning saves a checkpoint (rows presented before the checkpoint are on
disk before it is) and closed at the end of `fit` and on an exception (what was recorded is
written). The callback keeps no reference to the outputs: the logits are reduced to per-sample
values inside `record`, under `no_grad`, and dropped; returning `logits.detach()` spares the graph.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from carto_cli.errors import OptionError, first_line
from carto_cli.integrations.distributed import batch_keep_mask
from carto_cli.log.shim import CartoLogger

# training_step output key -> CartoLogger.record argument
CARTO_KEYS = {
    "carto_ids": "sample_ids",
    "carto_logits": "logits",
    "carto_labels": "labels",
    "carto_loss": "loss",
    "carto_correct": "correct",
    "carto_token_acc": "token_acc",
    "carto_tail_loss": "tail_loss",
    "carto_n_tokens": "n_tokens",
    "carto_token_loss": "token_loss",
    "carto_keep": "keep",
    "carto_segment_ids": "segment_ids",
}


def _skipped(outputs: Any) -> bool:
    """Lightning's outputs of a batch whose `training_step` returned None: None, {} (manual
    optimization) or {"loss": None} (automatic)."""
    return outputs is None or (isinstance(outputs, Mapping) and outputs.get("loss") is None
                               and not any(k in CARTO_KEYS for k in outputs))


def record_arguments(outputs: Any) -> dict[str, Any]:
    """The `CartoLogger.record` keyword arguments in a `training_step` output dict (its `carto_*` keys)."""
    if not isinstance(outputs, Mapping):
        outputs = {}
    unknown = sorted(k for k in outputs if isinstance(k, str) and k.startswith("carto_") and k not in CARTO_KEYS)
    if unknown:
        raise OptionError(
            f"CartoCallback: training_step returned unknown key(s) {', '.join(unknown)}; "
            f"the known ones are {', '.join(CARTO_KEYS)}"
        )
    if "carto_ids" not in outputs and "carto_segment_ids" not in outputs:
        raise OptionError(
            "CartoCallback: training_step must return a dict with 'loss', 'carto_ids' (B,) and either "
            "'carto_logits' (B, T, V) with 'carto_labels' (B, T), or 'carto_loss' (B,) with 'carto_correct' (B,)"
        )
    return {CARTO_KEYS[k]: v for k, v in outputs.items() if k in CARTO_KEYS}


class CartoCallback(pl.Callback):
    """Log what `training_step` returns under the `carto_*` keys, one row per sample presentation.

    Args:
        logger: a `CartoLogger` to record into (one process: it is not re-created per rank; it is
            flushed at checkpoints and at the end of `fit` but never closed: it is yours); or None,
            and the callback opens one per `fit` on each rank, in `log_dir`, and closes it.
        log_dir: where the callback's own logger writes; default `$CARTO_LOG_DIR` (set by `carto log`).
        drop_padding: leave out the padding duplicates of the distributed sampler (see the module
            docstring); the mask is combined with a `carto_keep` the step returns.
        label_shift: 1 when `carto_labels` are the inputs shifted by one (logged position t is the
            sample's token t + 1), 0 when they are aligned with the inputs; None: not declared. Set
            on the logger (yours too) where it has a `label_shift` attribute.
        **logger_options: passed to `CartoLogger` (`run_id=`, `token_losses=`, `rows_per_part=`, ...).
    """

    def __init__(
        self,
        logger: CartoLogger | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        drop_padding: bool = True,
        label_shift: int | None = None,
        **logger_options: Any,
    ) -> None:
        if label_shift not in (None, 0, 1):
            raise OptionError(f"CartoCallback: label_shift must be 0, 1 or None, got {label_shift!r}")
        if logger is not None and (log_dir is not None or logger_options):
            raise OptionError(
                "CartoCallback: pass either logger= (a CartoLogger) or log_dir= with CartoLogger options, not both"
            )
        self.logger = logger
        self._owns_logger = logger is None
        self.log_dir = log_dir
        self.drop_padding = drop_padding
        self.label_shift = label_shift
        self.logger_options = logger_options
        self._step = 0

    # ------------------------------------------------------------------ opening and closing

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._owns_logger and self.logger is None:
            self.logger = CartoLogger(self.log_dir, rank=trainer.global_rank, **self.logger_options)
        if stage == "fit" and self.label_shift is not None and hasattr(self.logger, "label_shift"):
            self.logger.label_shift = self.label_shift  # a logger without the attribute records no shift

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.logger is not None:
            self.logger.flush()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        try:
            self._close()
        except Exception as exc:  # the training's own exception is the one to see
            warnings.warn(f"CartoCallback: closing the logger failed: {first_line(exc)}", stacklevel=2)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close()

    def _close(self) -> None:
        logger = self.logger
        if logger is None:
            return
        if self._owns_logger:
            self.logger = None  # the next fit opens a new attempt
            logger.close()
        else:  # a logger the user passed in is theirs to close: write what it holds, keep it open
            logger.flush()

    # ------------------------------------------------------------------ logging

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step = trainer.global_step  # before this batch's optimizer step, if it makes one

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if _skipped(outputs):  # training_step returned None: Lightning skipped the batch
            return
        if self.logger is None:
            raise OptionError("CartoCallback: no logger is open; the callback logs during Trainer.fit only")
        arguments = record_arguments(outputs)
        ids = arguments.pop("sample_ids", None)  # None for packed rows (carto_segment_ids)
        if self.drop_padding:
            rows = len(ids) if ids is not None else int(arguments["segment_ids"].shape[0])
            padding = batch_keep_mask(trainer.train_dataloader, batch_idx, rows)
            if not bool(padding.all()):
                keep = arguments.get("keep")
                if keep is not None:  # the step's own mask, on its device (no sync: padding goes there)
                    keep = torch.as_tensor(keep)
                    padding = keep.bool() & padding.to(keep.device, non_blocking=True)
                arguments["keep"] = padding
        self.logger.record(ids, epoch=trainer.current_epoch, step=self._step, **arguments)
