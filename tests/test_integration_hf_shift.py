"""CartoTrainer's label shift (carto_cli.integrations.hf.shift): decided from what the model computes.

Real tiny models built from configs (random weights, nothing downloaded) train for a few steps on
CPU; the rows logged at step 0 (the initial model, no dropout) are compared with per-sample losses
computed here from the model's own logits, shifted or not, and their token mean with the model's
own loss. What is checked:
- a user subclass of GPT2LMHeadModel and a Llava (image-text-to-text, not in the causal-LM mapping)
  are logged shifted, as their losses are; a T5 (seq2seq) stays unshifted;
- a model outside every transformers mapping is decided by its loss; under gradient accumulation
  the loss divided by the Trainer's `num_items_in_batch` is recognised;
- a loss that agrees with neither shift warns once, in one line, naming both values and
  `carto_shift_labels=`, and the class decides; an explicit `carto_shift_labels=` wins and warns
  when the model's loss says otherwise; no loss (label smoothing): the class decides;
- the check runs once per `train()`; the shift is set on a logger that records it (`label_shift`);
- the class rule alone (`class_shifts`): subclasses, image-text-to-text classes, encoder-decoders.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers", reason="the Trainer integration needs the hf extra")

import polars as pl  # noqa: E402
import torch  # noqa: E402
from test_integration_hf import Corpus, T, V, raw_rows, tiny_gpt, training_args  # noqa: E402
from transformers import (  # noqa: E402
    CLIPVisionConfig,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.modeling_outputs import CausalLMOutput  # noqa: E402

from carto_cli import CartoLogger  # noqa: E402
from carto_cli.integrations.hf import CartoTrainer, LabelShiftWarning, class_shifts  # noqa: E402
from carto_cli.integrations.hf import trainer as trainer_module  # noqa: E402
from carto_cli.integrations.hf.shift import RTOL, LossCheck, check_loss, decide  # noqa: E402


class MyGPT(GPT2LMHeadModel):
    """What users write: a subclass of a causal LM (its name is in no transformers mapping)."""


def my_gpt(seed: int = 0) -> MyGPT:
    torch.manual_seed(seed)
    return MyGPT(tiny_gpt(seed, dropout=0.0).config)


class PlusOne(GPT2LMHeadModel):
    """A causal LM whose loss is more than the token cross-entropy (as a MoE's auxiliary loss makes it)."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        if out.loss is not None:
            out.loss = out.loss + 1.0
        return out


class Outside(torch.nn.Module):
    """A causal LM that is not a transformers model at all: its class says nothing, its loss is shifted."""

    def __init__(self) -> None:
        super().__init__()
        self.gpt = tiny_gpt(dropout=0.0)

    def forward(self, input_ids, attention_mask=None, labels=None):
        logits = self.gpt(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
        return CausalLMOutput(loss=loss, logits=logits)


def per_sample(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Mean token loss of each sample, computed here independently of carto."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    token = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=-100,
                                              reduction="none")  # (B, T)
    return token.sum(1) / (labels != -100).sum(1)


def first_step(log_dir: Path) -> pl.DataFrame:
    return raw_rows(log_dir).filter(pl.col("step") == 0).sort("sample_id")


def batch_of(dataset, ids: list[int]) -> dict:
    items = [dataset[i] for i in ids]
    return {k: torch.stack([it[k] for it in items]) for k in items[0] if torch.is_tensor(items[0][k])}


def step0_matches(trainer: CartoTrainer, model: torch.nn.Module, dataset, shift: bool) -> None:
    """The rows logged at step 0 are the per-sample losses of the initial `model` on those samples
    with that shift, and their token mean is the model's own loss."""
    rows = first_step(trainer.carto_log_dir)
    batch = batch_of(dataset, rows["sample_id"].to_list())
    with torch.no_grad():
        out = model.eval()(**batch)
    expected = per_sample(out.logits, batch["labels"], shift)
    assert torch.allclose(torch.tensor(rows["loss"].to_list()), expected, atol=1e-5)
    token_mean = (rows["loss"] * rows["n_tokens"]).sum() / rows["n_tokens"].sum()
    assert token_mean == pytest.approx(out.loss.item(), rel=1e-5)


def train(tmp_path: Path, model, dataset=None, **kwargs) -> CartoTrainer:
    trainer = CartoTrainer(model=model, args=training_args(tmp_path / "out", **kwargs.pop("args", {})),
                           train_dataset=dataset if dataset is not None else Corpus(), **kwargs)
    trainer.train()
    return trainer


def shift_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, LabelShiftWarning)]


# ------------------------------------------------------------------ decided by the model's loss


