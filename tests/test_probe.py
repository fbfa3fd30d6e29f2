"""Probe passes (`carto_cli.log.probe`): a tiny real single-pass training loop on CPU, probed every few steps.

- The probe log holds one row per probe sample per pass, `epoch` = the pass index, `step` = the
  training step at which the pass ran, and `carto score` scores it over passes.
- Probing has no side effect on training: with dropout in the model and a probe `DataLoader`
  (which draws from torch's generator on every iteration), the parameters and every training loss
  are bit-identical with and without probing; a naive probe (train mode, no RNG fork) is shown to
  break that, so the comparison can fail.
- Module modes and gradients are restored; a restart supersedes the crashed attempt's passes; other
  ranks do nothing; bad arguments and bad probe batches are one-line errors.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_cli import run

torch = pytest.importorskip("torch", reason="probe passes need the torch extra")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from carto_cli import CartoLogger  # noqa: E402
from carto_cli.errors import CartoError, OptionError  # noqa: E402
from carto_cli.io import logs  # noqa: E402
from carto_cli.log.probe import ProbePass, probe_dir  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
V, T, B = 32, 16, 8  # vocabulary, sequence length (tokens per sample: T + 1), batch size
STEPS, EVERY = 30, 5  # training steps (every sample seen once: STEPS * B samples); probe period
PROBE_TRAIN = list(range(0, 16))  # probe samples from the training stream (batches 0 and 1)
PROBE_HELD_OUT = list(range(1000, 1004))  # probe samples never trained on (a control)
PROBE_IDS = PROBE_TRAIN + PROBE_HELD_OUT
PASS_STEPS = list(range(0, STEPS + 1, EVERY))  # 0, 5, ..., 30: probed before step s's update, and at the end


def sequences(ids: list[int]) -> torch.Tensor:
    """(N, T + 1) token ids: each sample follows a fixed permutation from its own start, with a
    few of its own random tokens (what only memorization predicts). A function of the ids only."""
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(123))
    rows = []
    for i in ids:
        g = torch.Generator().manual_seed(10_000 + i)
        x = [int(torch.randint(V, (1,), generator=g))]
        noise = torch.rand(T, generator=g) < 0.25
        for t in range(T):
            x.append(int(torch.randint(V, (1,), generator=g)) if noise[t] else int(perm[x[-1]]))
        rows.append(x)
    return torch.tensor(rows)


class Bigram(nn.Module):
    """A next-token model of a few thousand parameters, with dropout (which draws random numbers)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(32, V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.emb(x)))  # (B, T, V)


def probe_loader() -> DataLoader:
    """The probe set as (ids, inputs, labels) batches: inputs x[:, :-1], labels x[:, 1:]."""
    x = sequences(PROBE_IDS)
    return DataLoader(TensorDataset(torch.tensor(PROBE_IDS), x[:, :-1], x[:, 1:]), batch_size=6)


def train(probe: Callable[[nn.Module, int], object] | None, *, start: int = 0, stop: int = STEPS,
          model: nn.Module | None = None, log: CartoLogger | None = None) -> tuple[nn.Module, list[float]]:
    """Single pass over a stream: step s trains on samples s*B .. s*B + B - 1 (each seen once),
    logged to `log` if given. `probe(model, step)` is called before each step's update and once
    after the last."""
    if model is None:
        torch.manual_seed(0)
        model = Bigram()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for step in range(start, stop):
        if probe is not None:
            probe(model, step)
        ids = list(range(step * B, step * B + B))
        x = sequences(ids)
        logits = model(x[:, :-1])  # (B, T, V)
        if log is not None:
            log.record(ids, epoch=0, step=step, logits=logits, labels=x[:, 1:])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if probe is not None:
        probe(model, stop)
    return model, losses


