"""The logging shim: record every training sample's loss and correctness into Parquet parts.

    from carto_cli import CartoLogger

    step = 0                                      # the global optimizer step: never reset
    with CartoLogger("logs/") as log:            # or CartoLogger() with $CARTO_LOG_DIR set
        for epoch in range(epochs):
            for ids, x, y in loader:
                logits = model(x)                 # (B, T, V), logits[:, t] scores y[:, t]
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
                log.record(ids, epoch=epoch, step=step, logits=logits, labels=y)
                ...
                step += 1

`step` is the global step and never goes back within one logger (`record` refuses a step below
the last one): the last presentation of a sample, and which rows a resumed run replayed, are told
by it. A step counter that restarts every epoch (`for step, batch in enumerate(loader)`) would make
both wrong. Several `record`s at one step (gradient accumulation) are fine. The rank, unless given,
is resolved again at the first `record`, where the logger also claims it: one writer per
(directory, run, rank) at a time (`carto_cli.log.attempt`).

What `record` does, and what it costs the training loop:
- With `logits` (B, T, V) and `labels` (B, T) it computes, per sample and on the logits' device,
  the mean token loss, the greedy token accuracy, the number of target tokens and the *tail loss*
  (mean of the `tail_k` largest token losses). On CUDA with Triton, one kernel reads the logits
  once in their own dtype (`carto_cli.log.fused`); otherwise they are upcast to fp32 in chunks of
  samples (`chunk_bytes` at a time), never all at once.
- The per-sample results (a few (B,) tensors) are copied device -> pinned host memory with
  `non_blocking=True`; a background thread waits for the copy, converts and writes. `record`
  never synchronises host and device.
- The queue between the loop and the writer thread holds at most `max_pending` batches; when it is
  full `record` waits (back-pressure) instead of letting memory grow.
- Rows go into a part file once `rows_per_part` rows are buffered, and on `flush()`. A part is
  written under a hidden `.tmp` name, fsynced and renamed, so a reader only ever sees whole parts.
  A SIGKILL loses at most the rows recorded since the last flush or part rotation.

The memorization sketch (on by default, `carto_cli.log.sketch`): from the same per-token losses and
greedy hits, the positions and losses of the 10 largest token losses and the 6 longest runs of greedy
hits, 64 bytes per presentation whatever the sequence length, positions counted from the sample's
first target (so padding of any side and length, and a masked prompt, do not move them). `carto
score` ranks memorization by it by default (`--memorization extractable`).

Per-token losses (`token_losses=True`, or a collection of sample ids: a probe subset) add the
`token_loss` list column, float16 with NaN where there is no target: 2 bytes per position per
presentation before compression, and one more (B, T) float16 device -> host copy per `record`.
`carto score --memorization token-drop` ranks samples by them.

The default correctness rule (`correct` not given): greedy token accuracy >= `correct_threshold`
(0.5), i.e. the model, fed the true prefix, predicts at least half of the sample's target tokens.
`carto score --correct-from loss|tail|acc` can re-derive correctness from the logged columns.
"""

from __future__ import annotations

import atexit
import os
import socket
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from carto_cli.errors import CartoError, OptionError, require_torch
from carto_cli.log import fused, packed, schema, sketch, writer
from carto_cli.log.attempt import RUN_ID_ENV, Claim, default_run_id, new_attempt  # noqa: F401 (RUN_ID_ENV: re-exported)
from carto_cli.version import __version__

LOG_DIR_ENV = "CARTO_LOG_DIR"
DEFAULT_TAIL_K = 8
DEFAULT_CORRECT_THRESHOLD = 0.5


_INT64_MAX = np.iinfo(np.int64).max