def test_a_subclass_of_a_causal_lm_is_logged_shifted(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = train(tmp_path, my_gpt())
    step0_matches(trainer, my_gpt(), Corpus(), shift=True)
    assert trainer._carto_shift.source == "model loss" and not shift_warnings(record)


class Pictures(torch.utils.data.Dataset):
    """n samples for a Llava: an 8x8 image and 12 tokens, of which 4 are the image's placeholders
    (positions 1..4) and carry no label."""

    IMAGE_TOKEN = 63

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 60, (n, 12), generator=g)
        self.ids[:, 1:5] = self.IMAGE_TOKEN
        self.pixels = torch.randn(n, 3, 8, 8, generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        labels = self.ids[i].clone()
        labels[:5] = -100
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
                "pixel_values": self.pixels[i], "labels": labels}


def tiny_llava() -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=8, patch_size=4, projection_dim=16)  # 4 patches: 4 image tokens
    text = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=64, max_position_embeddings=32, pad_token_id=0)
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-1,
                                                     image_token_index=Pictures.IMAGE_TOKEN))


def test_a_vision_language_model_is_logged_shifted(tmp_path: Path) -> None:
    """Llava is in transformers' image-text-to-text mapping, not the causal-LM one: it was logged
    unshifted, against the wrong tokens."""
    trainer = train(tmp_path, tiny_llava(), Pictures(), args=dict(num_train_epochs=1))
    step0_matches(trainer, tiny_llava(), Pictures(), shift=True)
    assert trainer._carto_shift.source == "model loss"


def test_a_seq2seq_model_stays_unshifted(tmp_path: Path) -> None:
    """T5 scores its decoder's labels as given (it shifts them right into decoder_input_ids)."""
    def t5() -> T5ForConditionalGeneration:
        torch.manual_seed(0)
        return T5ForConditionalGeneration(T5Config(vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                   num_heads=2, decoder_start_token_id=0, pad_token_id=0,
                                                   dropout_rate=0.0))

    trainer = train(tmp_path, t5())
    step0_matches(trainer, t5(), Corpus(), shift=False)
    assert trainer._carto_shift.source == "model loss" and not trainer._carto_shift.shift


def test_a_model_outside_the_mappings_is_decided_by_its_loss(tmp_path: Path) -> None:
    trainer = train(tmp_path, Outside())
    assert not class_shifts(Outside())  # the class alone would log it unshifted
    step0_matches(trainer, Outside(), Corpus(), shift=True)
    assert trainer._carto_shift.source == "model loss"


def test_a_loss_divided_by_the_steps_targets_is_recognised(tmp_path: Path) -> None:
    """Batches of 2, 3 accumulated: the Trainer passes num_items_in_batch (the targets of the 3
    micro-batches) and the model divides its sum by it; the batch's own token mean is 3x larger."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = train(tmp_path, my_gpt(), args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=3))
    assert trainer.model_accepts_loss_kwargs
    assert trainer._carto_shift.source == "model loss" and trainer._carto_shift.shift
    assert not shift_warnings(record)


# ------------------------------------------------------------------ disagreement, explicit choice, no loss


def test_a_loss_that_agrees_with_neither_shift_warns_once_and_the_class_decides(tmp_path: Path) -> None:
    with pytest.warns(LabelShiftWarning) as record:
        trainer = train(tmp_path, PlusOne(tiny_gpt(dropout=0.0).config))
    messages = shift_warnings(record.list)
    assert len(messages) == 1 and "\n" not in messages[0]  # 6 steps, one warning
    assert "agrees with neither the shifted (" in messages[0] and "nor the unshifted (" in messages[0]
    assert ("logging shifted, as the model's class PlusOne suggests; pass carto_shift_labels=True or False"
            in messages[0])
    assert trainer._carto_shift.source == "model class" and trainer._carto_shift.shift


def test_an_explicit_choice_wins_and_warns_when_the_models_loss_disagrees(tmp_path: Path) -> None:
    with pytest.warns(LabelShiftWarning, match=r"carto_shift_labels=False but the model's loss [\d.]+ is the "
                                               r"shifted token-mean .*; logging unshifted as asked"):
        trainer = train(tmp_path / "a", tiny_gpt(dropout=0.0), carto_shift_labels=False)
    rows = first_step(trainer.carto_log_dir)
    batch = batch_of(Corpus(), rows["sample_id"].to_list())
    with torch.no_grad():
        logits = tiny_gpt(dropout=0.0).eval()(input_ids=batch["input_ids"]).logits
    assert torch.allclose(torch.tensor(rows["loss"].to_list()), per_sample(logits, batch["labels"], False), atol=1e-5)
    assert trainer._carto_shift.source == "carto_shift_labels"

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        agreeing = train(tmp_path / "b", PlusOne(tiny_gpt(dropout=0.0).config), carto_shift_labels=True)
    assert not shift_warnings(record) and agreeing._carto_shift.shift  # declared: no warning for a loss it can't read


def test_without_a_loss_from_the_model_its_class_decides(tmp_path: Path) -> None:
    """Label smoothing: the Trainer takes the labels away from the model, which returns no loss."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = train(tmp_path, tiny_gpt(dropout=0.0), args=dict(label_smoothing_factor=0.1))
    assert trainer._carto_shift.source == "model class" and trainer._carto_shift.shift
    assert not shift_warnings(record)
    step0_matches(trainer, tiny_gpt(dropout=0.0), Corpus(), shift=True)


