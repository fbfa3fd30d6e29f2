"""Hugging Face Trainer integration: every training presentation logged from the forward the Trainer already runs.

    from carto_cli.integrations.hf import CartoTrainer

    trainer = CartoTrainer(model=model, args=TrainingArguments("out"), train_dataset=train)
    trainer.train()                         # parts in out/carto_logs/ ($CARTO_LOG_DIR when set)

or, with a Trainer subclass of your own (TRL's `SFTTrainer`, say), put the mixin first:

    class MySFTTrainer(CartoTrainerMixin, SFTTrainer): ...

What is logged, and how it gets there:
- **Sample ids.** The training dataset is wrapped (`SampleIdDataset`) so that item `i` carries its
  id under the reserved key `ID_KEY`: the dataset's `sample_id` column when it has one, else the
  index `i`. The key is added to the Trainer's signature columns, so `remove_unused_columns=True`
  (the default) keeps it, and the collator wrapper (`IdCollator`) takes it out of every feature
  before your collator runs and puts the ids back on the batch as a (B,) int64 tensor.
  `compute_loss` pops it before the model sees the batch. The sampler is built on the unwrapped
  dataset, so the Trainer draws the same order as without carto.
- **Per-sample values, no second forward.** A forward hook on the model captures the outputs of the
  forward `compute_loss` runs (whatever the Trainer subclass does inside it); the logits (B, T, V)
  and the batch's labels go to `CartoLogger.record`, shifted by one position for causal LMs (the
  rule the Trainer itself uses: the model's class is in transformers' causal-LM mapping).
  Sequence classification (logits (B, C), labels (B,)) is logged as one-token sequences. A model
  with a fused LM head (TRL's `SFTTrainer` since 1.x: per-token `log_probs`, `is_top1` and
  `label_mask`, no logits) is logged from those: loss, token accuracy, tail loss and token count,
  without the memorization sketch (`carto score` then ranks by forget events, `--memorization forgets`).
- **Steps and epochs.** `step` is `state.global_step` when the forward runs: the 0-based index of
  the optimizer step being taken (every micro-batch of a gradient-accumulation group has the same
  step; a checkpoint `checkpoint-S` holds steps 0..S-1). `epoch` is the Trainer's epoch loop
  variable (0-based), counted at `on_epoch_begin` from the resumed state's epoch.
- **Checkpoints and attempts.** The logger is flushed before every checkpoint is written, so a
  process killed right after `checkpoint-S` has every row of steps < S on disk, and the rows after
  it are replayed by the resume. Each `train()` call opens its own `CartoLogger`, one *attempt* of
  the run (closed when `train()` returns or raises), so the reader drops the rows a resume replays
  (`carto_cli.io.replays`). The run id is `$CARTO_RUN_ID`, else `args.run_name` when you set one,
  else derived from the log directory, which a resume shares. A `carto_logger` you pass in is yours:
  flushed before checkpoints and when `train()` ends, never closed by the Trainer.
- **Padding repeats (several processes).** To give every rank the same number of batches,
  Accelerate's prepared loader completes a short last round of the epoch with samples from its
  start (`even_batches`, the default). Those rows are trained on but not logged: every batch the
  Trainer fetches (`get_batch_samples`) gets a keep mask under the reserved key `KEEP_KEY`, built
  on the CPU from the batch's index in the epoch and the loader being iterated (its
  `skip_first_batches` copy on a resume, whose skipped batches count), by the rule of
  `carto_cli.integrations.distributed`; for Accelerate's dispatching loader (iterable datasets)
  from the loader's own end-of-epoch count. `compute_loss` pops it and passes it to
  `record(keep=...)`. One process, or `dataloader_drop_last=True`: no mask, no cost.

Evaluation and prediction forwards are not logged. See docs/integrations/huggingface.md.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset
from transformers import Trainer, TrainerCallback
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from carto_cli.errors import OptionError
from carto_cli.integrations.distributed import sharding_of
from carto_cli.log import schema
from carto_cli.log.shim import LOG_DIR_ENV, RUN_ID_ENV, CartoLogger

ID_KEY = "__carto_sample_id__"  # reserved batch key: the sample ids on their way to compute_loss
KEEP_KEY = "__carto_keep__"  # reserved batch key: (B,) bool numpy, False for the rows that are padding repeats
DEFAULT_SUBDIR = "carto_logs"  # under args.output_dir when neither carto_log_dir nor $CARTO_LOG_DIR is given
_CAUSAL_LM_CLASSES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


# ------------------------------------------------------------------ ids through the data pipeline


def sample_id_of(item: Any, index: int | None) -> int:
    """The item's `sample_id` column when it has one, else its dataset index."""
    if isinstance(item, Mapping) and schema.SAMPLE_ID in item:
        value = item[schema.SAMPLE_ID]
        try:
            if isinstance(value, bool):
                raise TypeError
            return operator.index(value)  # ints, numpy and 0-d torch integers; not floats or strings
        except TypeError:
            raise OptionError(
                f"CartoTrainer: the training dataset's `{schema.SAMPLE_ID}` column must hold integers, got "
                f"{value!r}; map it to integers or drop the column (ids are then the dataset indices)"
            ) from None
    if index is None:
        raise OptionError(
            "CartoTrainer: an iterable training dataset has no indices; give every item an integer "
            f"`{schema.SAMPLE_ID}` column"
        )
    return int(index)


