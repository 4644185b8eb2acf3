"""Rewards for sampled completions: a task oracle, a user function, or a learned reward model.

A reward function here is ``fn(prompts, completions, items) -> Tensor[N]`` (one float per completion;
``items`` are the `PromptItem` each completion answers, so the oracle knows the task and operands).

* ``oracle`` (`oracle_reward`): the embedded tasks' exact check (`trainlab.data.tasks.score`): 1 for a
  correct answer, 0 otherwise. A verifiable reward: no reward model to hack (DeepSeek-R1's "rule-based
  reward"; Lambert et al. 2024's RLVR).
* ``module:function`` (`load_user_reward`): a user's Python function, called as TRL calls its reward
  functions: ``function(prompts=[...], completions=[...], completion_ids=[[...]], **columns)`` where
  ``columns`` are the prompt records' other fields (for the embedded tasks: ``task``, ``answer``);
  keywords the function does not take are left out unless it has ``**kwargs``. It returns a list of
  N numbers. ``module`` is an importable module name or a ``.py`` file path. Any mistake in the spec
  (no colon, module not found, no such function, wrong return length, a non-number) is a one-line
  `UserError`.
* ``model``: a learned reward model's scores (`trainlab.rl.reward_model.load_reward_scorer`, R2's
  module): ``scorer(prompts, completions) -> Tensor[N]``.

Shaping (`apply_penalties`): ``eos_penalty`` is subtracted from a completion that never emitted EOS
(it was cut at ``max_new_tokens``; TRL's ``missing_eos_penalty``), ``length_penalty ×
tokens / max_new_tokens`` from every completion (a soft length budget).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trainlab.data.tasks import TaskRecord, score
from trainlab.errors import UserError

#: ``fn(prompts, completions, items, completion_ids=None) -> Tensor[N]``
RewardFn = Callable[..., Tensor]


@dataclass
class PromptItem:
    """A prompt to sample from: its text, the task record when it has an oracle, and its other columns."""

    prompt: str
    record: TaskRecord | None = None
    columns: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: TaskRecord) -> PromptItem:
        return cls(record.prompt, record, {"task": record.task, "answer": record.answer})


def oracle_reward(prompts: list[str], completions: list[str], items: list[PromptItem], **_: Any) -> Tensor:
    """1.0 where the task oracle accepts the completion, else 0.0."""
    del prompts
    out = []
    for c, item in zip(completions, items, strict=True):
        if item.record is None:
            raise UserError("rl.reward=oracle needs the embedded tasks' prompts (their oracle); for your own prompts "
                            "give rl.reward=module:function", key="rl.reward")
        out.append(1.0 if score(item.record, c) else 0.0)
    return torch.tensor(out, dtype=torch.float32)


def _import_module(name: str) -> Any:
    path = Path(name)
    if name.endswith(".py"):
        if not path.is_file():
            raise UserError(f"reward module file not found: {name}", key="rl.reward")
        spec = importlib.util.spec_from_file_location(f"trainlab_user_reward_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise UserError(f"cannot import {name}", key="rl.reward")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's module failed while importing: say which and why, in one line
            raise UserError(f"importing {name} failed: {type(exc).__name__}: {exc}", key="rl.reward") from None
        return module
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -c "import m"` finds m in the working directory
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise UserError(f"reward module {name!r} not found ({exc.msg}); give module:function with the module "
                        "importable, or path/to/file.py:function", key="rl.reward") from None
    except Exception as exc:
        raise UserError(f"importing {name} failed: {type(exc).__name__}: {exc}", key="rl.reward") from None


def load_user_reward(spec: str) -> RewardFn:
    """The reward function named by ``module:function`` (or ``file.py:function``), wrapped (module docstring)."""
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name.isidentifier():
        raise UserError(f"--reward must be module:function (e.g. my_rewards:correct), got {spec!r}", key="rl.reward")
    module = _import_module(module_name)
    fn = getattr(module, func_name, None)
    if fn is None or not callable(fn):
        raise UserError(f"{module_name} has no function {func_name!r}", key="rl.reward")
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def call(prompts: list[str], completions: list[str], items: list[PromptItem],
             completion_ids: list[list[int]] | None = None) -> Tensor:
        kwargs: dict[str, Any] = {"prompts": prompts, "completions": completions,
                                  "completion_ids": completion_ids or []}
        for key in sorted({k for it in items for k in it.columns}):
            kwargs.setdefault(key, [it.columns.get(key) for it in items])
        if not takes_all:
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        try:
            values = fn(**kwargs)
        except Exception as exc:
            raise UserError(f"reward function {spec} raised {type(exc).__name__}: {exc}", key="rl.reward") from None
        return _as_rewards(values, len(completions), spec)

    return call


def _as_rewards(values: Any, n: int, what: str) -> Tensor:
    try:
        seq = list(values)
    except TypeError:
        raise UserError(f"reward function {what} returned {type(values).__name__}, expected a list of {n} numbers",
                        key="rl.reward") from None
    if len(seq) != n:
        raise UserError(f"reward function {what} returned {len(seq)} values for {n} completions", key="rl.reward")
    out = []
    for i, v in enumerate(seq):
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise UserError(f"reward function {what} returned {v!r} for completion {i}: not a number",
                            key="rl.reward") from None
        if not math.isfinite(x):
            raise UserError(f"reward function {what} returned {x} for completion {i}: not finite", key="rl.reward")
        out.append(x)
    return torch.tensor(out, dtype=torch.float32)


def model_reward(scorer: Callable[[list[str], list[str]], Tensor]) -> RewardFn:
    """A reward-model scorer (texts in, one score per completion out) as a `RewardFn`."""

    def call(prompts: list[str], completions: list[str], items: list[PromptItem], **_: Any) -> Tensor:
        del items
        return torch.as_tensor(scorer(prompts, completions), dtype=torch.float32).detach().cpu().reshape(-1)

    return call


def build_reward(reward: str, *, reward_model: str | None = None, device: Any = "cpu",
                 scorer: Callable[[list[str], list[str]], Tensor] | None = None) -> RewardFn:
    """The reward function ``rl.reward`` names (``scorer``: a reward model already loaded, for reward=model)."""
    if reward == "oracle":
        return oracle_reward
    if reward == "model":
        if scorer is None:
            if not reward_model:
                raise UserError("rl.reward=model needs rl.reward_model (a reward model folder from trainlab rm)",
                                key="rl.reward_model")
            try:
                from trainlab.rl.reward_model import load_reward_scorer  # type: ignore[attr-defined]
            except ImportError:
                raise UserError("rl.reward=model: this trainlab has no reward-model scorer", key="rl.reward") from None
            scorer = load_reward_scorer(reward_model, device)
        return model_reward(scorer)
    return load_user_reward(reward)


def apply_penalties(rewards: Tensor, eos: Tensor, lengths: Tensor, *, eos_penalty: float = 0.0,
                    length_penalty: float = 0.0, max_new_tokens: int = 1) -> Tensor:
    """``rewards - eos_penalty·[no EOS] - length_penalty·tokens/max_new_tokens`` (module docstring)."""
    out = rewards.float().clone()
    if eos_penalty:
        out = out - eos_penalty * (~eos.bool().cpu()).float()
    if length_penalty:
        out = out - length_penalty * lengths.float().cpu() / float(max_new_tokens)
    return out


def score_completions(fn: RewardFn, prompts: Sequence[str], completions: Sequence[str], items: Sequence[PromptItem],
                      completion_ids: list[list[int]] | None = None) -> Tensor:
    """Call a reward function (user functions also get ``completion_ids``)."""
    return fn(list(prompts), list(completions), list(items), completion_ids=completion_ids)  # type: ignore[call-arg]
