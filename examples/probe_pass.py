"""Single-pass training with probe passes: what carto measures when no sample comes back.

    python examples/probe_pass.py --out runs/probe
    carto score runs/probe/_probe --early-epochs 2 --out probe_scores.parquet

A tiny GPT (about 15k parameters, random weights) reads a generated token stream once: every
training sample is presented once, so its own log has nothing between presentations to measure.
Every `--every` steps a `ProbePass` runs the model, without gradients and in eval mode, over a
fixed probe set of 24 samples and logs them as one pass (`epoch` = pass index) in
`runs/probe/_probe`, beside the training log in `runs/probe` (which does not read it).

The stream is text of a random Markov chain (a skill the model learns). Some of its samples carry
a secret, 8 random tokens in the middle; as web corpora hide duplicated documents, 8 secret-carrying
samples occur `--copies` times each, under different sample ids. The probe set holds one id of each
repeated sample, 8 secret-carrying samples the stream holds once, and 8 it never holds (a held-out
control). What the model memorizes is the repeated ones: their probe loss ends lowest. About 5 s of
CPU (one thread).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from carto_cli import CartoLogger
from carto_cli.experiment.tinygpt import GPT, GPTConfig
from carto_cli.log.probe import ProbePass, probe_dir

VOCAB, LENGTH = 32, 33  # tokens per sample: 32 inputs, 32 targets
GROUPS = ("repeated", "once", "held out")
PER_GROUP = 8
SECRET = slice(12, 20)  # the positions of a secret's random key


def markov_text(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, LENGTH) token ids: each token follows one of two successors of the previous one."""
    successors = torch.randint(VOCAB, (VOCAB, 2), generator=torch.Generator().manual_seed(7))
    x = torch.empty(n, LENGTH, dtype=torch.long)
    x[:, 0] = torch.randint(VOCAB, (n,), generator=g)
    for t in range(1, LENGTH):
        x[:, t] = successors[x[:, t - 1], torch.randint(2, (n,), generator=g)]
    return x


def make_stream(steps: int, batch: int, copies: int, seed: int
                ) -> tuple[torch.Tensor, dict[str, list[int]], torch.Tensor]:
    """The training stream (steps * batch samples, sample id = position), the probe groups' ids, and
    the held-out probe samples' tokens (not in the stream; their ids follow the stream's)."""
    g = torch.Generator().manual_seed(seed)
    n = steps * batch
    stream = markov_text(n, g)
    secrets = markov_text(3 * PER_GROUP, g)  # Markov text with a random key in its middle
    secrets[:, SECRET] = torch.randint(VOCAB, (3 * PER_GROUP, SECRET.stop - SECRET.start), generator=g)
    repeated, once, held_out = secrets.split(PER_GROUP)
    slots = torch.randperm(n, generator=g)[: PER_GROUP * (copies + 1)].tolist()
    groups: dict[str, list[int]] = {"repeated": [], "once": [], "held out": list(range(n, n + PER_GROUP))}
    for i in range(PER_GROUP):
        copies_at = sorted(slots[i * copies:(i + 1) * copies])
        stream[copies_at] = repeated[i]
        groups["repeated"].append(copies_at[0])  # the probe follows one copy's id
        at = slots[PER_GROUP * copies + i]
        stream[at] = once[i]
        groups["once"].append(at)
    return stream, groups, held_out


def main() -> None:
    ap = argparse.ArgumentParser(description="Single-pass training of a tiny GPT with carto probe passes.")
    ap.add_argument("--out", type=Path, default=Path("runs/probe"), help="the training log directory")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--every", type=int, default=20, help="steps between probe passes")
    ap.add_argument("--copies", type=int, default=20, help="occurrences of each repeated string")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.every < 1 or args.copies < 1 or PER_GROUP * (args.copies + 1) > args.steps * args.batch:
        ap.error("--every and --copies must be >= 1, and the stream (--steps x --batch) hold 8 x (copies + 1) samples")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    stream, groups, held_out = make_stream(args.steps, args.batch, args.copies, args.seed)
    probe_ids = [i for name in GROUPS for i in groups[name]]
    probe_x = torch.cat([stream[groups["repeated"] + groups["once"]], held_out])  # (24, LENGTH)
    probe_batches = [(torch.tensor(probe_ids), probe_x[:, :-1], probe_x[:, 1:])]  # one batch: (ids, inputs, labels)

    model = GPT(GPTConfig(block_size=LENGTH - 1, vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=32, dropout=0.1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with CartoLogger(args.out) as log, ProbePass(probe_ids, probe_batches, every_steps=args.every,
                                                  out_dir=probe_dir(args.out)) as probe:
        for step in range(args.steps):
            probe.maybe_run(model, step)  # steps 0, every, 2 * every, ...: the model after `step` updates
            ids = torch.arange(step * args.batch, (step + 1) * args.batch)
            x = stream[ids]  # (B, LENGTH)
            logits = model(x[:, :-1])  # (B, T, V)
            log.record(ids, epoch=0, step=step, logits=logits, labels=x[:, 1:])
            loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        probe.maybe_run(model, args.steps)  # the final model (when steps is a multiple of every)

    passes = probe.passes
    print(f"trained {args.steps} steps on {len(stream):,} samples, each once; final train loss {loss.item():.3f}")
    print(f"probe: {len(passes)} passes (steps {passes[0][1]}..{passes[-1][1]}) over {len(probe_ids)} samples "
          f"in {probe_dir(args.out)}")
    with torch.no_grad():
        model.eval()
        final = F.cross_entropy(model(probe_x[:, :-1]).transpose(1, 2), probe_x[:, 1:], reduction="none").mean(1)
    for k, name in enumerate(GROUPS):
        print(f"  {name:>8}: mean probe loss at the end {final[k * PER_GROUP:(k + 1) * PER_GROUP].mean():.3f}")
    print("next:")
    print(f"  carto logs summary {probe_dir(args.out)}")
    print(f"  carto score {probe_dir(args.out)} --early-epochs 2 --out probe_scores.parquet")
    print(f"  carto inspect --scores probe_scores.parquet --quadrant hotspot-memorized   "
          f"# repeated ids: {groups['repeated']}")


if __name__ == "__main__":
    main()
