"""The Trainer: metrics, evaluation, divergence, fp16 overflow skips, precision and device handling."""

from __future__ import annotations

import math

import pytest
import torch
from _tiny import TinyLM, fixed_examples, pad_collate, tiny_decoder, train_config, variable_examples

from trainlab.errors import TrainingDiverged, UserError
from trainlab.train import (
    Callback,
    CausalLMObjective,
    StepBatcher,
    Trainer,
    load_checkpoint,
    read_metrics,
    resolve_device,
)

TRAIN_KEYS = {"kind", "step", "loss", "lr", "grad_norm", "loss_scale", "tokens_per_s", "step_time_s",
              "tokens_seen", "count_seen", "skipped_steps", "train_time_s", "token_acc"}


def _trainer(tmp_path, model=None, data=None, **cfg):  # type: ignore[no-untyped-def]
    kw = {k: cfg.pop(k) for k in ("eval_fn", "callbacks") if k in cfg}
    config = train_config(**cfg)
    batcher = StepBatcher(data or fixed_examples(24), config.batch_size, config.grad_accum, None, config.seed)
    return Trainer(model or tiny_decoder(), CausalLMObjective(), batcher, config, tmp_path, quiet=True, **kw)


class Record(Callback):
    """Keeps a copy of the parameters after chosen steps, and every step's metrics."""

    def __init__(self, steps: tuple[int, ...] = ()) -> None:
        self.steps = steps
        self.params: dict[int, dict[str, torch.Tensor]] = {}
        self.metrics: list[dict] = []

    def on_step_end(self, trainer, step, metrics):  # type: ignore[no-untyped-def]
        self.metrics.append(metrics)
        if step in self.steps:
            self.params[step] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


# ---- metrics and eval ----------------------------------------------------------------------

def test_metrics_jsonl_has_train_and_eval_records(tmp_path) -> None:
    evals = []

    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        evals.append((model.training, torch.is_grad_enabled()))
        return {"val_loss": 1.5}

    trainer = _trainer(tmp_path, max_steps=6, log_every=2, eval_every=3, eval_fn=eval_fn)
    result = trainer.fit()
    records = read_metrics(result.metrics_path)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 4, 6]  # step 1, every log_every, the last
    for r in train:
        assert set(r) == TRAIN_KEYS
        assert math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and r["lr"] > 0 and r["loss_scale"] == 1.0
    assert [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"] == [(3, 1.5), (6, 1.5)]
    assert evals == [(False, False), (False, False)]  # eval mode, no grad
    assert trainer.model.training  # and back to train mode
    assert result.eval_history == [{"step": 3, "val_loss": 1.5}, {"step": 6, "val_loss": 1.5}]
    assert result.steps == 6 and result.stopped_reason == "max_steps" and result.skipped_steps == 0
    assert result.tokens == 6 * 4 * 16 and result.count == 6 * 4 * 15
    assert result.final_loss < train[0]["loss"]  # it learns the pattern
    assert (tmp_path / "config.json").is_file() and result.checkpoint_path.is_file()


def test_final_eval_when_eval_every_is_zero_and_logged_loss_is_window_mean(tmp_path) -> None:
    rec = Record()
    trainer = _trainer(tmp_path, max_steps=4, log_every=2, eval_every=0, eval_fn=lambda m: {"x": 2.0},
                       callbacks=[rec])
    result = trainer.fit()
    assert result.eval_history == [{"step": 4, "x": 2.0}]
    # The record at step 4 averages steps 3-4, weighted by count (equal counts here).
    assert result.history[2]["loss"] == pytest.approx((rec.metrics[2]["loss"] + rec.metrics[3]["loss"]) / 2)


def test_eval_does_not_disturb_the_training_rng(tmp_path) -> None:
    class Draw(Callback):
        def __init__(self) -> None:
            self.seen: list[float] = []

        def on_step_end(self, trainer, step, metrics):  # type: ignore[no-untyped-def]
            self.seen.append(float(torch.rand(())))  # stands in for dropout at the next step

    draws: dict[str, list[float]] = {}
    for name, eval_fn in [("none", None), ("sampling", lambda m: {"r": float(torch.rand(()))})]:
        draw = Draw()
        _trainer(tmp_path / name, max_steps=4, eval_every=1, eval_fn=eval_fn, callbacks=[draw]).fit()
        draws[name] = draw.seen
    assert draws["none"] == draws["sampling"]


def test_request_stop_ends_cleanly(tmp_path) -> None:
    class StopAt(Callback):
        def on_step_end(self, trainer, step, metrics):  # type: ignore[no-untyped-def]
            if step == 3:
                trainer.request_stop("plateau")

    result = _trainer(tmp_path, max_steps=10, eval_fn=lambda m: {"v": 0.0}, callbacks=[StopAt()]).fit()
    assert result.steps == 3 and result.stopped_reason == "stopped: plateau"
    assert result.eval_history[-1]["step"] == 3
    assert load_checkpoint(result.checkpoint_path)["step"] == 3


# ---- divergence ------------------------------------------------------------------------------

def test_nan_loss_raises_and_keeps_the_last_good_state(tmp_path) -> None:
    model = TinyLM()
    rec = Record(steps=(3,))

    class PoisonAfter(Callback):
        def on_step_end(self, trainer, step, metrics):  # type: ignore[no-untyped-def]
            if step == 3:
                trainer.model.poison = True

    trainer = _trainer(tmp_path, model=model, max_steps=8, save_every=2, callbacks=[rec, PoisonAfter()])
    with pytest.raises(TrainingDiverged, match=r"step 4: loss = nan.*step 3.*train\.lr") as info:
        trainer.fit()
    assert "bf16" in str(info.value)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 3
    for name, value in ckpt["model"].items():
        assert torch.isfinite(value).all() and torch.equal(value, rec.params[3][name])
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]

    # Resuming (after fixing the cause) replays step 4 on the same data and finishes.
    model.poison = False
    batcher = StepBatcher(fixed_examples(24), 4, 1, None, 0)
    for _ in range(3):
        batcher.next_step()
    assert ckpt["batcher"] == batcher.state_dict()  # the failed step's batch is not lost
    result = _trainer(tmp_path, model=model, max_steps=8).fit(resume=True)
    assert result.resumed_from == 3 and result.steps == 8 and math.isfinite(result.final_loss)


