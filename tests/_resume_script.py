"""A training run for the kill-and-resume test: ``python _resume_script.py OUT MAX SAVE_EVERY KILL_AT``.

Always calls ``fit(resume="or_start")``, so the same code starts the run or continues it (the test
runs the killed run in a forked child process, the reference and the resume in-process). With
``KILL_AT > 0`` the process SIGKILLs itself at the end of that step, before the step's
checkpoint could be written — as a crash or an OOM-killer would.

Training consumes every RNG stream on purpose (noise in the loss from torch, numpy and Python
RNGs; an eval that samples), so a resume that failed to restore any of them — or the data
position, optimizer moments, schedule or window of logged means — would change the weights.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from _tiny import pad_collate, tiny_decoder, train_config, variable_examples
from torch import nn

from trainlab.train import Callback, CausalLMObjective, ObjectiveOutput, StepBatcher, Trainer, TrainResult
from trainlab.train.objectives import Batch


class NoisyObjective(CausalLMObjective):
    """Cross-entropy times (1 + small noise from all three RNGs): resume must restore them."""

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        out = super().__call__(model, batch)
        noise = 0.01 * (float(torch.rand(())) + float(np.random.rand()) + random.random())
        return ObjectiveOutput(out.loss_sum * (1.0 + noise), out.count, out.metrics)


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def sampling_eval(model: nn.Module) -> dict[str, float]:
    # Consumes the RNG (isolated by the trainer) and reads the weights.
    probe = torch.randint(1, 40, (2, 6))
    return {"probe_logit_mean": float(model(probe).mean()), "rand": float(torch.rand(()))}


def run_training(out_dir: Path, max_steps: int, save_every: int, kill_at: int = 0) -> TrainResult:
    """Build the same run from scratch every time and ``fit(resume="or_start")`` it."""
    torch.manual_seed(123)
    model = tiny_decoder(seed=1)
    cfg = train_config(max_steps=max_steps, save_every=save_every, batch_size=3, grad_accum=2,
                       warmup_steps=3, log_every=2, eval_every=3, seed=5)
    batcher = StepBatcher(variable_examples(17, seed=2), 3, 2, pad_collate, seed=cfg.seed)
    callbacks = [KillAt(kill_at)] if kill_at > 0 else []
    return Trainer(model, NoisyObjective(), batcher, cfg, out_dir, eval_fn=sampling_eval, callbacks=callbacks,
                   quiet=True).fit(resume="or_start")


if __name__ == "__main__":
    run_training(Path(sys.argv[1]), *map(int, sys.argv[2:5]))
