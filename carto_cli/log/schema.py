"""The log contract: what a training log part is. Written once; the shim writes it, the reader checks it.

A log is a directory (or list) of Parquet files, one file per finished *part*, many parts per run,
one writer per data-parallel rank. Each row is one *presentation* of one training sample:

| column      | type                      | required | meaning                                                  |
|-------------|---------------------------|----------|----------------------------------------------------------|
| sample_id   | int64 or uint64 (any int) | yes      | stable id of the training sample (its index in the data) |
| epoch       | integer                   | yes      | 0-based pass index over the data                         |
| step        | integer                   | yes      | global optimizer step at which the sample was presented  |
| loss        | float                     | yes      | mean token negative log-likelihood of the sample (nats)  |
| correct     | bool                      | yes      | whether the sample counted as learned at this presentation|
| token_acc   | float                     | no       | share of target tokens the greedy prediction got right   |
| tail_loss   | float                     | no       | mean of the k largest token losses of the sample (nats)  |
| n_tokens    | integer                   | no       | number of target (non-ignored) tokens                    |
| rank        | integer                   | no       | data-parallel rank of the writer                         |
| token_loss  | list of float             | no       | per-position token losses (nats), NaN where no target    |
| top_pos     | list of integer (k)       | no       | positions of the k largest token losses, largest first;  |
|             |                           |          | from the first target (below), as are hit_runs' starts   |
| top_loss    | list of float (k)         | no       | those losses (nats); NaN pads a sample with < k targets  |
| hit_runs    | list of integer (2r)      | no       | start, length of the r longest runs of greedy hits       |

`token_loss` is written only when asked for (`CartoLogger(token_losses=...)`): it costs 2 bytes
(float16) per position per presentation before compression, so it suits small runs or a probe
subset of samples; `carto score --memorization token-drop` reads it. The sketch columns
(`top_pos`, `top_loss`, `hit_runs`; `carto_cli.log.sketch`) are written by default from logits:
64 bytes per presentation before compression whatever the sequence length, read by the default
memorization signal (`extractable`).

Other columns are allowed and ignored. A part is written under a temporary name (hidden, ending in
`.tmp`) and renamed when complete, so a reader never sees a half-written part and ignores temporary
names. Run metadata is stored in the Parquet key-value metadata under the keys in `META_*`.

Sketch positions (`top_pos`, the starts in `hit_runs`) and the index into `token_loss` written from
logits: in a part whose metadata says `carto.positions` = `first-target` (every part the shim
writes), a position is relative to the
sample's first target position in its row, the first position whose label is not `ignore_index`
(for a packed document, the document's first target): logged p = row position - first target,
whatever the padding side and length and any masked prompt before the first target. A sample with
no target logs the padding values (0). A part without the key holds row positions: older logs (the
shim before the key existed) and other writers unless they say otherwise. Readers need nothing of
it to score: positions are only compared within one sample. A log that mixes the two (a run resumed
after upgrading carto) compares both kinds within a sample; they agree where each row's first
target is its position 0 (unpadded or right-padded rows without a masked prompt).

`carto.label_shift`, when present (`CartoLogger(label_shift=)`), maps logged positions back to the
dataset: logged target position j of a sample is the dataset row's token (first target index + j),
where, for a row with no masked prompt, the first target is token `label_shift` of the row (1 for a
causal LM whose labels are its inputs, shifted inside the model; 0 when the dataset row holds the
targets themselves).
"""

from __future__ import annotations

import pyarrow as pa

SAMPLE_ID = "sample_id"
EPOCH = "epoch"
STEP = "step"
LOSS = "loss"
CORRECT = "correct"
TOKEN_ACC = "token_acc"
TAIL_LOSS = "tail_loss"
N_TOKENS = "n_tokens"
RANK = "rank"
TOKEN_LOSS = "token_loss"
# The memorization sketch (`carto_cli.log.sketch`): fixed-size lists, whatever the sequence length.
TOP_POS = "top_pos"
TOP_LOSS = "top_loss"
HIT_RUNS = "hit_runs"
SKETCH_COLUMNS = (TOP_POS, TOP_LOSS, HIT_RUNS)