def with_id(item: Any, sample_id: int) -> Any:
    """A copy of a dict-like item with the id under ID_KEY (the item itself is left alone)."""
    if isinstance(item, dict):
        return {**item, ID_KEY: sample_id}
    if isinstance(item, MutableMapping):  # e.g. a BatchEncoding
        copy = type(item)(item)
        copy[ID_KEY] = sample_id
        return copy
    raise OptionError(
        f"CartoTrainer: training items must be dicts of model inputs (the Trainer's convention), got "
        f"{type(item).__name__}; return dicts such as {{'input_ids': ..., 'labels': ...}} from the dataset"
    )


class SampleIdDataset(Dataset):
    """Map-style dataset whose item `i` is `dataset[i]` plus its sample id under ID_KEY."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        return with_id(item, sample_id_of(item, index))


class SampleIdIterableDataset(IterableDataset):
    """Iterable dataset whose items carry their `sample_id` column under ID_KEY (there is no index)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __iter__(self):
        for item in self.dataset:
            yield with_id(item, sample_id_of(item, None))

    def set_epoch(self, epoch: int) -> None:  # datasets.IterableDataset reshuffles per epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def indexed(dataset: Any) -> SampleIdDataset | SampleIdIterableDataset:
    if isinstance(dataset, (SampleIdDataset, SampleIdIterableDataset)):
        return dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return SampleIdIterableDataset(dataset)
    return SampleIdDataset(dataset)


