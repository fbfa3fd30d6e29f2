"""The shim's Triton kernels (imported only where Triton is installed; `carto_cli.log.fused` says
when each is used, launches it and falls back to PyTorch ops).

- `token_stats_kernel`: one program per (sample, position) reads that row of logits once, in its
  own dtype, keeping in fp32 registers a running maximum and a rescaled sum of exponentials (the
  log-sum-exp an fp32 log-softmax computes, in another summation order), the first index of the
  largest logit (as `torch.argmax`) and the target's logit.
- `sketch_kernel`: one program per sample holds its row of per-token losses and hits in registers
  and writes the memorization sketch of `carto_cli.log.sketch` (the K largest losses with their
  positions, the R longest runs of greedy hits), positions relative to the row's first target
  (`sketch.sketch`).
"""

import triton
import triton.language as tl


@triton.jit
def token_stats_kernel(logits, labels, loss_out, hit_out, n_vocab, row_stride, ignore_index,
                       BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = logits + row.to(tl.int64) * row_stride
    label = tl.load(labels + row)
    running_max = tl.full((), float("-inf"), tl.float32)
    running_sum = tl.full((), 0.0, tl.float32)
    best = tl.full((), float("-inf"), tl.float32)
    best_index = tl.full((), 0, tl.int64)
    for start in range(0, n_vocab, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        x = tl.load(base + offsets, mask=offsets < n_vocab, other=float("-inf")).to(tl.float32)
        block_max = tl.max(x, axis=0)
        block_index = tl.argmax(x, axis=0).to(tl.int64) + start
        best_index = tl.where(block_max > best, block_index, best_index)  # ties: the first
        best = tl.maximum(best, block_max)
        new_max = tl.maximum(running_max, block_max)
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        running_max = new_max
    has_target = label != ignore_index
    # a label outside [0, V) would make cross_entropy fail; here it must not read out of bounds
    target = tl.minimum(tl.maximum(tl.where(has_target, label, 0), 0), n_vocab - 1)
    target_logit = tl.load(base + target).to(tl.float32)
    loss = running_max + tl.log(running_sum) - target_logit
    tl.store(loss_out + row, tl.where(has_target, loss, 0.0))
    tl.store(hit_out + row, (has_target & (best_index == label)).to(tl.uint8))


@triton.jit
def _larger(a, b):  # the combine function of a cumulative maximum
    return tl.maximum(a, b)


@triton.jit
def sketch_kernel(loss, hit, valid, top_pos_out, top_loss_out, runs_out, T,
                  K: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = row.to(tl.int64) * T
    offsets = tl.arange(0, BLOCK)
    inside = offsets < T
    ok = tl.load(valid + base + offsets, mask=inside, other=0) != 0
    # positions are logged relative to the first target (BLOCK where there is none: nothing is found)
    first = tl.min(tl.where(ok, offsets, BLOCK), axis=0)
    # the K largest losses at valid positions, largest first; equal losses: the earlier first
    x = tl.where(ok, tl.load(loss + base + offsets, mask=inside, other=0.0), float("-inf"))
    for i in tl.static_range(K):
        top = tl.max(x, axis=0)
        at = tl.min(tl.where(x == top, offsets, BLOCK), axis=0)  # the first position holding it
        found = top > float("-inf")
        tl.store(top_pos_out + row * K + i, tl.where(found, at - first, 0).to(tl.int32))
        tl.store(top_loss_out + row * K + i, tl.where(found, top, float("nan")).to(tl.float16))
        x = tl.where(offsets == at, float("-inf"), x)
    # runs of greedy hits at valid positions: a run ending at t starts after the last non-hit
    h = ok & (tl.load(hit + base + offsets, mask=inside, other=0) != 0)
    after = offsets + 1
    h_next = ((tl.load(valid + base + after, mask=after < T, other=0) != 0)
              & (tl.load(hit + base + after, mask=after < T, other=0) != 0))
    last_break = tl.associative_scan(tl.where(h, -1, offsets), 0, _larger)
    ends = tl.where(h & ~h_next, offsets - last_break, 0).to(tl.int64)  # a run's length at its end
    # the R longest, longest first, the earlier run on ties: the largest length * (T + 1) - end
    key = ends * (T + 1) - offsets
    for j in tl.static_range(R):
        best = tl.max(key, axis=0)
        at = tl.min(tl.where(key == best, offsets, BLOCK), axis=0)
        length = tl.sum(tl.where(offsets == at, ends, 0), axis=0)
        start = tl.where(length > 0, at - length + 1 - first, 0)
        tl.store(runs_out + row * (2 * R) + 2 * j, start.to(tl.int32))
        tl.store(runs_out + row * (2 * R) + 2 * j + 1, length.to(tl.int32))
        taken = offsets == at
        key = tl.where(taken, -(BLOCK + 1), key)  # below every other key
        ends = tl.where(taken, 0, ends)  # taken again only when R exceeds BLOCK: then (0, 0)