def read_probe_log(path: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p.path) for p in logs.open_logs([path]).parts]).sort(["step", "sample_id"])


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> tuple[Path, nn.Module, list[float]]:
    """The loop run once with probe passes every EVERY steps, its training rows in its own log."""
    log_dir = tmp_path_factory.mktemp("run") / "logs"
    with ProbePass(PROBE_IDS, probe_loader, every_steps=EVERY, out_dir=probe_dir(log_dir)) as probe:
        with CartoLogger(log_dir) as train_log:
            model, losses = train(probe.maybe_run, log=train_log)
        assert probe.passes == [(s // EVERY, s) for s in PASS_STEPS]
    return log_dir, model, losses


def test_the_probe_log_has_one_row_per_probe_sample_per_pass(probed) -> None:
    log_dir, _, _ = probed
    rows = read_probe_log(probe_dir(log_dir))
    assert rows.height == len(PROBE_IDS) * len(PASS_STEPS)
    per_pass = rows.group_by("epoch", "step").agg(pl.col("sample_id").sort()).sort("epoch")
    assert per_pass["epoch"].to_list() == list(range(len(PASS_STEPS)))  # pass indices 0, 1, ...
    assert per_pass["step"].to_list() == PASS_STEPS  # the training steps at which each ran
    assert all(ids == sorted(PROBE_IDS) for ids in per_pass["sample_id"].to_list())
    assert rows["token_loss"].null_count() == 0  # per-token losses on by default for the probe
    # one part per pass, written by the writer thread without a flush in the loop
    assert len(logs.open_logs([probe_dir(log_dir)]).parts) == len(PASS_STEPS)


def test_the_training_log_does_not_read_the_probe_directory(probed) -> None:
    log_dir, _, _ = probed
    training = logs.open_logs([log_dir])
    assert training.num_rows == STEPS * B  # each training sample once; the _probe parts left out
    assert all(probe_dir(log_dir) not in Path(str(p.path)).parents for p in training.parts)


def test_carto_score_scores_the_probe_samples_over_passes(probed, tmp_path: Path) -> None:
    log_dir, _, _ = probed
    out = tmp_path / "probe_scores.parquet"
    result = run("score", probe_dir(log_dir), "--early-epochs", "2", "--out", out)
    assert result.exit_code == 0, result.output
    scores = pl.read_parquet(out).sort("sample_id")
    assert scores["sample_id"].to_list() == sorted(PROBE_IDS)
    assert scores["n_seen"].to_list() == [len(PASS_STEPS)] * len(PROBE_IDS)
    memorization = scores["memorization"]
    assert memorization.null_count() == 0 and memorization.max() > 0  # extractable across passes
    assert scores["difficulty"].null_count() == 0 and scores["difficulty"].n_unique() > 1
    # the probe shows learning over passes: the mean loss of the last pass is below the first's
    rows = read_probe_log(probe_dir(log_dir))
    first, last = (rows.filter(pl.col("epoch") == e)["loss"].mean() for e in (0, len(PASS_STEPS) - 1))
    assert last < first - 0.3
    result = run("score", probe_dir(log_dir), "--memorization", "token-drop", "--out", tmp_path / "t.parquet")
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(tmp_path / "t.parquet")["memorization"].null_count() == 0


def test_probing_has_no_side_effect_on_training(probed, tmp_path: Path) -> None:
    _, probed_model, probed_losses = probed
    model, losses = train(None)
    assert losses == probed_losses  # every training batch's loss, bit for bit
    for (name, a), b in zip(model.state_dict().items(), probed_model.state_dict().values()):
        assert torch.equal(a, b), name

    def naive(model: nn.Module, step: int) -> None:  # eval mode and no_grad, but no RNG fork
        if step % EVERY == 0:
            model.eval()
            with torch.no_grad():
                for _ids, x, _y in probe_loader():  # the DataLoader draws its base seed
                    model(x)
            model.train()

    _, naive_losses = train(naive)
    assert naive_losses != losses  # the comparison above can fail


def test_modes_and_gradients_are_restored(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Bigram()
    model.train()
    model.drop.eval()  # a submodule frozen in eval mode by the user stays so
    x = sequences([0, 1])
    nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    modes_seen = []

    def forward(m: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        modes_seen.append([mod.training for mod in m.modules()])
        assert not torch.is_grad_enabled()
        return m(inputs)

    with ProbePass(PROBE_IDS, probe_loader, every_steps=1, out_dir=tmp_path / "p", forward=forward) as probe:
        assert probe.maybe_run(model, 0)
    assert modes_seen and all(not any(modes) for modes in modes_seen)  # every module in eval during the pass
    assert [m.training for m in model.modules()] == [True, True, False, True]
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(p, q) and p.requires_grad for p, q in zip(model.parameters(), params))


def test_a_step_runs_at_most_once_and_only_on_multiples(tmp_path: Path) -> None:
    calls = []
    model = Bigram()

    def forward(m: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return m(inputs)

    with ProbePass(PROBE_IDS, list(probe_loader()), every_steps=4, out_dir=tmp_path / "p", forward=forward) as probe:
        ran = [probe.maybe_run(model, s) for s in (0, 0, 1, 3, 4, 4, 4, 8)]  # accumulation repeats a step
    assert ran == [True, False, False, False, True, False, False, True]
    assert probe.passes == [(0, 0), (1, 4), (2, 8)] and len(calls) == 3 * 4  # 4 batches of 6, 6, 6, 2


def test_a_restart_supersedes_the_crashed_attempts_passes(tmp_path: Path) -> None:
    out = tmp_path / "probe"
    with ProbePass(PROBE_IDS, probe_loader, every_steps=EVERY, out_dir=out) as crashed:
        model, _ = train(crashed.maybe_run, stop=17)  # probed at 0, 5, 10, 15, then "crashed" after step 17
    # resumed from the checkpoint at step 10: the same model state, its probe passes from step 10 on
    torch.manual_seed(0)
    resumed_model, _ = train(None, stop=10)
    with ProbePass(PROBE_IDS, probe_loader, every_steps=EVERY, out_dir=out) as resumed:
        train(resumed.maybe_run, start=10, stop=20, model=resumed_model)
    assert resumed.passes == [(2, 10), (3, 15), (4, 20)]
    logset = logs.open_logs([out])
    assert logset.replayed_rows == 2 * len(PROBE_IDS)  # the crashed attempt's passes at steps 10 and 15
    result = run("score", out, "--out", tmp_path / "s.parquet")
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(tmp_path / "s.parquet")["n_seen"].to_list() == [5] * len(PROBE_IDS)


def test_other_ranks_do_nothing_or_only_the_forward(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CARTO_LOG_DIR", str(tmp_path / "logs"))
    calls = []

    def forward(m: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return m(inputs)

    model = Bigram()
    idle = ProbePass(PROBE_IDS, probe_loader, every_steps=1, rank=1, forward=forward)  # no out_dir needed
    assert idle.logger is None and not idle.maybe_run(model, 0) and not calls
    joined = ProbePass(PROBE_IDS, probe_loader, every_steps=1, rank=1, ranks="all", forward=forward)
    assert joined.maybe_run(model, 0) and len(calls) == 4 and joined.logger is None
    assert not (tmp_path / "logs").exists()  # no logger, no directory on ranks other than 0


def test_hugging_face_outputs_mappings_and_shift(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=V, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).train()  # dropout on, as in training
    x = sequences(PROBE_IDS)  # (N, T + 1): labels = input_ids, shifted by the helper
    batches = [(torch.tensor(PROBE_IDS[i:i + 8]), {"input_ids": x[i:i + 8]}, x[i:i + 8])
               for i in range(0, len(PROBE_IDS), 8)]
    with ProbePass(PROBE_IDS, batches, every_steps=1, out_dir=tmp_path / "p", shift=True) as probe:
        probe.maybe_run(model, 0)
    assert model.training
    rows = read_probe_log(tmp_path / "p").sort("sample_id")
    with torch.no_grad():
        logits = model.eval()(input_ids=x).logits[:, :-1]  # (N, T, V), without dropout
    expected = nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none").mean(dim=1)
    np.testing.assert_allclose(rows["loss"].to_numpy(), expected.numpy(), rtol=1e-5)
    assert rows["n_tokens"].to_list() == [T] * len(PROBE_IDS)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"every_steps": 0}, "every_steps must be an int >= 1 (got 0)"),
    ({"every_steps": -3}, "every_steps must be an int >= 1 (got -3)"),
    ({"every_steps": 2.5}, "every_steps must be an int >= 1 (got 2.5)"),
    ({"probe_ids": []}, "probe_ids is empty"),
    ({"probe_ids": np.array([], dtype=np.int64)}, "probe_ids is empty"),
    ({"probe_ids": [1, 2, 2]}, "probe_ids repeats 1 id(s)"),
    ({"batches": iter([])}, "batches is an iterator"),
    ({"ranks": "some"}, "ranks must be 'zero' or 'all'"),
    ({"logger": "x"}, "pass out_dir= or logger=, not both"),
])
def test_bad_arguments_are_one_line_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"probe_ids": PROBE_IDS, "batches": probe_loader, "every_steps": 5, "out_dir": tmp_path, **kwargs}
    with pytest.raises(OptionError) as raised:
        ProbePass(args.pop("probe_ids"), args.pop("batches"), **args)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_no_directory_is_an_error_naming_the_fix(monkeypatch) -> None:
    monkeypatch.delenv("CARTO_LOG_DIR", raising=False)
    with pytest.raises(OptionError, match=r"no out_dir given and \$CARTO_LOG_DIR is not set; pass out_dir="):
        ProbePass(PROBE_IDS, probe_loader, every_steps=5)


def test_the_default_directory_is_under_the_training_log_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CARTO_LOG_DIR", str(tmp_path / "logs"))
    with ProbePass(PROBE_IDS, probe_loader, every_steps=5) as probe:
        probe.maybe_run(Bigram(), 5)
    assert probe.logger.out_dir == tmp_path / "logs" / "_probe"
    assert read_probe_log(tmp_path / "logs" / "_probe")["epoch"].unique().to_list() == [1]


@pytest.mark.parametrize(("batches", "message"), [
    (lambda: [(torch.tensor([0, 1]), torch.zeros(2, T, dtype=torch.long), torch.zeros(2, T, dtype=torch.long))],
     "did not present 18 of the 20 probe samples (first: 2)"),
    (lambda: [(torch.tensor([0, 77]), torch.zeros(2, T, dtype=torch.long), torch.zeros(2, T, dtype=torch.long))],
     "presented sample 77, which is not in probe_ids"),
    (lambda: [*probe_loader(), *probe_loader()], "presented a probe sample twice in one pass"),
    (lambda: [(torch.tensor([0]), torch.zeros(1, T, dtype=torch.long))], "must yield (ids, inputs, labels) triples"),
])
def test_bad_probe_batches_are_one_line_errors(tmp_path: Path, batches, message: str) -> None:
    model = Bigram()
    model.train()
    with ProbePass(PROBE_IDS, batches, every_steps=5, out_dir=tmp_path) as probe:
        with pytest.raises(CartoError) as raised:
            probe.maybe_run(model, 10)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert str(raised.value).startswith("probe pass at step 10: ")
    assert model.training and model.drop.training  # restored after a failed pass too


def test_the_example_runs_and_its_probe_log_scores(tmp_path: Path) -> None:
    out = tmp_path / "logs"
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "probe_pass.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"carto score {out / '_probe'} --early-epochs 2" in result.stdout
    scored = tmp_path / "scores.parquet"
    score = run("score", out / "_probe", "--early-epochs", "2", "--out", scored)
    assert score.exit_code == 0, score.output
    scores = pl.read_parquet(scored)
    assert scores.height > 0 and scores["n_seen"].n_unique() == 1 and scores["n_seen"][0] >= 4
    assert scores["memorization"].null_count() == 0