class IdCollator:
    """Takes the ids out of the features, runs the wrapped collator, puts them on the batch (B,) int64."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, features: list[Any]) -> Any:
        ids = []
        stripped = []
        for feature in features:
            feature = type(feature)(feature)  # not the caller's object
            ids.append(feature.pop(ID_KEY))
            stripped.append(feature)
        batch = self.collator(stripped)
        batch[ID_KEY] = torch.tensor(ids, dtype=torch.int64)
        return batch


# ------------------------------------------------------------------ what a forward returned


def _field(outputs: Any, name: str) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def _is_fused(outputs: Any) -> bool:
    """A fused-LM-head output (TRL's FusedCausalLMOutput): per-token log-probs instead of logits."""
    return all(_field(outputs, name) is not None for name in ("log_probs", "label_mask"))


def fused_columns(outputs: Any, tail_k: int) -> dict[str, Any]:
    """Per-sample loss, token accuracy, tail loss and token count from per-token `log_probs`,
    `is_top1` and `label_mask` (B, T), with the definitions of `CartoLogger.record(logits=...)`."""
    is_top1 = _field(outputs, "is_top1")
    if is_top1 is None:
        raise OptionError(
            "CartoTrainer: the model's fused LM head returns no `is_top1`, so token accuracy is unknown; "
            "add the head with outputs=(..., 'is_top1') or train without it"
        )
    with torch.no_grad():
        valid = _field(outputs, "label_mask").bool()  # (B, T)
        tok_loss = (-_field(outputs, "log_probs").detach().float()).masked_fill(~valid, 0.0)  # (B, T)
        n_tok = valid.sum(dim=1)
        n = n_tok.float()
        k = min(tail_k, tok_loss.shape[1])
        return {
            "loss": tok_loss.sum(dim=1) / n,  # NaN where no target, as with logits
            "token_acc": (is_top1.bool() & valid).sum(dim=1).float() / n,
            "tail_loss": tok_loss.topk(k, dim=1).values.sum(dim=1) / n.clamp(max=k),
            "n_tokens": n_tok.int(),
        }


def _batch_mismatch(what: str, rows: int, samples: int) -> OptionError:
    return OptionError(
        f"CartoTrainer: the model's {what} have {rows} rows but the batch has {samples} samples; carto logs "
        "one row per sample, so packing (TRL packing=True, padding_free) and DataCollatorWithFlattening, "
        "which put several samples in one row, cannot be logged: turn them off"
    )


# ------------------------------------------------------------------ the repeats that pad an epoch (several processes)


def dispatched_keep(rank: int, rows: int, *, last: bool, remainder: int) -> np.ndarray:
    """(rows,) bool for a batch that Accelerate's `DataLoaderDispatcher` gives rank `rank`: False for
    the padding repeats.

    Rank 0 loads each round (one batch per rank, or one whole batch with `split_batches`) and rank r
    gets rows `[r*rows, (r+1)*rows)` of it. When the epoch's last round has `remainder` rows and that
    does not divide among the ranks, the dispatcher first appends the first rows of the epoch: in the
    last batch (`last`, the loader's `end_of_dataloader`, `remainder` its `remainder`) the rows at
    positions >= remainder are repeats. Every other batch is kept whole.
    """
    if not last:
        return np.ones(rows, dtype=bool)
    return rank * rows + np.arange(rows) < remainder


def padding_rule(loader: Any) -> Callable[[int, int], np.ndarray] | None:
    """How to tell the padding repeats in the batches of one iteration of `loader`: the training loader
    the Trainer iterates (Accelerate's prepared loader, or its `skip_first_batches` copy on a resume).

    None when the loader repeats nothing (one process, `drop_last`, `even_batches=False`). Else a
    function of (the batch's 0-based index in this iteration, its rows) -> (rows,) bool numpy, False
    for the repeats: the rule of `carto_cli.integrations.distributed` (skipped batches counted), or for
    the dispatcher (iterable datasets) `dispatched_keep`, which reads the loader's end-of-epoch state
    and so must be called right after the batch is fetched. Loaders that repeat samples carto cannot
    tell apart are one-line errors.
    """
    if type(loader).__name__ == "DataLoaderDispatcher":
        rank = int(loader.state.process_index)
        return lambda index, rows: dispatched_keep(rank, rows, last=bool(loader.end_of_dataloader),
                                                   remainder=int(loader.remainder))
    dataset = getattr(loader, "dataset", None)
    if _is_iterable_shard(dataset) and dataset.num_processes > 1 and not dataset.drop_last:
        raise OptionError(
            "CartoTrainer: an iterable training dataset sharded on every process (accelerator_config "
            "dispatch_batches=False) completes its last batches with repeats carto cannot tell apart; keep "
            "dispatch_batches at its default, set dataloader_drop_last=True, or use a map-style dataset"
        )
    for batch_sampler in _batch_samplers(loader):
        if _pads_rebalanced_tail(batch_sampler):
            tail, groups = batch_sampler.remainder, batch_sampler.dp_size * batch_sampler.grad_accum
            raise OptionError(
                f"CartoTrainer: train_sampling_strategy='batch_rebalance' fills the epoch's last {tail} samples up "
                f"to {groups} with repeats that carto cannot tell apart once sorted by length; set "
                "dataloader_drop_last=True or another train_sampling_strategy"
            )
    sharding = sharding_of(loader)
    if sharding.kind == "none":
        return None
    return lambda index, rows: sharding.keep(index, rows).numpy()


def _is_iterable_shard(dataset: Any) -> bool:
    """Accelerate's `IterableDatasetShard`, recognised by its attributes."""
    return all(hasattr(dataset, a) for a in ("dataset", "num_processes", "process_index", "drop_last", "split_batches"))


def _batch_samplers(loader: Any) -> Iterator[Any]:
    """The loader's batch sampler and those it wraps (Accelerate's SkipBatchSampler, BatchSamplerShard)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    for _ in range(8):
        if batch_sampler is None:
            return
        yield batch_sampler
        batch_sampler = getattr(batch_sampler, "batch_sampler", None)


def _pads_rebalanced_tail(batch_sampler: Any) -> bool:
    """transformers' `BatchRebalanceSampler` with drop_last=False repeats samples when the epoch's tail
    has fewer samples than (rank, micro-batch) groups."""
    if not all(hasattr(batch_sampler, a) for a in ("has_tail", "remainder", "dp_size", "grad_accum")):
        return False
    return bool(batch_sampler.has_tail) and batch_sampler.remainder < batch_sampler.dp_size * batch_sampler.grad_accum


def _carries_ids(loader: Any) -> bool:
    """Whether `loader` iterates the training dataset CartoTrainer wrapped (directly or sharded)."""
    dataset = getattr(loader, "dataset", None)
    if _is_iterable_shard(dataset):
        dataset = dataset.dataset
    return isinstance(dataset, (SampleIdDataset, SampleIdIterableDataset))


class PaddingMasks:
    """One epoch's iterator of training batches, as the Trainer fetches them, each with its keep mask.

    Counts the batches (their index in this iteration of the loader, whatever the gradient
    accumulation) and puts `rule(index, rows)` on every batch that carries sample ids, under
    KEEP_KEY; no mask when the loader repeats nothing. The loader is found when the first batch is
    fetched: Accelerate registers the loader it iterates in `gradient_state.active_dataloader`.
    """

    def __init__(self, iterator: Iterator[Any], gradient_state: Any, processes: int) -> None:
        self.iterator = iterator
        self.gradient_state = gradient_state
        self.processes = processes
        self.index = 0  # batches fetched so far in this iteration
        self.rule: Callable[[int, int], np.ndarray] | None = None
        self.found = False

    def __iter__(self) -> PaddingMasks:
        return self

    def __next__(self) -> Any:
        batch = next(self.iterator)
        if isinstance(batch, MutableMapping) and ID_KEY in batch:
            if not self.found:
                self.rule = padding_rule(self._loader())
                self.found = True
            if self.rule is not None:
                batch[KEEP_KEY] = self.rule(self.index, int(batch[ID_KEY].shape[0]))
        self.index += 1
        return batch

    def _loader(self) -> Any:
        loader = self.gradient_state.active_dataloader
        if not _carries_ids(loader):
            raise OptionError(
                f"CartoTrainer: with {self.processes} processes carto leaves out the repeats that pad the epoch, "
                "found from the DataLoader that Accelerate prepares in get_train_dataloader, but the training "
                "batches come from another loader; return the Trainer's loader or set dataloader_drop_last=True"
            )
        return loader


# ------------------------------------------------------------------ the Trainer side


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
            the model's class is a causal LM in transformers' auto mapping.
    """

    def __init__(
        self,
        *args: Any,
        carto_logger: CartoLogger | None = None,
        carto_log_dir: str | os.PathLike[str] | None = None,
        carto_shift_labels: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if carto_logger is not None and carto_log_dir is not None:
            raise OptionError(
                "CartoTrainer: pass carto_logger= or carto_log_dir=, not both (the logger has its own directory)"
            )
        super().__init__(*args, **kwargs)
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
        self._carto_causal = False  # whether the hooked model is a causal LM (labels shifted by one)
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
        self.train_dataset, self.data_collator = indexed(dataset), IdCollator(collator)
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
        self._carto_record(model, ids, labels, captured, step=step, epoch=epoch, keep=keep)
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
        self._carto_causal = self._carto_is_causal_lm(model)

    def _carto_is_causal_lm(self, model: Any) -> bool:
        if self.carto_shift_labels is not None:
            return self.carto_shift_labels
        inner = self.accelerator.unwrap_model(model)
        if hasattr(inner, "get_base_model"):  # PEFT
            inner = inner.get_base_model()
        return type(inner).__name__ in _CAUSAL_LM_CLASSES

    def _carto_record(self, model: Any, ids: Any, labels: Any, captured: list[Any], *, step: int, epoch: int,
                      keep: Any = None) -> None:
        samples = int(ids.shape[0])
        with_logits = [o for o in captured if _field(o, "logits") is not None]
        fused = [o for o in captured if _is_fused(o)]
        if with_logits:
            logits = _field(with_logits[0], "logits")
            if labels is None:
                raise OptionError(
                    "CartoTrainer: the training batch has no `labels`; carto scores each sample against "
                    "its labels: have the collator set them (DataCollatorForLanguageModeling(mlm=False) does)"
                )
            if logits.shape[0] != samples:
                raise _batch_mismatch("logits", int(logits.shape[0]), samples)
            if labels.is_floating_point():
                raise OptionError("CartoTrainer: regression labels (floats) have no per-sample correctness; "
                                  "carto logs classification and language-model training")
            if logits.dim() == 2 and labels.dim() == 1:  # sequence classification: one "token" per sample
                logits, labels = logits[:, None], labels[:, None]
            elif self._carto_causal:
                logits, labels = logits[:, :-1], labels[:, 1:]  # (B, T-1, V): position t predicts label t+1
            self.carto_logger.record(ids, epoch=epoch, step=step, logits=logits, labels=labels, keep=keep)
        elif fused:
            columns = fused_columns(fused[0], self.carto_logger.tail_k)
            if int(columns["loss"].shape[0]) != samples:
                raise _batch_mismatch("per-token log-probs", int(columns["loss"].shape[0]), samples)
            self.carto_logger.record(ids, epoch=epoch, step=step, keep=keep, **columns)
        else:
            raise OptionError(
                "CartoTrainer: the model's forward returned no `logits` (nor a fused LM head's log_probs); "
                "carto needs them: return a ModelOutput with logits and turn off fused losses that skip "
                "them (e.g. use_liger_kernel)"
            )


class CartoTrainer(CartoTrainerMixin, Trainer):
    """`transformers.Trainer` that logs every training presentation with carto (see the module docstring).

    Takes the Trainer's arguments plus `carto_logger=`, `carto_log_dir=` and `carto_shift_labels=`
    (`CartoTrainerMixin`).
    """
