"""Train a tiny GPT-2 with the Hugging Face Trainer and log every sample with carto's CartoTrainer.

    python examples/hf_trainer.py --out runs/hf --epochs 4

Builds a made-up corpus of additions ("17+25=42"), a tenth of them with a wrong answer (noise the
model can only memorize), writes it to OUT/corpus.jsonl (with `sample_id` and `text`, for `carto
inspect --data`), trains a randomly initialised 2-layer GPT-2 on it for a few epochs and logs every
presentation into OUT/carto_logs/. Offline, CPU, a few seconds; then prints the carto commands to
run next. Needs the hf extra: pip install 'carto-cli[hf]'.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from carto_cli.integrations.hf import CartoTrainer

VOCAB = "0123456789+= "  # ' ' pads; a character is its index
PAD = VOCAB.index(" ")
LENGTH = 9  # "99+99=198" at most


def make_corpus(n: int, noise: float, seed: int) -> list[dict]:
    """n additions of two numbers below 100; a `noise` share of them with a wrong sum."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randrange(100), rng.randrange(100)
        noisy = rng.random() < noise
        total = rng.randrange(199) if noisy else a + b
        rows.append({"sample_id": i, "text": f"{a}+{b}={total}", "noisy": noisy})
    return rows


class Additions(torch.utils.data.Dataset):
    """Items the Trainer's default collator stacks: input_ids, attention_mask, labels (-100 on pads
    and on the question, so the loss is the answer's). `text` is stripped by remove_unused_columns."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        text = self.rows[index]["text"]
        ids = [VOCAB.index(c) for c in text] + [PAD] * (LENGTH - len(text))
        answer_from = text.index("=") + 1
        labels = [t if answer_from <= i < len(text) else -100 for i, t in enumerate(ids)]
        return {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.tensor([int(i < len(text)) for i in range(LENGTH)]),
            "labels": torch.tensor(labels),
            "text": text,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description="Train a tiny GPT-2 with CartoTrainer (Hugging Face Trainer).")
    ap.add_argument("--out", type=Path, required=True, help="output directory (checkpoints, carto_logs/, corpus)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--noise", type=float, default=0.1, help="share of samples with a wrong sum")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    rows = make_corpus(args.samples, args.noise, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.out / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(VOCAB), n_positions=LENGTH, n_embd=64, n_layer=2, n_head=4,
                                       bos_token_id=PAD, eos_token_id=PAD, pad_token_id=PAD))
    training = TrainingArguments(
        output_dir=str(args.out), num_train_epochs=args.epochs, per_device_train_batch_size=32,
        learning_rate=3e-3, save_strategy="epoch", logging_steps=10, report_to=[], seed=args.seed,
        use_cpu=True, disable_tqdm=True,
    )
    trainer = CartoTrainer(model=model, args=training, train_dataset=Additions(rows))
    result = trainer.train()
    logs = trainer.carto_log_dir
    print(f"trained {result.global_step} steps, final train loss {result.training_loss:.3f}; carto log in {logs}")
    print("next:")
    print(f"  carto logs summary {logs}")
    print(f"  carto score {logs} --out {args.out / 'scores.parquet'}")
    print(f"  carto map --scores {args.out / 'scores.parquet'} --out {args.out / 'map.png'}")
    print(f"  carto inspect --scores {args.out / 'scores.parquet'} --data {corpus} --quadrant noisy-outlier")


if __name__ == "__main__":
    main()