def test_the_check_runs_once_per_train_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = trainer_module.check_loss

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "check_loss", counting)
    trainer = train(tmp_path, my_gpt())  # 6 steps
    assert len(calls) == 1
    trainer.train()  # a new attempt: decided again, once
    assert len(calls) == 2


@pytest.mark.parametrize(("model", "declared"), [
    (my_gpt, 1),
    (lambda: GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=V, n_positions=T,
                                                      num_labels=3, pad_token_id=0)), 0),
], ids=["causal", "classification"])
def test_the_shift_is_set_on_a_logger_that_records_it(tmp_path: Path, model, declared: int) -> None:
    class Labelled(Corpus):
        def __getitem__(self, i: int) -> dict:
            item = super().__getitem__(i)
            return {**item, "labels": torch.tensor(i % 3)} if declared == 0 else item

    logger = CartoLogger(tmp_path / "logs")
    train(tmp_path, model(), Labelled(), carto_logger=logger)
    logger.close()
    assert logger.label_shift == declared


# ------------------------------------------------------------------ the rule itself


def test_the_class_rule_counts_subclasses_and_vision_language_models_but_not_encoder_decoders() -> None:
    class Config:
        def __init__(self, is_encoder_decoder: bool) -> None:
            self.is_encoder_decoder = is_encoder_decoder

    def model(name: str, base: type = object, encoder_decoder: bool = False):
        return type(name, (base,), {"config": Config(encoder_decoder)})()

    assert class_shifts(my_gpt()) and class_shifts(tiny_llava())
    assert class_shifts(model("Mine", type(model("Qwen2VLForConditionalGeneration"))))
    assert not class_shifts(model("Pix2StructForConditionalGeneration", encoder_decoder=True))
    assert not class_shifts(model("T5ForConditionalGeneration"))
    assert not class_shifts(model("GPT2ForSequenceClassification"))


def test_a_batch_without_targets_or_a_loss_tells_nothing() -> None:
    logits = torch.randn(2, 5, V)
    labels = torch.full((2, 5), -100)
    assert check_loss(logits, labels, torch.tensor(float("nan"))) is None  # no target: the model's mean is NaN
    assert check_loss(logits, labels[:, :4], torch.tensor(1.0)) is None  # not lined up: record refuses it
    assert check_loss(logits, labels, None) is None
    labels[:, 2:] = 7
    check = check_loss(logits, labels, torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V),
                                                                         labels[:, 1:].reshape(-1)))
    assert check.verdict is True and len(check.shifted) == 1
    with_items = check_loss(logits, labels, torch.tensor(1.0), torch.tensor(12))
    assert len(with_items.shifted) == len(with_items.unshifted) == 2


def test_the_decision_table() -> None:
    """Both shifts within RTOL: the loss cannot tell, the class decides, silently."""
    gpt = tiny_gpt()
    near = 4.0 * (1 + RTOL / 4)
    both = LossCheck(4.0, (4.0,), (near,))
    assert decide(explicit=None, check=both, model=gpt).source == "model class"
    assert decide(explicit=None, check=both, model=gpt).warning is None
    assert decide(explicit=False, check=both, model=gpt).warning is None
    unshifted = LossCheck(4.0, (4.2, float("nan")), (4.0 * (1 + RTOL / 2), 3.0))
    assert decide(explicit=None, check=unshifted, model=gpt) == decide(explicit=None, check=unshifted, model=None)
    assert not decide(explicit=None, check=unshifted, model=gpt).shift
    assert decide(explicit=None, check=None, model=gpt).shift  # no loss: GPT-2's class
    assert decide(explicit=None, check=LossCheck(4.0, (4.0 * (1 + 2 * RTOL),), (3.0,)), model=gpt).warning