def test_fp16_overflow_skips_the_step_without_touching_weights(tmp_path) -> None:
    model = TinyLM()
    inject = {"on": False}
    model.mix.weight.register_hook(lambda g: g * float("inf") if inject["on"] else g)

    class InjectAtStep3(Callback):
        def on_step_end(self, trainer, step, metrics):  # type: ignore[no-untyped-def]
            inject["on"] = step == 2  # only step 3's backward overflows

    rec = Record(steps=(1, 2, 3, 4))
    trainer = _trainer(tmp_path, model=model, max_steps=5, precision="fp16", init_loss_scale=2.0**6,
                       callbacks=[InjectAtStep3(), rec])
    result = trainer.fit()
    assert result.skipped_steps == 1
    assert [m["skipped"] for m in rec.metrics] == [False, False, True, False, False]
    for name, value in rec.params[3].items():
        assert torch.equal(value, rec.params[2][name]), name  # step 3 changed nothing
    assert any(not torch.equal(rec.params[4][n], rec.params[3][n]) for n in rec.params[3])  # step 4 did
    assert any(not torch.equal(rec.params[2][n], rec.params[1][n]) for n in rec.params[1])
    scales = [m["loss_scale"] for m in rec.metrics]
    assert scales[2] == scales[1] / 2  # backoff after the overflow
    assert math.isfinite(result.final_loss)


