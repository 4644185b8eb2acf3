"""Checkpoints and exact resume: a SIGKILLed run, resumed, ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal

import numpy as np
import pytest
import torch
from _resume_script import run_training
from _tiny import fixed_examples, tiny_decoder, train_config

from trainlab.config import TrainConfig
from trainlab.errors import TrainingInterrupted, UserError
from trainlab.train import Callback, CausalLMObjective, StepBatcher, Trainer, read_metrics
from trainlab.train.checkpoint import (
    CheckpointManager,
    load_checkpoint,
    load_optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

TIMING = {"tokens_per_s", "step_time_s", "train_time_s"}


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_sigkill_and_resume_is_bit_identical(tmp_path) -> None:
    max_steps, save_every = 12, 3
    # A random step that is not a checkpoint step, so the resume must replay 1-2 steps.
    kill_at = random.choice([s for s in range(save_every + 1, max_steps) if s % save_every])
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    # The run to be killed is a forked child process (a fresh interpreter would spend seconds
    # importing torch); it SIGKILLs itself at the end of step kill_at.
    proc = multiprocessing.get_context("fork").Process(
        target=run_training, args=(killed, max_steps, save_every, kill_at))
    proc.start()
    run_training(ref, max_steps, save_every)  # meanwhile: the uninterrupted reference, in-process
    proc.join(timeout=120)
    assert proc.exitcode == -signal.SIGKILL, f"exit code {proc.exitcode} (kill_at={kill_at})"
    interrupted = load_checkpoint(killed / "checkpoint.pt")
    assert interrupted["step"] == kill_at - kill_at % save_every  # the last checkpoint before the kill
    # The killed run logged past its checkpoint; those records must be replaced, not duplicated.
    assert max(r["step"] for r in read_metrics(killed / "metrics.jsonl")) > interrupted["step"]
    resumed = run_training(killed, max_steps, save_every)
    assert resumed.resumed_from == interrupted["step"] and resumed.steps == max_steps

    a, b = load_checkpoint(ref / "checkpoint.pt"), load_checkpoint(killed / "checkpoint.pt")
    assert a["step"] == b["step"] == max_steps
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), f"{name} differs (kill_at={kill_at})"
    for pid, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][key]), f"optimizer {pid}.{key}"
    assert a["batcher"] == b["batcher"] and a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert _untimed(read_metrics(ref / "metrics.jsonl")) == _untimed(read_metrics(killed / "metrics.jsonl"))
    assert _untimed(a["metrics"]["history"]) == _untimed(b["metrics"]["history"])


def test_resume_in_process_and_changed_config_applies(tmp_path) -> None:
    cfg = train_config(max_steps=4, save_every=2)
    data = fixed_examples(20)
    Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(data, 4, 1, None, 0), cfg, tmp_path,
            quiet=True).fit()
    # Continue the finished run to 6 steps with a lower lr: counters carry over, new lr is used.
    cfg2 = train_config(max_steps=6, save_every=2, lr=1e-3)
    trainer = Trainer(tiny_decoder(seed=99), CausalLMObjective(), StepBatcher(data, 4, 1, None, 0), cfg2,
                      tmp_path, quiet=True)
    result = trainer.fit(resume=True)
    assert result.resumed_from == 4 and result.steps == 6
    assert result.tokens == 6 * 4 * 16
    assert [r["step"] for r in result.history] == [1, 2, 3, 4, 5, 6]
    assert result.history[-1]["lr"] <= 1e-3 and result.history[2]["lr"] > 1e-3
    assert all(g["initial_lr"] == 1e-3 for g in trainer.optimizer.param_groups)


def test_resume_past_max_steps_is_refused(tmp_path) -> None:
    """--resume with --max-steps below the checkpoint's step saved the checkpoint's weights as the finished run."""
    data = fixed_examples(20)
    Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(data, 4, 1, None, 0), train_config(max_steps=4),
            tmp_path, quiet=True).fit()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    with pytest.raises(UserError, match=r"train\.max_steps: --resume: the checkpoint .* is at step 4, past "
                                        r"train\.max_steps=2: nothing to train; give --max-steps above 4"):
        Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(data, 4, 1, None, 0), train_config(max_steps=2),
                tmp_path, quiet=True).fit(resume=True)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before  # nothing written


def test_resume_without_checkpoint_is_an_error_unless_or_start(tmp_path) -> None:
    cfg = train_config(max_steps=2)

    def trainer() -> Trainer:
        return Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(fixed_examples(8), 4, 1, None, 0), cfg,
                       tmp_path / "run", quiet=True)

    with pytest.raises(UserError, match=r"no checkpoint in .*--resume-or-start"):
        trainer().fit(resume=True)
    assert not (tmp_path / "run").exists()  # nothing written
    result = trainer().fit(resume="or_start")
    assert result.resumed_from is None and result.steps == 2
    assert result.checkpoint_path == tmp_path / "run" / "checkpoint.pt" and result.checkpoint_path.is_file()


def test_resume_refuses_another_model_or_data_unless_forced(tmp_path) -> None:
    data = fixed_examples(8)

    def trainer(identity: dict, max_steps: int = 2) -> Trainer:
        return Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(data, 4, 1, None, 0),
                       train_config(max_steps=max_steps), tmp_path, quiet=True, identity=identity)

    trainer({"model": "m1", "data": "d1"}).fit()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["identity"] == {"model": "m1", "data": "d1"}
    with pytest.raises(UserError, match=r"on other data \(data d1 != d2\).*--force"):
        trainer({"model": "m1", "data": "d2"}, 3).fit(resume=True)
    with pytest.raises(UserError, match="from another model"):
        trainer({"model": "m2", "data": "d1"}, 3).fit(resume=True)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2  # refused before anything changed
    result = trainer({"model": "m1", "data": "d2"}, 3).fit(resume=True, force=True)
    assert result.resumed_from == 2 and result.steps == 3
    assert load_checkpoint(tmp_path / "checkpoint.pt")["identity"]["data"] == "d2"
    result = trainer({"model": "m1", "data": "d2"}, 4).fit(resume=True)  # the same run again: no question
    assert result.resumed_from == 3


def test_forced_resume_into_another_shape_is_a_user_error(tmp_path) -> None:
    data = fixed_examples(8)
    cfg = train_config(max_steps=2)
    Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(data, 4, 1, None, 0), cfg, tmp_path, quiet=True).fit()
    wider = Trainer(tiny_decoder(dim=48), CausalLMObjective(), StepBatcher(data, 4, 1, None, 0),
                    train_config(max_steps=3), tmp_path, quiet=True)
    with pytest.raises(UserError, match="does not fit this run"):
        wider.fit(resume=True, force=True)


def test_periodic_checkpoints_by_steps_or_minutes(tmp_path) -> None:
    class Saves(Callback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_checkpoint(self, trainer, step, path):  # type: ignore[no-untyped-def]
            self.steps.append(step)

    def run(name: str, **cfg: object) -> list[int]:
        saves = Saves()
        Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(fixed_examples(8), 4, 1, None, 0),
                train_config(max_steps=7, **cfg), tmp_path / name, quiet=True, callbacks=[saves]).fit()
        return saves.steps

    assert run("steps", save_every=3) == [3, 6, 7]
    assert run("end", save_every=0, save_every_minutes=0) == [7]
    # a tiny time budget (0.06 ms): a checkpoint after every step although save_every is 0
    assert run("minutes", save_every=0, save_every_minutes=1e-6) == [1, 2, 3, 4, 5, 6, 7]
    # the default: every 5 minutes of training, so this short run saves only at its end
    assert TrainConfig().save_every_minutes == 5
    assert run("default", save_every=0, save_every_minutes=5) == [7]


def test_release_checkpoint_unless_kept(tmp_path) -> None:
    def trainer(name: str, **cfg: object) -> Trainer:
        return Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(fixed_examples(8), 4, 1, None, 0),
                       train_config(max_steps=2, **cfg), tmp_path / name, quiet=True)

    t = trainer("default")
    assert not t.release_checkpoint()  # before fit: nothing to release
    t.fit()
    assert (tmp_path / "default" / "checkpoint.pt").is_file()  # kept until the caller's output is safe
    assert t.release_checkpoint() and not (tmp_path / "default" / "checkpoint.pt").exists()
    t = trainer("kept", keep_checkpoint=True)
    t.fit()
    assert not t.release_checkpoint() and (tmp_path / "kept" / "checkpoint.pt").is_file()


def test_epochs_set_the_number_of_steps(tmp_path) -> None:
    seen: list[int] = []

    class Count(Callback):
        def on_step_end(self, trainer, step, metrics):  # type: ignore[no-untyped-def]
            seen.append(trainer.batcher.epoch)

    data = fixed_examples(20)
    cfg = train_config(max_steps=1000, epochs=1.5, batch_size=3, grad_accum=2)
    trainer = Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(data, 3, 2, None, 0), cfg, tmp_path,
                      quiet=True, callbacks=[Count()])
    # TRL: max_steps = ceil(num_train_epochs · steps per epoch); here 1.5 · 20 / 6 = 5
    assert trainer.cfg.max_steps == 5 and trainer.epoch_info == {"epochs": 1.5, "max_steps": 5, "examples": 20,
                                                                  "examples_per_step": 6}
    assert trainer.fit().steps == 5
    assert trainer.batcher.epoch == 1 and trainer.batcher.position == 10  # 30 examples: one epoch and a half
    one = Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(data, 4, 1, None, 0),
                  train_config(epochs=1, batch_size=4), tmp_path / "one", quiet=True)
    assert one.cfg.max_steps == 5


# ---- checkpoint files -----------------------------------------------------------------------

def test_rng_state_round_trips_through_a_file(tmp_path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached Gaussian in numpy's state
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = (random.random(), np.random.randn(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.randn(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_manager_keeps_latest_and_snapshots_without_temp_files(tmp_path) -> None:
    mgr = CheckpointManager(tmp_path, keep_every=2)
    assert mgr.latest() is None and mgr.load() is None
    for step in (1, 2, 3):
        mgr.save({"step": step, "w": torch.full((3,), float(step))}, step)
    assert load_checkpoint(mgr.path)["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-step0000002.pt", "checkpoint.pt"]
    snap = load_checkpoint(mgr.snapshot_path(2))
    assert snap["step"] == 2 and torch.equal(snap["w"], torch.full((3,), 2.0))  # not the later state


def test_load_rejects_other_formats(tmp_path) -> None:
    torch.save({"step": 1}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="format"):
        load_checkpoint(tmp_path / "old.pt")


def test_optimizer_state_loads_moments_but_keeps_current_hyperparameters() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.0)
    load_optimizer_state(opt2, saved)
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.param_groups[0]["weight_decay"] == 0.0
    assert torch.equal(opt2.state[model.weight]["exp_avg"], opt.state[model.weight]["exp_avg"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_and_raises(tmp_path, sig: signal.Signals) -> None:
    from trainlab.train import Callback

    class SignalAt(Callback):
        def on_step_end(self, trainer, step, metrics):  # type: ignore[no-untyped-def]
            if step == 2:
                os.kill(os.getpid(), sig)

    cfg = train_config(max_steps=10)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    trainer = Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(fixed_examples(8), 4, 1, None, 0), cfg,
                      tmp_path, callbacks=[SignalAt()], quiet=True)
    with pytest.raises(TrainingInterrupted, match=f"interrupted \\({sig.name}\\) at step 2 of 10") as info:
        trainer.fit()
    assert info.value.checkpoint == tmp_path / "checkpoint.pt"
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    assert not trainer.release_checkpoint() and (tmp_path / "checkpoint.pt").is_file()  # an interrupted run keeps it
    assert {s: signal.getsignal(s) for s in before} == before  # the trainer's handlers are gone
    assert not isinstance(info.value, Exception)  # `except Exception` in a caller does not swallow it


def test_check_run_dirs(tmp_path) -> None:
    from trainlab.train.checkpoint import check_run_dirs

    out = tmp_path / "run"
    check_run_dirs(out)  # nothing there: fine, and nothing created
    assert not out.exists()
    with pytest.raises(UserError, match="--resume: no checkpoint"):
        check_run_dirs(out, True)
    check_run_dirs(out, "or_start")
    for model in (out, out / "model", out / "a" / "b"):
        with pytest.raises(UserError, match="write over its input"):
            check_run_dirs(out, False, {"--model": model})
    check_run_dirs(out, False, {"--model": tmp_path / "elsewhere", "--ref-model": None})
    with pytest.raises(UserError, match=r"is inside the --model folder .*write into its input"):
        check_run_dirs(out / "sub", False, {"--model": out})  # one rule with export and convert: not into it

    data = fixed_examples(8)
    trainer = Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(data, 4, 1, None, 0),
                      train_config(max_steps=4, save_every=2), out, quiet=True, callbacks=[_StopAt(2)])
    trainer.fit()  # stopped at step 2 of 4: an unfinished run
    with pytest.raises(UserError, match=r"unfinished run \(step 2 of 4\).*--force"):
        check_run_dirs(out)
    check_run_dirs(out, force=True)
    check_run_dirs(out, True)
    Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(data, 4, 1, None, 0), train_config(max_steps=4),
            out, quiet=True).fit(resume=True)
    check_run_dirs(out)  # finished (a kept checkpoint): a new run may start over it


class _StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, step, metrics):  # type: ignore[no-untyped-def]
        if step == self.step:
            trainer.request_stop("test")
