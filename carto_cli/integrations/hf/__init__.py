"""Hugging Face Trainer integration: every training presentation logged from the forward the Trainer already runs.

    from carto_cli.integrations.hf import CartoTrainer

    trainer = CartoTrainer(model=model, args=TrainingArguments("out"), train_dataset=train)
    trainer.train()                         # parts in out/carto_logs/ ($CARTO_LOG_DIR when set)

or, with a Trainer subclass of your own (TRL's `SFTTrainer`, say), put the mixin first:

    class MySFTTrainer(CartoTrainerMixin, SFTTrainer): ...

What is logged, and how it gets there (one module each):
- **Sample ids** (`ids`): the training dataset is wrapped so that each item carries its id (the
  item's `sample_id` column, else its index in the dataset you passed, through torch Subsets such
  as `kept_subset` to the dataset they were cut from), under a reserved key that the column removal
  keeps and a collator wrapper moves onto the batch. The sampler is built on the unwrapped dataset,
  so the Trainer draws the same order as without carto.
- **Per-sample values, no second forward** (`trainer`, `outputs`): a forward hook on the model
  captures the outputs of the forward `compute_loss` runs (whatever the Trainer subclass does
  inside it); the logits (B, T, V) and the batch's labels go to `CartoLogger.record`. Sequence
  classification (logits (B, C), labels (B,)) is logged as one-token sequences. A model with a
  fused LM head (TRL's `SFTTrainer` since 1.x: per-token log-probs, no logits) is logged from those,
  without the memorization sketch.
- **The label shift** (`shift`): whether logits[:, t] scores labels[:, t + 1] (causal LMs, VLMs) or
  labels[:, t] (seq2seq, masked LMs), decided at the first logged batch from the model's own loss,
  else its class; `carto_shift_labels=` overrides it.
- **Steps and epochs** (`trainer`): `step` is `state.global_step` when the forward runs (the 0-based
  index of the optimizer step being taken; every micro-batch of a gradient-accumulation group has
  the same step; `checkpoint-S` holds steps 0..S-1); `epoch` the Trainer's epoch loop variable.
- **Checkpoints and attempts** (`trainer`): the logger is flushed before every checkpoint is written;
  each `train()` call opens its own `CartoLogger`, one attempt of the run, so the reader drops the
  rows a resume replays (`carto_cli.io.replays`). A `carto_logger` you pass in is yours: flushed
  before checkpoints and when `train()` ends, never closed by the Trainer.
- **Padding repeats** (`padding`): with several processes, the samples Accelerate repeats to even
  out the ranks are masked, not logged.

Evaluation and prediction forwards are not logged. See docs/integrations/huggingface.md.
"""

from carto_cli.integrations.hf.ids import (
    ID_KEY,
    KEEP_KEY,
    IdCollator,
    SampleIdDataset,
    SampleIdIterableDataset,
    indexed,
    sample_id_of,
    with_id,
)
from carto_cli.integrations.hf.outputs import fused_columns
from carto_cli.integrations.hf.padding import PaddingMasks, dispatched_keep, padding_rule
from carto_cli.integrations.hf.shift import LabelShiftWarning, class_shifts
from carto_cli.integrations.hf.trainer import DEFAULT_SUBDIR, CartoTrainer, CartoTrainerMixin

__all__ = [
    "DEFAULT_SUBDIR",
    "ID_KEY",
    "KEEP_KEY",
    "CartoTrainer",
    "CartoTrainerMixin",
    "IdCollator",
    "LabelShiftWarning",
    "PaddingMasks",
    "SampleIdDataset",
    "SampleIdIterableDataset",
    "class_shifts",
    "dispatched_keep",
    "fused_columns",
    "indexed",
    "padding_rule",
    "sample_id_of",
    "with_id",
]
