"""CartoTrainerMixin and CartoTrainer: the Trainer side of the integration (see `carto_cli.integrations.hf`).

The mixin overrides where the Trainer's data and forwards pass: `get_train_dataloader` (the dataset
and collator wrapped so that ids travel with the batch, `ids`), `get_batch_samples` (every training
batch, before its forward: the padding masks of several processes, `padding`), `compute_loss` (the
forward's outputs, captured by a forward hook, logged: `outputs`, with the label shift of `shift`),
`_save_checkpoint` (the logger flushed first) and `train` (one logger, one attempt, per call).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from carto_cli.errors import OptionError
from carto_cli.integrations.hf.ids import ID_KEY, KEEP_KEY, IdCollator, SampleIdDataset, indexed
from carto_cli.integrations.hf.outputs import batch_mismatch, field, fused_columns, is_fused
from carto_cli.integrations.hf.padding import PaddingMasks
from carto_cli.integrations.hf.shift import LabelShiftWarning, ShiftDecision, check_loss, decide
from carto_cli.log.shim import LOG_DIR_ENV, RUN_ID_ENV, CartoLogger

DEFAULT_SUBDIR = "carto_logs"  # under args.output_dir when neither carto_log_dir nor $CARTO_LOG_DIR is given


class _CartoCallback(TrainerCallback):
    """Counts the Trainer's epochs (the loop variable of `_inner_training_loop`)."""

    def __init__(self, trainer: CartoTrainerMixin) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._carto_epoch = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        # The first epoch of a train() call is the resumed state's (0 on a fresh start); the
        # Trainer's loop resumes at global_step // steps_per_epoch, which is the same number.
        current = self.trainer._carto_epoch
        self.trainer._carto_epoch = int(state.epoch or 0) if current is None else current + 1


