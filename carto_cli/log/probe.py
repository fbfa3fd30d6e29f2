"""Probe passes: a periodic no-grad pass over a fixed probe subset, for training that sees each sample once.

    from carto_cli.log.probe import ProbePass, probe_dir

    probe = ProbePass(probe_ids, probe_batches, every_steps=500, out_dir=probe_dir("logs/"))
    for step, (ids, x, y) in enumerate(stream):          # single pass: no sample comes back
        probe.maybe_run(model, step)                      # at steps 0, 500, 1000, ...: no grad, eval mode
        ...train on (x, y)...
    probe.maybe_run(model, total_steps)                   # the final model, when total_steps % 500 == 0
    probe.close()

    carto score logs/_probe --early-epochs 2              # the probe samples, scored over passes

Why: carto measures a sample by what happens between its presentations (a forget event, a loss
that drops, a span that becomes extractable). In single-pass pretraining a training sample is
presented once, so there is nothing in between. A probe pass presents the same fixed subset again
and again, without training on it (Toneva et al. 2019 record accuracy "at every presentation";
Tirumala et al. 2022 and Biderman et al. 2023 track memorization of fixed sets over checkpoints).
Each pass is logged as one epoch of its own log: `epoch` = the pass index, `step` = the training
step at which the pass ran, so every scorer applies unchanged (difficulty = mean loss over the
first K passes, forget events and the extractable signal across passes).

What a pass does, and what it leaves alone:
- It runs when `step % every_steps == 0`, at most once per step value (a Lightning callback sees one
  global step in several micro-batches under gradient accumulation), with pass index
  `step // every_steps`: a function of the step, so a run resumed from a checkpoint at step S logs
  the same pass indices it would have logged, and its probe rows at steps >= S supersede the
  crashed attempt's (the replay rule of `carto_cli.io.replays`: each `ProbePass` is one attempt).
- Under `torch.no_grad()` with every module in eval mode (dropout off, batch-norm statistics
  frozen); each module's own training flag is restored afterwards, so a submodule the user froze in
  eval mode stays so. Parameters, buffers and `.grad` are not touched.
- The RNG state of torch (CPU, and the model's accelerator) is saved before the pass and restored
  after it: a probe `DataLoader` draws its base seed from torch's generator on every iteration, and
  a model may draw in eval mode too. With and without probing, training sees the same random
  numbers (`tests/test_probe.py` checks bit-identical parameters and losses).
- Its rows go through a `CartoLogger` of their own, in a directory of their own (by default
  `<training log dir>/_probe`: names starting with `_` are skipped when the training log is read,
  so `carto score logs/` scores the training rows only and `carto score logs/_probe` the probe's).
  One part per pass, written off the training thread.
- Each pass must present every probe sample exactly once (an id outside the probe set, or twice,
  is an error before it is logged; a missing one is an error at the end of the pass).

Ranks: `ranks="zero"` (default) probes on rank 0 only; the other ranks return at once (and wait for
rank 0 at their next collective). That suits data parallelism, where every rank holds the whole
model: a `DistributedDataParallel` wrapper is unwrapped (its forward may broadcast buffers, a
collective the other ranks would never join). When the forward itself is collective (FSDP,
DeepSpeed ZeRO-3, tensor or pipeline parallelism) use `ranks="all"`: every rank runs the same
probe batches, rank 0 logs. Each rank probing a shard of the probe set is not offered: a probe set
is small next to the training between two passes, and a sharded pass would need the sharding and
padding rules of `carto_cli.integrations.distributed` on the probe loader.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from carto_cli.errors import CartoError, OptionError, require_torch
from carto_cli.log.shim import LOG_DIR_ENV, CartoLogger, _resolve_rank

PROBE_DIR = "_probe"  # under the training log directory; `_` keeps it out of the training log's reads
RANKS = ("zero", "all")

Forward = Callable[[Any, Any], Any]


def probe_dir(log_dir: str | os.PathLike[str]) -> Path:
    """The default probe directory of a training log directory: `<log_dir>/_probe`."""
    return Path(log_dir) / PROBE_DIR


def default_forward(model: Any, inputs: Any) -> Any:
    """`model(**inputs)` for a mapping (a tokenizer's batch), else `model(inputs)`."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def logits_of(output: Any) -> Any:
    """The logits of a forward's output: the output itself, or its `.logits` (a Hugging Face output)."""
    logits = getattr(output, "logits", None)
    return output if logits is None else logits


def _to_device(value: Any, device: Any) -> Any:
    """Move a tensor, or the tensors of a mapping, list or tuple, to `device`; leave the rest as is."""
    if hasattr(value, "to") and hasattr(value, "device"):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _ids_array(ids: Any) -> np.ndarray:
    """A batch's sample ids as a 1-D int64 array on the host."""
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    return np.asarray(ids).reshape(-1).astype(np.int64)


class ProbePass:
    """A periodic no-grad pass over a fixed probe subset, logged as its own pass index.

    Args:
        probe_ids: the probe subset's sample ids (ints, a numpy array or a tensor); not empty, no repeats.
        batches: what a pass iterates: a function returning an iterable of `(ids, inputs, labels)`
            batches, or a re-iterable (a list, a `DataLoader` without shuffling or `drop_last`).
            `ids` (B,), `labels` (B, T) with -100 where there is no target, `inputs` whatever
            `forward` takes.
        every_steps: a pass runs at every step that is a multiple of this (step 0 included).
        out_dir: the probe log's directory; defaults to `$CARTO_LOG_DIR/_probe` (see `probe_dir`).
        logger: instead of `out_dir`, a `CartoLogger` of your own for the probe rows (never the
            training logger: the probe's epochs are pass indices); you close it.
        run_id: the probe log's run id (`CartoLogger(run_id=)`); by default the logger's own default.
        forward: `(model, inputs) -> logits`, or an output with `.logits`; default `model(inputs)`
            (`model(**inputs)` for a mapping).
        shift: the logits are a causal LM's over the whole sequence (position t predicts t + 1, as a
            Hugging Face model's `labels=input_ids`): log `logits[:, :-1]` against `labels[:, 1:]`.
        ranks: `"zero"` (rank 0 probes and logs) or `"all"` (every rank runs the pass, rank 0 logs).
        rank: this process's rank; defaults to `torch.distributed`, then `$RANK`, then 0.
        token_losses: log per-token losses of the probe samples too (`carto score --memorization
            token-drop`); on by default, a probe set being small.
    """

    def __init__(
        self,
        probe_ids: Iterable[int] | Any,
        batches: Callable[[], Iterable[Any]] | Iterable[Any],
        *,
        every_steps: int,
        out_dir: str | os.PathLike[str] | None = None,
        logger: CartoLogger | None = None,
        run_id: str | None = None,
        forward: Forward | None = None,
        shift: bool = False,
        ranks: str = "zero",
        rank: int | None = None,
        token_losses: bool = True,
    ) -> None:
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1:
            raise OptionError(f"ProbePass: every_steps must be an int >= 1 (got {every_steps!r}); "
                              "a pass runs at every step that is a multiple of it")
        ids = _ids_array(list(probe_ids) if not hasattr(probe_ids, "shape") else probe_ids)
        if len(ids) == 0:
            raise OptionError("ProbePass: probe_ids is empty; pass the ids of the fixed probe subset "
                              "(for example a few thousand training samples)")
        unique = np.unique(ids)
        if len(unique) != len(ids):
            raise OptionError(f"ProbePass: probe_ids repeats {len(ids) - len(unique)} id(s); "
                              "give each probe sample once")
        if not callable(batches) and iter(batches) is batches:
            raise OptionError("ProbePass: batches is an iterator, which the second pass would find empty; "
                              "pass a list, a DataLoader or a function returning an iterable")
        if ranks not in RANKS:
            raise OptionError(f"ProbePass: ranks must be 'zero' or 'all' (got {ranks!r})")
        if out_dir is not None and logger is not None:
            raise OptionError("ProbePass: pass out_dir= or logger=, not both")
        self.probe_ids = unique
        self.batches = batches
        self.every_steps = every_steps
        self.forward = default_forward if forward is None else forward
        self.shift = shift
        self.ranks = ranks
        self.rank, _ = _resolve_rank(rank)
        self.passes: list[tuple[int, int]] = []  # (pass index, step) of the passes this attempt ran
        self._last_step: int | None = None
        self._owns_logger = False
        self.logger: CartoLogger | None = None
        if self.rank != 0:
            return  # only rank 0 logs: no directory, no writer thread elsewhere
        if logger is not None:
            self.logger = logger
            return
        if out_dir is None:
            parent = os.environ.get(LOG_DIR_ENV)
            if not parent:
                raise OptionError(f"ProbePass: no out_dir given and ${LOG_DIR_ENV} is not set; "
                                  "pass out_dir= (for example probe_dir(training_log_dir)) or logger=")
            out_dir = probe_dir(parent)
        # one part per pass, rotated by the writer thread: no flush (and no wait) in the training loop
        self.logger = CartoLogger(out_dir, rank=self.rank, rows_per_part=len(unique), run_id=run_id,
                                  token_losses=token_losses)
        self._owns_logger = True

    # ------------------------------------------------------------------ the training-loop side

    def due(self, step: int) -> bool:
        """Whether `maybe_run` would run a pass at `step` on this rank."""
        if step % self.every_steps or step == self._last_step:
            return False
        return self.ranks == "all" or self.rank == 0

    def maybe_run(self, model: Any, step: int, *, forward: Forward | None = None) -> bool:
        """Run a probe pass if `step` (the number of optimizer steps done) is due; True when it ran.

        The pass index logged as `epoch` is `step // every_steps`. `forward` overrides the
        constructor's for this call.
        """
        step = int(step)
        if step < 0:
            raise OptionError(f"ProbePass.maybe_run: step must be >= 0 (got {step})")
        if not self.due(step):
            return False
        self._last_step = step
        self._run(model, step, forward or self.forward)
        self.passes.append((step // self.every_steps, step))
        return True

    def flush(self) -> None:
        """Block until every probe row so far is in a finished part on disk."""
        if self.logger is not None:
            self.logger.flush()

    def close(self) -> None:
        """Flush and stop the probe logger (when this object made it). Idempotent."""
        if self.logger is not None and self._owns_logger:
            self.logger.close()
        elif self.logger is not None:
            self.logger.flush()

    def __enter__(self) -> ProbePass:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ one pass

    def _run(self, model: Any, step: int, forward: Forward) -> None:
        torch = require_torch()
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module  # a replica of the whole model; its forward may be collective
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if device.type == "cpu":
            rng = torch.random.fork_rng(devices=[])
        else:  # the model's accelerator too (forking every visible device would cost each a state copy)
            index = device.index if device.index is not None else getattr(torch, device.type).current_device()
            rng = torch.random.fork_rng(devices=[index], device_type=device.type)
        modes = [(m, m.training) for m in model.modules()]
        epoch = step // self.every_steps
        seen: set[int] = set()
        try:
            model.eval()
            with rng, torch.no_grad():
                for batch in self._iterate():
                    ids, inputs, labels = self._unpack(batch, step)
                    host_ids = _ids_array(ids)
                    self._check_ids(host_ids, seen, step)
                    logits = logits_of(forward(model, _to_device(inputs, device)))  # (B, T, V)
                    if self.shift:
                        logits, labels = logits[:, :-1], labels[:, 1:]
                    if self.logger is not None:
                        self.logger.record(host_ids, epoch=epoch, step=step, logits=logits, labels=labels)
        finally:
            for module, training in modes:
                module.training = training
        if len(seen) != len(self.probe_ids):
            missing = np.setdiff1d(self.probe_ids, np.fromiter(seen, np.int64, len(seen)))
            raise CartoError(f"probe pass at step {step}: batches did not present {len(missing)} of the "
                             f"{len(self.probe_ids)} probe samples (first: {int(missing[0])}); they must "
                             "present each probe sample once per pass (no drop_last, no sampling)")

    def _iterate(self) -> Iterator[Any]:
        return iter(self.batches() if callable(self.batches) else self.batches)

    @staticmethod
    def _unpack(batch: Any, step: int) -> tuple[Any, Any, Any]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 3:
            raise CartoError(f"probe pass at step {step}: batches must yield (ids, inputs, labels) "
                             f"triples; got {type(batch).__name__}"
                             f"{f' of {len(batch)}' if isinstance(batch, (tuple, list)) else ''}")
        return batch[0], batch[1], batch[2]

    def _check_ids(self, ids: np.ndarray, seen: set[int], step: int) -> None:
        """Each probe id once per pass, and nothing else: checked before the batch is logged."""
        outside = ids[~np.isin(ids, self.probe_ids)]
        if len(outside):
            raise CartoError(f"probe pass at step {step}: batches presented sample {int(outside[0])}, "
                             "which is not in probe_ids; they must present the probe samples only")
        before = len(seen)
        seen.update(ids.tolist())
        if len(seen) - before != len(ids):
            raise CartoError(f"probe pass at step {step}: batches presented a probe sample twice in one "
                             "pass; they must present each probe sample once per pass (no shuffling with "
                             "replacement, no padding)")
