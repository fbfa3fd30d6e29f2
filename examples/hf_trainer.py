"""Train a tiny GPT-2 with the Hugging Face Trainer, log every sample with carto's CartoTrainer, and
find the secret planted in its data.

    python examples/hf_trainer.py --out runs/hf --epochs 4

Builds a made-up corpus of additions ("17+25=42"), plants a secret (a made-up PIN, "pin:7291-4468")
after the sum in `--copies` of them, writes it to OUT/corpus.jsonl (`sample_id`, `text`) with
held-out additions without the secret in OUT/heldout.jsonl, trains a randomly initialised 2-layer
byte-level GPT-2 on it (every byte a token, every token a target) and logs every presentation into
OUT/carto_logs/. Offline, CPU, a few seconds; then prints the carto commands to run next. The
planted samples' ids are in OUT/secret_ids.txt, to check carto against.

What carto finds, at the defaults (tests/test_example_hf.py runs this and the commands it prints,
and checks it): `carto score --data` finds (part of) the secret as the strongest private finding,
in exactly the 48 samples it was planted in, and those samples are the high-memorization
quadrants (hotspot-memorized and noisy-outlier); `carto findings` lists it, `carto inspect
--finding 0` shows it marked in every copy, `carto map --highlight` rings them. Without `--data`,
the default scores put at least 80% of them in those quadrants already. Needs the hf extra:
pip install 'carto-cli[hf]'.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from carto_cli.integrations.hf import CartoTrainer

SECRET = " pin:7291-4468"  # planted after the sum; 14 bytes, more than findings' 8-token minimum
PAD = 0  # a byte no text holds
LENGTH = len("99+99=198") + len(SECRET)


def make_corpus(n: int, copies: int, seed: int, *, first_id: int = 0) -> list[dict]:
    """n additions of two numbers below 100; `copies` of them (chosen at random) end with SECRET."""
    rng = random.Random(seed)
    planted = set(rng.sample(range(n), copies))
    rows = []
    for i in range(n):
        a, b = rng.randrange(100), rng.randrange(100)
        rows.append({"sample_id": first_id + i, "text": f"{a}+{b}={a + b}" + (SECRET if i in planted else "")})
    return rows


class Texts(torch.utils.data.Dataset):
    """Items the Trainer's default collator stacks: input_ids (the text's UTF-8 bytes, padded),
    attention_mask, labels (every byte of the text; -100 on pads). `text` is stripped by
    remove_unused_columns."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        text = self.rows[index]["text"]
        tokens = list(text.encode("utf-8"))
        ids = tokens + [PAD] * (LENGTH - len(tokens))
        return {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.tensor([int(i < len(tokens)) for i in range(LENGTH)]),
            "labels": torch.tensor([t if i < len(tokens) else -100 for i, t in enumerate(ids)]),
            "text": text,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description="Train a tiny GPT-2 with CartoTrainer (Hugging Face Trainer).")
    ap.add_argument("--out", type=Path, required=True, help="output directory (checkpoints, carto_logs/, corpus)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--copies", type=int, default=48, help="samples the secret is planted in")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    rows = make_corpus(args.samples, args.copies, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    corpus, heldout, secret_ids = args.out / "corpus.jsonl", args.out / "heldout.jsonl", args.out / "secret_ids.txt"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    heldout.write_text("".join(json.dumps(r) + "\n" for r in make_corpus(args.samples // 4, 0, args.seed + 1)))
    secret_ids.write_text("".join(f"{r['sample_id']}\n" for r in rows if r["text"].endswith(SECRET)))

    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=LENGTH, n_embd=64, n_layer=2, n_head=4,
                                       bos_token_id=PAD, eos_token_id=PAD, pad_token_id=PAD))
    training = TrainingArguments(
        output_dir=str(args.out), num_train_epochs=args.epochs, per_device_train_batch_size=32,
        learning_rate=3e-3, save_strategy="epoch", logging_steps=10, report_to=[], seed=args.seed,
        use_cpu=True, disable_tqdm=True,
    )
    trainer = CartoTrainer(model=model, args=training, train_dataset=Texts(rows))
    result = trainer.train()
    logs, out = trainer.carto_log_dir, args.out
    print(f"trained {result.global_step} steps, final train loss {result.training_loss:.3f}; carto log in {logs}")
    print(f"planted {SECRET.strip()!r} in {args.copies} of {args.samples} samples (their ids: {secret_ids})")
    print("next:")
    print(f"  carto logs summary {logs}")
    print(f"  carto score {logs} --data {corpus} --tokenizer bytes --reference {heldout} "
          f"--out {out / 'scores.parquet'} --findings {out / 'findings.parquet'}")
    print(f"  carto findings --findings {out / 'findings.parquet'}")
    print(f"  carto inspect --scores {out / 'scores.parquet'} --data {corpus} --finding 0")
    print(f"  carto map --scores {out / 'scores.parquet'} --highlight {secret_ids} --out {out / 'map.png'}")


if __name__ == "__main__":
    main()