class CartoTrainerMixin:
    """Logs every training presentation of a `transformers.Trainer` (sub)class with carto.

    Put it first among the bases: `class MyTrainer(CartoTrainerMixin, SFTTrainer)`.

    Args (besides the Trainer's own):
        carto_logger: a `CartoLogger` to log into (yours: flushed before every checkpoint and when
            `train()` ends, never closed by the Trainer; use a new one for each `train()` call, so
            that a resume is a new attempt).
        carto_log_dir: where the Trainer's own loggers write; default `$CARTO_LOG_DIR`, else
            `<args.output_dir>/carto_logs`.
        carto_shift_labels: whether logits[:, t] predict labels[:, t + 1] (causal LMs); default:
            decided at the first logged batch from the model's own loss, else from its class
            (`carto_cli.integrations.hf.shift`). Given, it wins; carto still warns once if the
            model's loss says otherwise.
        carto_mask: a mask file written by `carto mask` (or a `LossMask`): the labels of its tokens
            are set to -100 in the collator, so the model is never trained to produce the strings it
            memorized; labels laid out like the inputs (a causal LM's), left padding read from the
            attention mask; the ids stay the dataset's own (`sample_id` column or index).
    """

    def __init__(
        self,
        *args: Any,
        carto_logger: CartoLogger | None = None,
        carto_log_dir: str | os.PathLike[str] | None = None,
        carto_shift_labels: bool | None = None,
        carto_mask: Any = None,
        **kwargs: Any,
    ) -> None:
        if carto_logger is not None and carto_log_dir is not None:
            raise OptionError(
                "CartoTrainer: pass carto_logger= or carto_log_dir=, not both (the logger has its own directory)"
            )
        super().__init__(*args, **kwargs)
        if carto_mask is not None and not hasattr(carto_mask, "mask_batch"):
            from carto_cli.export.masks import LossMask

            carto_mask = LossMask.read(carto_mask)
        self.carto_mask = carto_mask
        self.carto_logger = carto_logger
        self._carto_owns_logger = carto_logger is None
        if carto_logger is not None:
            self.carto_log_dir = Path(carto_logger.out_dir)
        else:
            self.carto_log_dir = Path(carto_log_dir or os.environ.get(LOG_DIR_ENV) or
                                      Path(self.args.output_dir) / DEFAULT_SUBDIR)
        self.carto_shift_labels = carto_shift_labels
        self._carto_epoch: int | None = None
        self._carto_outputs: list[Any] | None = None  # forward outputs captured during one compute_loss
        self._carto_hooked: tuple[Any, Any] | None = None  # (module, hook handle)
        self._carto_shift: ShiftDecision | None = None  # decided at the first logged batch of each train()
        self._carto_batches: PaddingMasks | None = None  # the current epoch's batches, with padding masks
        self.add_callback(_CartoCallback(self))

    # -------------------------------------------------------------- the logger's life

    def carto_run_id(self) -> str | None:
        """`args.run_name` when set and `$CARTO_RUN_ID` is not; None leaves CartoLogger's default."""
        name = self.args.run_name
        if os.environ.get(RUN_ID_ENV) or not name or name == self.args.output_dir:
            return None
        return str(name)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._carto_shift = None  # decided again (one sync) for this attempt's logger; the model may be new
        if self._carto_owns_logger:
            self.carto_logger = CartoLogger(self.carto_log_dir, rank=self.args.process_index,
                                            run_id=self.carto_run_id())
        try:
            result = super().train(*args, **kwargs)
        except BaseException:
            self._carto_finish(raising=False)  # keep the training error; the rows so far are flushed
            raise
        self._carto_finish(raising=True)
        return result

    def _carto_finish(self, *, raising: bool) -> None:
        self._carto_batches = None
        if self._carto_hooked is not None:
            self._carto_hooked[1].remove()
            self._carto_hooked = None
        if self.carto_logger is None:
            return
        try:  # yours is flushed (every row of this train() on disk) and left open
            self.carto_logger.close() if self._carto_owns_logger else self.carto_logger.flush()
        except Exception:
            if raising:
                raise

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # Before the checkpoint exists: a resume from it replays exactly the rows not yet on disk.
        if self.carto_logger is not None:
            self.carto_logger.flush()
        super()._save_checkpoint(model, trial)

    # -------------------------------------------------------------- ids through the data pipeline

    def get_train_dataloader(self) -> Any:
        dataset, collator = self.train_dataset, self.data_collator
        if dataset is None:
            return super().get_train_dataloader()
        self.train_dataset, self.data_collator = indexed(dataset), IdCollator(collator, self.carto_mask)
        try:
            return super().get_train_dataloader()
        finally:
            self.train_dataset, self.data_collator = dataset, collator

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
        # transformers 5 passes the dataset (older versions read self.train_dataset); the sampler only
        # needs its indices, so it is built on the unwrapped one: the same sampler and order as without carto
        if args and isinstance(args[0], SampleIdDataset):
            args = (args[0].dataset, *args[1:])
        if isinstance(kwargs.get("train_dataset"), SampleIdDataset):
            kwargs["train_dataset"] = kwargs["train_dataset"].dataset
        return super()._get_train_sampler(*args, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and ID_KEY not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, ID_KEY]

    # -------------------------------------------------------------- the repeats that pad an epoch

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, *args: Any, **kwargs: Any) -> Any:
        # Every training batch passes here, in the loader's order, before its forward: the place to
        # count it and put its padding mask on it. One process or drop_last: nothing to mask, no cost.
        if self._carto_masks_padding():
            if self._carto_batches is None or self._carto_batches.iterator is not epoch_iterator:
                self._carto_batches = PaddingMasks(epoch_iterator, self.accelerator.gradient_state,
                                                   self.accelerator.num_processes)
            epoch_iterator = self._carto_batches
        return super().get_batch_samples(epoch_iterator, num_batches, *args, **kwargs)

    def _carto_masks_padding(self) -> bool:
        """Whether the training loader may repeat samples to even out the processes."""
        return (self.carto_logger is not None and self.accelerator.num_processes > 1
                and not self.args.dataloader_drop_last)

    # -------------------------------------------------------------- logging the forward

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        ids = inputs.pop(ID_KEY, None)
        keep = inputs.pop(KEEP_KEY, None)  # (B,) bool numpy: False for padding repeats; None: keep all
        if ids is None or not model.training or self.carto_logger is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = inputs.get("labels")  # before the Trainer may pop it (label smoothing, compute_loss_func)
        step, epoch = self.state.global_step, self._carto_epoch or 0
        self._carto_listen(model)
        self._carto_outputs = []
        try:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            captured = self._carto_outputs
        finally:
            self._carto_outputs = None
        self._carto_record(model, ids, labels, captured, step=step, epoch=epoch, keep=keep,
                           num_items_in_batch=num_items_in_batch)
        return result

    def _carto_listen(self, model: Any) -> None:
        """A forward hook on the module compute_loss calls (kept across steps; moved if it changes)."""
        if self._carto_hooked is not None and self._carto_hooked[0] is model:
            return
        if self._carto_hooked is not None:
            self._carto_hooked[1].remove()

        def capture(module: Any, args: Any, outputs: Any) -> None:
            if self._carto_outputs is not None:
                self._carto_outputs.append(outputs)

        self._carto_hooked = (model, model.register_forward_hook(capture))

    def _carto_unwrapped(self, model: Any) -> Any:
        """The user's model under Accelerate's and PEFT's wrappers (its class is the shift's fallback)."""
        inner = self.accelerator.unwrap_model(model)
        if hasattr(inner, "get_base_model"):  # PEFT
            inner = inner.get_base_model()
        return inner

    def _carto_decide_shift(self, model: Any, outputs: Any, logits: Any, labels: Any,
                            num_items_in_batch: Any) -> bool:
        """The label shift, decided at this train()'s first logged batch (`shift.decide`) and cached:
        one host-device synchronisation then, none after."""
        if self._carto_shift is None:
            check = check_loss(logits, labels, field(outputs, "loss"), num_items_in_batch,
                               ignore_index=self.carto_logger.ignore_index, chunk_bytes=self.carto_logger.chunk_bytes)
            self._carto_shift = decide(explicit=self.carto_shift_labels, check=check,
                                       model=self._carto_unwrapped(model))
            if self._carto_shift.warning is not None:
                warnings.warn(self._carto_shift.warning, LabelShiftWarning, stacklevel=2)
        return self._carto_shift.shift

    def _carto_declare_shift(self, label_shift: int) -> None:
        """Record the shift in the log (`CartoLogger.label_shift`, written into each part's metadata),
        where the logger has that attribute."""
        if hasattr(self.carto_logger, "label_shift") and self.carto_logger.label_shift != label_shift:
            self.carto_logger.label_shift = label_shift

    def _carto_record(self, model: Any, ids: Any, labels: Any, captured: list[Any], *, step: int, epoch: int,
                      keep: Any = None, num_items_in_batch: Any = None) -> None:
        samples = int(ids.shape[0])
        with_logits = [o for o in captured if field(o, "logits") is not None]
        fused = [o for o in captured if is_fused(o)]
        if with_logits:
            logits = field(with_logits[0], "logits")
            if labels is None:
                raise OptionError(
                    "CartoTrainer: the training batch has no `labels`; carto scores each sample against "
                    "its labels: have the collator set them (DataCollatorForLanguageModeling(mlm=False) does)"
                )
            if logits.shape[0] != samples:
                raise batch_mismatch("logits", int(logits.shape[0]), samples)
            if labels.is_floating_point():
                raise OptionError("CartoTrainer: regression labels (floats) have no per-sample correctness; "
                                  "carto logs classification and language-model training")
            if logits.dim() == 2 and labels.dim() == 1:  # sequence classification: one "token" per sample
                logits, labels, shift = logits[:, None], labels[:, None], False
            else:
                shift = self._carto_decide_shift(model, with_logits[0], logits, labels, num_items_in_batch)
            if shift:
                logits, labels = logits[:, :-1], labels[:, 1:]  # (B, T-1, V): position t predicts label t+1
            self._carto_declare_shift(int(shift))
            self.carto_logger.record(ids, epoch=epoch, step=step, logits=logits, labels=labels, keep=keep)
        elif fused:
            columns = fused_columns(fused[0], self.carto_logger.tail_k)
            if int(columns["loss"].shape[0]) != samples:
                raise batch_mismatch("per-token log-probs", int(columns["loss"].shape[0]), samples)
            self._carto_declare_shift(1)  # the fused head scores labels[:, 1:] (TRL's add_fused_lm_head)
            self.carto_logger.record(ids, epoch=epoch, step=step, keep=keep, **columns)
        else:
            raise OptionError(
                "CartoTrainer: the model's forward returned no `logits` (nor a fused LM head's log_probs); "
                "carto needs them: return a ModelOutput with logits and turn off fused losses that skip "
                "them (e.g. use_liger_kernel)"
            )


class CartoTrainer(CartoTrainerMixin, Trainer):
    """`transformers.Trainer` that logs every training presentation with carto (see `carto_cli.integrations.hf`).

    Takes the Trainer's arguments plus `carto_logger=`, `carto_log_dir=` and `carto_shift_labels=`
    (`CartoTrainerMixin`).
    """
