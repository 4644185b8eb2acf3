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

from trainlab.train import CausalLMObjective, StepBatcher, Trainer, read_metrics
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


def test_resume_without_checkpoint_starts_fresh(tmp_path) -> None:
    cfg = train_config(max_steps=2)
    result = Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(fixed_examples(8), 4, 1, None, 0), cfg,
                     tmp_path, quiet=True).fit(resume=True)
    assert result.resumed_from is None and result.steps == 2
    assert result.checkpoint_path == tmp_path / "checkpoint.pt" and result.checkpoint_path.is_file()


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


def test_interrupt_saves_and_returns(tmp_path) -> None:
    from trainlab.train import Callback

    class SigintAt(Callback):
        def on_step_end(self, trainer, step, metrics):  # type: ignore[no-untyped-def]
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    cfg = train_config(max_steps=10)
    handler_before = signal.getsignal(signal.SIGINT)
    result = Trainer(tiny_decoder(), CausalLMObjective(), StepBatcher(fixed_examples(8), 4, 1, None, 0), cfg,
                     tmp_path, callbacks=[SigintAt()], quiet=True).fit()
    assert result.stopped_reason == "interrupted" and result.steps == 2
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is handler_before  # the trainer's handler is gone
