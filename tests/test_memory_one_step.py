"""One training step: every measurement calls `trainlab.train.optimizer_step`, nothing re-writes it.

A copy of the step (``optimizer.step()`` / ``scaler.step(optimizer)`` called outside the loop) is how
measurements drift from training: fp16 profiled without loss scaling, memory measured without
clipping. This test reads the source of every module under ``src/`` and allows such calls only in
the loop itself and in the loss-scaler implementations (whose ``step`` *is* the guarded update).
"""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import torch
from _tiny import tiny_decoder, train_config

from trainlab.memory.measure import measure_training_step
from trainlab.optim import build_optimizer
from trainlab.precision.scaler import DynamicLossScaler
from trainlab.train.objectives import CausalLMObjective

SRC = Path(__file__).resolve().parents[1] / "src" / "trainlab"
ALLOWED = {"train/loop.py", "train/step.py", "train/amp.py", "precision/scaler.py"}  # the step, the scalers


def step_calls(source: str) -> list[int]:
    """Lines of code (not strings or comments) calling ``<opt-or-scaler-like>.step(``."""
    toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type in (tokenize.NAME, tokenize.OP)]
    lines = []
    for a, dot, name, paren in zip(toks, toks[1:], toks[2:], toks[3:], strict=False):
        if (dot.string == "." and name.string == "step" and paren.string == "("
                and any(w in a.string.lower() for w in ("opt", "scaler"))):
            lines.append(a.start[0])
    return lines


def test_the_detector_finds_a_copied_step() -> None:
    copied = "def f(opt, scaler):\n    scaler.step(opt)\n    optimizer.step()\n    self._scaler.step(o)\n"
    assert step_calls(copied) == [2, 3, 4]
    assert step_calls('"""optimizer.step() in a docstring"""\n# opt.step() in a comment\nsched.step()\n') == []


def test_no_copy_of_the_optimizer_step_under_src() -> None:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        lines = step_calls(path.read_text(encoding="utf-8"))
        if lines and rel not in ALLOWED:
            found[rel] = lines
    assert not found, f"optimizer/scaler .step( outside the training loop: {found}"


def test_memory_meter_fp16_uses_the_training_loss_scaler() -> None:
    """The meter runs the training step: in fp16 the loss is scaled and the scaler decides the update."""
    ids = torch.randint(0, 48, (2, 16))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}

    class Counting(DynamicLossScaler):
        scaled = 0

        def scale(self, loss: torch.Tensor) -> torch.Tensor:
            type(self).scaled += 1
            return super().scale(loss)

    scaler = Counting(init_scale=2.0**8)
    mem = measure_training_step(tiny_decoder, CausalLMObjective(), [batch, batch],
                                optimizer=lambda m: build_optimizer(m, train_config()), precision="fp16",
                                scaler=scaler, steps=2, timeline=False)
    assert not mem.oom and Counting.scaled == 4  # 2 micro-batches x 2 steps
    assert [p.name for p in mem.phases if p.step == 2] == ["forward", "backward", "forward", "backward", "optimizer"]
    assert mem.gradients > 0 and mem.optimizer_states > 0