def _checked_ids(torch: Any, ids: Any) -> Any:
    """`sample_ids` as given, refused now (not when a part is written, perhaps hours later) when they
    cannot be the log's int64 sample_id column: floats, booleans, strings, ids above 2^63 - 1.
    Only dtypes are checked on an accelerator (reading values there would wait for the device)."""
    fix = "pass integer ids (a dataset index, or your ids mapped to int64)"
    if torch.is_tensor(ids):
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise OptionError(f"CartoLogger.record: sample_ids must be integers; got a {ids.dtype} tensor: {fix}")
        wide_unsigned = ids.dtype in {getattr(torch, name, None) for name in ("uint32", "uint64")}
        if wide_unsigned and (ids.device.type != "cpu" or (ids.numel() and int(ids.max()) > _INT64_MAX)):
            raise OptionError(f"CartoLogger.record: sample_ids of {ids.dtype} may not fit the log's int64 "
                              f"sample_id; {fix}")
        return ids
    array = np.asarray(ids)
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise OptionError(f"CartoLogger.record: sample_ids must be integers; got {array.dtype} values such as "
                          f"{array.flat[0]!r}: {fix}")
    if array.dtype.kind == "u" and int(array.max()) > _INT64_MAX:
        raise OptionError(f"CartoLogger.record: sample_id {int(array.max())} is above 2^63 - 1, the largest the "
                          "log's int64 sample_id holds; map such ids to int64 (for example, subtract 2^63)")
    return array