def test_persistent_fp16_overflow_raises(tmp_path) -> None:
    model = TinyLM()
    model.mix.weight.register_hook(lambda g: g * float("inf"))
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _trainer(tmp_path, model=model, max_steps=10, precision="fp16", max_skipped_steps=3)
    with pytest.raises(TrainingDiverged, match="4 consecutive fp16 overflow"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 4 and ckpt["metrics"]["skipped_steps"] == 4
    assert all(torch.equal(ckpt["model"][n], init[n]) for n in init)  # no update ever applied


def test_bf16_training_runs_and_learns(tmp_path) -> None:
    result = _trainer(tmp_path, max_steps=8, precision="bf16", lr=2e-2).fit()
    assert result.skipped_steps == 0
    assert result.final_loss < result.history[0]["loss"]


def test_variable_length_sft_batches_train(tmp_path) -> None:
    config = train_config(max_steps=3, batch_size=3, grad_accum=2)
    batcher = StepBatcher(variable_examples(10), 3, 2, pad_collate, 0)
    result = Trainer(tiny_decoder(), CausalLMObjective(), batcher, config, tmp_path, quiet=True).fit()
    assert result.steps == 3 and result.count < result.tokens  # prompts and padding are unsupervised


# ---- device and precision -------------------------------------------------------------------

def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:1")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("gpu0")


def test_trainer_rejects_unavailable_device_at_construction(tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(UserError, match=r"train\.device"):
        _trainer(tmp_path, device="cuda")


# ---- outputs ---------------------------------------------------------------------------------

class FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is not installed here)."""

    def __init__(self, purge_step: int | None) -> None:
        self.purge_step = purge_step
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        pass


def test_tensorboard_gets_scalars_and_purges_on_resume(tmp_path, monkeypatch) -> None:
    import trainlab.train.metrics as metrics_mod

    writers: list[FakeWriter] = []

    def fake(log_dir, purge_step):  # type: ignore[no-untyped-def]
        writers.append(FakeWriter(purge_step))
        return writers[-1]

    monkeypatch.setattr(metrics_mod, "_tensorboard_writer", fake)
    monkeypatch.setattr(metrics_mod, "tensorboard_available", lambda: True)
    result = _trainer(tmp_path, max_steps=3, save_every=2, eval_fn=lambda m: {"v": 1.0},
                      report_to="tensorboard").fit()
    assert result.tensorboard_dir == tmp_path / "tb"
    tags = {t for t, _, _ in writers[0].scalars}
    assert {"train/loss", "train/lr", "train/tokens_per_s", "eval/v"} <= tags
    assert writers[0].purge_step is None
    _trainer(tmp_path, max_steps=5, report_to="tensorboard").fit(resume=True)
    assert writers[1].purge_step == 4  # events after the checkpoint (step 3) are dropped


def test_report_to(tmp_path, monkeypatch) -> None:
    import trainlab.train.metrics as metrics_mod

    opened: list[object] = []
    monkeypatch.setattr(metrics_mod, "_tensorboard_writer", lambda *a: opened.append(a) or FakeWriter(None))
    # jsonl (the default) and none: metrics.jsonl only, the run's own log (as TRL's trainer_state.json)
    for report_to in ("jsonl", "none"):
        result = _trainer(tmp_path / report_to, max_steps=2, report_to=report_to).fit()
        assert result.tensorboard_dir is None and not (tmp_path / report_to / "tb").exists()
        assert [r["step"] for r in read_metrics(result.metrics_path)] == [1, 2]
    assert opened == []
    # asked for and not installed: one clear line before any work
    monkeypatch.setattr(metrics_mod, "tensorboard_available", lambda: False)
    with pytest.raises(UserError, match="report_to=tensorboard needs the tensorboard package"):
        _trainer(tmp_path / "tb", max_steps=2, report_to="tensorboard")


def test_console_lines_when_not_quiet(tmp_path, capsys) -> None:
    config = train_config(max_steps=2, log_every=1)
    batcher = StepBatcher(fixed_examples(8), 4, 1, None, 0)
    Trainer(tiny_decoder(), CausalLMObjective(), batcher, config, tmp_path, eval_fn=lambda m: {"v": 0.5}).fit()
    err = capsys.readouterr().err
    assert "step 1: loss" in err and "tok/s" in err and "eval @ step 2: v 0.5" in err


def test_deterministic_flag_is_scoped_to_fit(tmp_path) -> None:
    seen = []

    class Check(Callback):
        def on_step_end(self, trainer, step, metrics):  # type: ignore[no-untyped-def]
            seen.append(torch.are_deterministic_algorithms_enabled())

    before = torch.are_deterministic_algorithms_enabled()
    _trainer(tmp_path, max_steps=2, deterministic=True, callbacks=[Check()]).fit()
    assert seen == [True, True]
    assert torch.are_deterministic_algorithms_enabled() == before