REQUIRED_COLUMNS = (SAMPLE_ID, EPOCH, STEP, LOSS, CORRECT)
OPTIONAL_COLUMNS = (TOKEN_ACC, TAIL_LOSS, N_TOKENS, RANK, TOKEN_LOSS, TOP_POS, TOP_LOSS, HIT_RUNS)

# The schema the shim writes. Readers accept any integer width for the integer columns and any
# float width for the float columns (see `column_kind`).
LOG_SCHEMA = pa.schema(
    [
        pa.field(SAMPLE_ID, pa.int64(), nullable=False),
        pa.field(EPOCH, pa.int32(), nullable=False),
        pa.field(STEP, pa.int64(), nullable=False),
        pa.field(LOSS, pa.float32(), nullable=False),
        pa.field(CORRECT, pa.bool_(), nullable=False),
        pa.field(TOKEN_ACC, pa.float32()),
        pa.field(TAIL_LOSS, pa.float32()),
        pa.field(N_TOKENS, pa.int32()),
        pa.field(RANK, pa.int32()),
        pa.field(TOKEN_LOSS, pa.list_(pa.float16())),
        pa.field(TOP_POS, pa.list_(pa.uint16())),  # uint32 in parts whose sequences reach 65,536
        pa.field(TOP_LOSS, pa.list_(pa.float16())),
        pa.field(HIT_RUNS, pa.list_(pa.uint16())),
    ]
)

# What kind of Arrow type each known column must have on read.
COLUMN_KINDS = {
    SAMPLE_ID: "integer",
    EPOCH: "integer",
    STEP: "integer",
    LOSS: "float",
    CORRECT: "bool",
    TOKEN_ACC: "float",
    TAIL_LOSS: "float",
    N_TOKENS: "integer",
    RANK: "integer",
    TOKEN_LOSS: "float_list",
    TOP_POS: "integer_list",
    TOP_LOSS: "float_list",
    HIT_RUNS: "integer_list",
}

# Parquet key-value metadata written by the shim (all values are strings).
META_PREFIX = "carto."
META_VERSION = "carto.version"
META_RANK = "carto.rank"
META_WORLD_SIZE = "carto.world_size"
META_RUN_ID = "carto.run_id"  # the training run, stable across ranks and restarts
META_ATTEMPT = "carto.attempt"  # one logger instance (one process) of the run
META_ATTEMPT_STARTED = "carto.attempt_started_ns"  # orders the attempts of a run
META_WRITTEN = "carto.written_ns"  # when the part was written: an attempt lives until its last part
META_STARTED = "carto.started_at"
META_CORRECT_RULE = "carto.correct_rule"
META_TAIL_K = "carto.tail_k"
META_SKETCH = "carto.sketch"  # "k=10,runs=6", or "off"
META_POSITIONS = "carto.positions"  # how sketch positions count; absent: row positions (older parts)
POSITIONS_FIRST_TARGET = "first-target"  # relative to the sample's first target position
META_LABEL_SHIFT = "carto.label_shift"  # the dataset row's token of the first target when nothing is masked

PART_SUFFIX = ".parquet"
TMP_SUFFIX = ".tmp"


def is_temporary_name(name: str) -> bool:
    """True for names a reader must skip: hidden files and unfinished (`.tmp`) parts."""
    return name.startswith(".") or name.startswith("_") or name.endswith(TMP_SUFFIX)


def column_kind(dtype: pa.DataType) -> str | None:
    """Classify an Arrow type as 'integer', 'float', 'bool', 'float_list' or 'integer_list' (None
    for anything else)."""
    if pa.types.is_integer(dtype):
        return "integer"
    if pa.types.is_floating(dtype):
        return "float"
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        if pa.types.is_floating(dtype.value_type):
            return "float_list"
        if pa.types.is_integer(dtype.value_type):
            return "integer_list"
    return None