def _resolve_rank(rank: int | None) -> tuple[int, int]:
    """(rank, world_size): explicit rank, else torch.distributed when initialised, else $RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if rank is not None:
        return rank, world
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", "0")), world


class CartoLogger:
    """Per-sample training-dynamics logger writing the carto log contract (see `carto_cli.log.schema`).

    Args:
        out_dir: directory for the parts; defaults to `$CARTO_LOG_DIR` (set by `carto log`).
        rank: data-parallel rank of this writer; defaults to torch.distributed, then `$RANK`, then 0,
            resolved again at the first `record` (torch.distributed may be initialised by then).
            One writer per (out_dir, run_id, rank) at a time: a second one is refused at its first
            `record` (`carto_cli.log.attempt`).
        rows_per_part: rotate to a new part file after this many rows.
        max_pending: batches that may wait for the writer thread before `record` blocks.
        tail_k: how many of the largest token losses make the tail loss.
        correct_threshold: token-accuracy threshold of the default correctness rule.
        ignore_index: label value that marks a position with no target (as in cross_entropy).
        chunk_bytes: upper bound on the fp32 logits materialised at once by the logits path.
        buckets: write the bucketed layout, `bucket=<sample_id mod buckets>/part-...` (see
            `carto_cli.engines.ray`), so that scoring can work one bucket at a time.
        token_losses: also log each sample's per-position token losses (`token_loss`): True for
            every sample, or a collection of sample ids to log them for (others get null).
        run_id: a stable name of the training run, the same for every rank and every restart of
            it (`carto score` combines several runs as seeds and drops the replays of a restart);
            defaults to `$CARTO_RUN_ID`, else to the log directory's name and a hash of its
            resolved path. Each logger instance is one *attempt* of its run (`attempt`).
        sketch_k, sketch_runs: the memorization sketch logged from logits (`carto_cli.log.sketch`):
            the `sketch_k` largest token losses with their positions and the `sketch_runs` longest
            runs of greedy hits, positions relative to each sample's first target (so padding and
            a masked prompt do not move them); `sketch_k=0` turns it off (then `carto score` ranks
            by forget events).
        label_shift: where the first target sits in the dataset row when no prompt is masked: 1
            for a causal LM whose labels are its inputs (shifted inside the model), 0 when the
            row holds the targets themselves; None (default): not declared. Written in each part
            (`carto.label_shift`) so that a logged position can be mapped back to a dataset token
            (`carto_cli.log.schema`). A public attribute, read when each part is written: an
            integration that learns the shift at its first step sets `logger.label_shift` then.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str] | None = None,
        *,
        rank: int | None = None,
        rows_per_part: int = 1_000_000,
        max_pending: int = 256,
        tail_k: int = DEFAULT_TAIL_K,
        correct_threshold: float = DEFAULT_CORRECT_THRESHOLD,
        ignore_index: int = -100,
        chunk_bytes: int = 256 * 2**20,
        buckets: int | None = None,
        run_id: str | None = None,
        token_losses: bool | Collection[int] = False,
        sketch_k: int = sketch.DEFAULT_TOP_K,
        sketch_runs: int = sketch.DEFAULT_RUNS,
        label_shift: int | None = None,
    ) -> None:
        if out_dir is None:
            out_dir = os.environ.get(LOG_DIR_ENV)
            if not out_dir:
                raise OptionError(
                    f"CartoLogger: no out_dir given and ${LOG_DIR_ENV} is not set; "
                    "pass out_dir= or run under `carto log -- CMD`"
                )
        if rows_per_part < 1 or max_pending < 1 or tail_k < 1 or (buckets is not None and buckets < 1):
            raise OptionError("CartoLogger: rows_per_part, max_pending, tail_k and buckets must be >= 1")
        if sketch_k < 0 or sketch_runs < 0 or (sketch_k > 0) != (sketch_runs > 0):
            raise OptionError("CartoLogger: sketch_k and sketch_runs must both be >= 1, or both 0 (no sketch)")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rank, self.world_size = _resolve_rank(rank)
        self._rank_given = rank is not None
        self._claim: Claim | None = None  # taken at the first record, given up at close
        self.tail_k = tail_k
        self.sketch_k, self.sketch_runs = sketch_k, sketch_runs
        self.correct_threshold = correct_threshold
        self.ignore_index = ignore_index
        self.chunk_bytes = chunk_bytes
        self.buckets = buckets
        self.label_shift = label_shift
        # A probe subset (any iterable of ids, a numpy array too), sorted for np.isin in the writer
        # thread; None: every sample.
        self._token_probe = None if isinstance(token_losses, bool) else np.unique(np.fromiter(token_losses, np.int64))
        self.token_losses = token_losses if self._token_probe is None else len(self._token_probe) > 0
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.run_id = default_run_id(self.out_dir) if run_id is None else str(run_id)
        if not self.run_id or "\n" in self.run_id:
            raise OptionError("CartoLogger: run_id must be a non-empty single-line string")
        # The attempt: this process's share of the run, ordered against other attempts of the run by
        # its start time in nanoseconds, set again at the first record (see `carto_cli.io.replays`).
        self.attempt, self.attempt_started_ns = new_attempt()
        self._correct_rule = f"token_acc>={correct_threshold}"
        self._last_step: int | None = None  # the step of the last record: steps never go back
        self._closed = False
        self._writer = writer.PartWriter(self.out_dir, rows_per_part=rows_per_part, max_pending=max_pending,
                                         buckets=buckets, token_probe=self._token_probe, describe=self._describe)
        atexit.register(self.close)

    @property
    def label_shift(self) -> int | None:
        """The declared label shift written in each part from now on (None: not declared)."""
        return self._label_shift

    @label_shift.setter
    def label_shift(self, value: int | None) -> None:
        # checked here, in the caller's thread: the writer thread reads it at each part
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0):
            raise OptionError(f"CartoLogger: label_shift must be None or an integer >= 0; got {value!r}")
        self._label_shift = None if value is None else int(value)

    @property
    def parts_written(self) -> list[Path]:
        """The part files written so far (with `buckets`, one per bucket present in each part)."""
        return self._writer.parts_written

    @property
    def rows_written(self) -> int:
        return self._writer.rows_written

    # ------------------------------------------------------------------ the training-loop side

    def record(
        self,
        sample_ids: Any,
        *,
        epoch: int,
        step: int,
        logits: Any = None,
        labels: Any = None,
        loss: Any = None,
        correct: Any = None,
        token_acc: Any = None,
        tail_loss: Any = None,
        n_tokens: Any = None,
        token_loss: Any = None,
        keep: Any = None,
        segment_ids: Any = None,
        max_docs_per_row: int = packed.DEFAULT_MAX_DOCS,
    ) -> None:
        """Record one presentation of each sample in a batch.

        Either `logits` (B, T, V) with `labels` (B, T), from which every column is computed, or
        precomputed per-sample `loss` (B,) with `correct` (B,) (or `token_acc`, from which the
        default rule derives `correct`), logged as given, with optional per-token losses
        `token_loss` (B, T) (NaN where no target). `epoch` and `step` are Python ints.
        `step` never goes back within one logger (a global step, not one that restarts each epoch).
        `keep` (B,) bool: rows where it is False are not logged (for example the duplicates a
        distributed sampler pads the last batch with); applied by the writer thread, so the mask
        may stay on the device.
        Packed rows (`carto_cli.log.packed`): `segment_ids` (B, T) gives the sample id of the
        document each position's label belongs to (negative: none); each document of a row is
        logged as one presentation, `sample_ids` must be None, `keep` masks whole rows, and a row
        may hold at most `max_docs_per_row` documents (more fails at the next call).
        """
        self._raise_if_failed()
        if self._closed:
            raise CartoError("CartoLogger.record called after close()")
        epoch, step = int(epoch), int(step)
        self._check_step(step)
        if self._claim is None:
            self._claim_rank()
        torch = require_torch()
        if (logits is None) == (loss is None):
            raise OptionError("CartoLogger.record: pass either logits= and labels=, or loss=")
        if segment_ids is not None:
            columns = self._from_packed(torch, sample_ids, logits, labels, segment_ids, keep, max_docs_per_row)
            rule = self._correct_rule
        elif logits is not None:
            if labels is None:
                raise OptionError("CartoLogger.record: logits= needs labels= (B, T)")
            columns = self._from_logits(torch, logits, labels)
            rule = self._correct_rule
        else:
            columns, rule = self._from_values(torch, loss, correct, token_acc, tail_loss, n_tokens)
            if token_loss is not None:
                if not self.token_losses:
                    raise OptionError("CartoLogger.record: token_loss= needs CartoLogger(token_losses=True)")
                columns[schema.TOKEN_LOSS] = token_loss
        if segment_ids is None:
            columns[schema.SAMPLE_ID] = _checked_ids(torch, sample_ids)
            if keep is not None:
                columns[writer.KEEP] = keep
        n = None
        for name, value in columns.items():
            size = len(value) if not hasattr(value, "shape") else int(value.shape[0])
            if n is None:
                n = size
            elif size != n:
                raise OptionError(
                    f"CartoLogger.record: {name} has {size} rows but the batch has {n}; "
                    "every per-sample argument must have the same length"
                )
        self._writer.put(writer.to_host(torch, epoch, step, rule, columns))
        self._last_step = step

    def _claim_rank(self) -> None:
        """At the first record: the rank again (torch.distributed may be initialised by now, as under
        torch.multiprocessing.spawn with a logger built first), then this writer's claim on it."""
        if not self._rank_given:
            self.rank, self.world_size = _resolve_rank(None)
        self._claim = Claim(self.out_dir, self.run_id, self.rank, self.attempt)
        # the attempt's lifetime starts when it claims its rank: a logger built before another closed,
        # recording only after, follows it (`carto_cli.io.replays`)
        self.attempt_started_ns = time.time_ns()

    def _check_step(self, step: int) -> None:
        """Refuse a step below the last one recorded: with a counter that restarts every epoch, the
        last presentation of a sample would be the wrong row, and a resumed run's replays would
        drop every earlier epoch (`carto_cli.io.replays` compares steps)."""
        if self._last_step is not None and step < self._last_step:
            raise OptionError(
                f"CartoLogger.record: step {step} comes after step {self._last_step}; a step must never go "
                "back within one logger (a counter that restarts every epoch, like `for step, batch in "
                "enumerate(loader)`, does): pass a global step counter that keeps counting across epochs"
            )

    def flush(self) -> None:
        """Block until every row recorded so far is in a finished part on disk."""
        self._raise_if_failed()
        if self._closed:
            return
        self._writer.flush()
        self._raise_if_failed()

    def close(self) -> None:
        """Flush, stop the writer thread. Idempotent; also runs at interpreter exit."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._writer.stop()
            if self._claim is not None:
                self._claim.release()  # after the last part: another writer of this rank may start
            atexit.unregister(self.close)
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        self._writer.raise_if_failed()

    def __enter__(self) -> CartoLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ per-sample statistics

    def _from_logits(self, torch: Any, logits: Any, labels: Any) -> dict[str, Any]:
        """Per-sample loss, token accuracy, tail loss and token count, on the logits' device."""
        # Few kernels (each launch costs host time in every step): cross_entropy's own ignore_index
        # zeroes the losses of positions without a target, the three per-sample means are one
        # division of stacked sums, and a NaN mean (no target) is never >= the threshold.
        with torch.no_grad():
            tok_loss, tok_hit, valid = self._per_token(torch, logits, labels)
            T = valid.shape[1]
            k = min(self.tail_k, T)
            n_tok = valid.sum(dim=1)  # (B,)
            n = n_tok.float()
            # losses are >= 0 and 0 where there is no target, so the top k of a sample with fewer
            # than k targets are its targets plus zeros: the sums are those of its targets alone
            sums = torch.stack([tok_loss.sum(dim=1), (tok_hit & valid).sum(dim=1).float(),
                                tok_loss.topk(k, dim=1).values.sum(dim=1)])  # (3, B)
            means = sums / torch.stack([n, n, n.clamp(max=k)])  # 0/0 = NaN where no target
            loss, acc, tail = means.unbind(0)
            columns = {
                schema.LOSS: loss,
                schema.CORRECT: acc >= self.correct_threshold,
                schema.TOKEN_ACC: acc,
                schema.TAIL_LOSS: tail,
                schema.N_TOKENS: n_tok.int(),
            }
            if self.token_losses:
                # from the first target, as the sketch's positions: left padding does not move them
                columns[schema.TOKEN_LOSS] = sketch.from_first_target(torch, tok_loss, valid)
            if self.sketch_k:
                stats = fused.sketch_stats(torch, tok_loss, tok_hit, valid, self.sketch_k, self.sketch_runs)
                if stats is None:  # not CUDA, or no Triton: the PyTorch ops
                    stats = sketch.sketch(torch, tok_loss, tok_hit, valid, self.sketch_k, self.sketch_runs)
                columns[schema.TOP_POS], columns[schema.TOP_LOSS], columns[schema.HIT_RUNS] = stats
        return columns

    def _per_token(self, torch: Any, logits: Any, labels: Any) -> tuple[Any, Any, Any]:
        """(loss, hit, valid), each (B, T) on the logits' device: token loss in fp32 (0 where no target),
        greedy hit, and whether the position has a target."""
        if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
            raise OptionError(
                f"CartoLogger.record: logits must be (B, T, V) and labels (B, T); got "
                f"{tuple(logits.shape)} and {tuple(labels.shape)}"
            )
        B, T, V = logits.shape
        with torch.no_grad():
            labels = labels.to(logits.device).long()
            valid = labels != self.ignore_index  # (B, T)
            rows = max(1, self.chunk_bytes // max(1, T * V * 4))
            fused_stats = fused.token_stats(torch, logits.detach(), labels, self.ignore_index)
            if fused_stats is not None:  # CUDA with Triton: one read of the logits, no fp32 copy
                tok_loss, tok_hit = fused_stats
            elif rows >= B:  # one chunk: no preallocation and copy
                tok_loss, tok_hit = self._token_stats(torch, logits, labels)
            else:
                tok_loss = torch.empty((B, T), dtype=torch.float32, device=logits.device)
                tok_hit = torch.empty((B, T), dtype=torch.bool, device=logits.device)
                for lo in range(0, B, rows):
                    hi = min(B, lo + rows)
                    tok_loss[lo:hi], tok_hit[lo:hi] = self._token_stats(torch, logits[lo:hi], labels[lo:hi])
        return tok_loss, tok_hit, valid

    def _from_packed(
        self, torch: Any, sample_ids: Any, logits: Any, labels: Any, segment_ids: Any, keep: Any, max_docs: int
    ) -> dict[str, Any]:
        """One slot per document of each packed row (`carto_cli.log.packed`), on the logits' device."""
        if sample_ids is not None:
            raise OptionError("CartoLogger.record: with segment_ids= the sample ids come from segment_ids; "
                              "pass None as sample_ids")
        if logits is None or labels is None:
            raise OptionError("CartoLogger.record: segment_ids= needs logits= (B, T, V) and labels= (B, T)")
        if self.token_losses:
            raise OptionError("CartoLogger.record: segment_ids= does not log per-token losses; "
                              "use CartoLogger(token_losses=False) for packed rows")
        tok_loss, tok_hit, valid = self._per_token(torch, logits, labels)
        with torch.no_grad():
            return packed.document_columns(
                torch, tok_loss, tok_hit, valid, torch.as_tensor(segment_ids), keep=keep, max_docs=max_docs,
                tail_k=self.tail_k, correct_threshold=self.correct_threshold, sketch_k=self.sketch_k,
                sketch_runs=self.sketch_runs)

    def _token_stats(self, torch: Any, logits: Any, labels: Any) -> tuple[Any, Any]:
        """Per-token loss (0 where no target) and greedy hit of (b, T, V) logits, upcast to fp32:
        the only fp32 copy of these logits."""
        b, T, V = logits.shape
        chunk = logits.detach().float()
        loss = torch.nn.functional.cross_entropy(
            chunk.reshape(-1, V), labels.reshape(-1), ignore_index=self.ignore_index, reduction="none"
        ).view(b, T)
        return loss, chunk.argmax(dim=-1) == labels

    def _from_values(
        self, torch: Any, loss: Any, correct: Any, token_acc: Any, tail_loss: Any, n_tokens: Any
    ) -> tuple[dict[str, Any], str]:
        columns = {schema.LOSS: loss}
        for name, value in (
            (schema.TOKEN_ACC, token_acc),
            (schema.TAIL_LOSS, tail_loss),
            (schema.N_TOKENS, n_tokens),
        ):
            if value is not None:
                columns[name] = value
        if correct is not None:
            columns[schema.CORRECT] = correct
            return columns, "given"
        if token_acc is None:
            raise OptionError(
                "CartoLogger.record: with loss= pass correct= (B,) bool, or token_acc= so the "
                f"default rule token_acc>={self.correct_threshold} can derive it"
            )
        acc = token_acc if torch.is_tensor(token_acc) else torch.as_tensor(token_acc)
        columns[schema.CORRECT] = acc >= self.correct_threshold
        return columns, self._correct_rule

    # ------------------------------------------------------------------ what each part says about itself

    def _describe(self) -> tuple[int, dict[str, str]]:
        """(rank, metadata) of the part the writer thread is about to write (`writer.Describe`)."""
        return self.rank, {
            schema.META_VERSION: __version__,
            schema.META_RANK: str(self.rank),
            schema.META_WORLD_SIZE: str(self.world_size),
            schema.META_RUN_ID: self.run_id,
            schema.META_ATTEMPT: self.attempt,
            schema.META_ATTEMPT_STARTED: str(self.attempt_started_ns),
            schema.META_STARTED: self.started_at,
            schema.META_TAIL_K: str(self.tail_k),
            schema.META_SKETCH: f"k={self.sketch_k},runs={self.sketch_runs}" if self.sketch_k else "off",
            schema.META_POSITIONS: schema.POSITIONS_FIRST_TARGET,
            **({} if self._label_shift is None else {schema.META_LABEL_SHIFT: str(self._label_shift)}),
            "carto.host": socket.gethostname(),
        }
