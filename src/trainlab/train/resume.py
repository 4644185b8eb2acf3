"""The trainer's state: what a checkpoint holds and how it is written and read back.

One process writes ``checkpoint.pt`` (`trainlab.train.checkpoint`: one file, atomic); a
distributed run writes ``checkpoint.dcp`` (`trainlab.distributed.checkpoint`: torch.distributed.checkpoint
for model + optimizer, ``trainer_state.pt`` for the rest). Either resumes in either mode:

* file → one process: ``load_state_dict`` (bit-exact);
* DCP → any world size, one process included: the model and optimizer state dicts of *this* run's
  layout (`Strategy.model_state_dict`, keyed by parameter names) are filled by ``dcp.load``;
* file → many processes: every rank reads the file; the full model state and the optimizer state,
  whose positions are turned into parameter names, are loaded with ``full_state_dict=True``.

RNG: every rank's streams are saved (rank 0 gathers them); resuming on the same world size gives
each rank its own back, on another world size every rank takes rank 0's.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import torch

from trainlab.config import dump_config
from trainlab.train.checkpoint import load_checkpoint, load_optimizer_state, rng_state, set_rng_state

if TYPE_CHECKING:
    from trainlab.train.loop import Trainer

log = logging.getLogger("trainlab.train")


def extra_state(trainer: Trainer) -> dict[str, Any]:
    """Everything but the model and optimizer tensors."""
    state = {
        "step": trainer.step,
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "batcher": trainer.batcher.state_dict(),
        "rng": rng_state(),
        "config": trainer._config_dict(),
        "train_config": dump_config(trainer.cfg),
        "identity": trainer.identity,
        "metrics": {
            "tokens": trainer.tokens, "count": trainer.count, "skipped_steps": trainer.skipped_steps,
            "consecutive_skips": trainer.consecutive_skips, "train_time_s": trainer.train_time_s,
            "last_loss": trainer.last_loss, "history": trainer.history, "eval_history": trainer.eval_history,
            "window": trainer._window.state_dict(), "last_eval_step": trainer._last_eval_step,
        },
    }
    if trainer.dist is not None:
        state["rng_ranks"] = trainer.dist.all_gather_object(state["rng"])
        state["world"] = trainer.dist.world
    return state


def load_extra_state(trainer: Trainer, state: dict[str, Any]) -> None:
    old = state.get("train_config", {})
    new = dump_config(trainer.cfg)
    changed = sorted(k for k in new if k in old and old[k] != new[k])
    if changed:
        log.warning("resuming with changed train settings: %s",
                    ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in changed))
    trainer.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:  # empty when the checkpoint was fp32/bf16
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.batcher.load_state_dict(state["batcher"])
    ranks = state.get("rng_ranks")
    world = trainer.dist.world if trainer.dist is not None else 1
    rank = trainer.dist.rank if trainer.dist is not None else 0
    set_rng_state(ranks[rank] if ranks is not None and len(ranks) == world else state["rng"])
    m = state["metrics"]
    trainer.step = int(state["step"])
    trainer.tokens = int(m["tokens"])
    trainer.count = float(m["count"])
    trainer.skipped_steps = int(m["skipped_steps"])
    trainer.consecutive_skips = int(m["consecutive_skips"])
    trainer.train_time_s = float(m["train_time_s"])
    trainer.last_loss = float(m["last_loss"])
    trainer.history = list(m["history"])
    trainer.eval_history = list(m["eval_history"])
    trainer._window.load_state_dict(m["window"])
    trainer._last_eval_step = int(m["last_eval_step"])
    trainer._last_saved_step = trainer.step


def _keep_hyper(optimizer: torch.optim.Optimizer) -> Any:
    """Context: restore the optimizer's current hyperparameters after loading a state (as
    `load_optimizer_state` does for the file format)."""

    @contextlib.contextmanager
    def ctx() -> Any:
        current = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        yield
        for group, hyper in zip(optimizer.param_groups, current, strict=False):
            group.update(hyper)

    return ctx()


def frozen_parameter_names(model: torch.nn.Module) -> set[str]:
    """Every state-dict name of a parameter that does not train (``requires_grad=False``: a PEFT run's base),
    tied aliases included."""
    return {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trained_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without its frozen parameters: training never changes them and the resumed run loads
    them from its ``--model`` folder, whose identity the checkpoint records (a LoRA checkpoint of a 7B model is
    then megabytes, not the 28 GB of fp32 base weights)."""
    frozen = frozen_parameter_names(model)
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def load_trained_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Inverse of `trained_state_dict`: what the checkpoint lacks must be a frozen parameter of ``model``."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    lacking = set(missing) - frozen_parameter_names(model)
    if unexpected or lacking:
        raise RuntimeError(f"checkpoint does not fit the model: missing {sorted(lacking)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")


def save(trainer: Trainer) -> Any:
    """Write the checkpoint of the current step in this run's format; return its path."""
    if trainer.dist is None:
        state = {"model": trained_state_dict(trainer.model), "optimizer": trainer.optimizer.state_dict(),
                 **extra_state(trainer)}
        path = trainer.checkpoints.save(state, trainer.step)
        if trainer.dcp_checkpoints.latest() is not None:  # a stale distributed checkpoint of this folder
            trainer.dcp_checkpoints.remove()
        return path
    strategy, wrapped = trainer.strategy, trainer.wrapped
    tensors = {"model": strategy.model_state_dict(wrapped),
               "optimizer": strategy.optimizer_state_dict(wrapped, trainer.optimizer)}
    extra = extra_state(trainer)
    path = trainer.dcp_checkpoints.save(tensors, extra, trainer.step)
    if trainer.dist.is_main:
        trainer.checkpoints.remove()  # a stale single-process checkpoint of this folder
    return path


def latest_state(trainer: Trainer) -> tuple[str, Any] | None:
    """``("dcp", path)`` or ``("file", path)`` of the checkpoint to resume from, or None."""
    dcp_path = trainer.dcp_checkpoints.latest()
    if dcp_path is not None:
        return "dcp", dcp_path
    file_path = trainer.checkpoints.latest()
    return ("file", file_path) if file_path is not None else None


def read_meta(kind: str, path: Any, trainer: Trainer) -> dict[str, Any]:
    """The checkpoint's plain state (identity, step, ...): the DCP trainer state, or the whole file."""
    if kind == "dcp":
        state = trainer.dcp_checkpoints.read_state(path)
        assert state is not None
        return state
    return load_checkpoint(path)


def load(trainer: Trainer, kind: str, path: Any, state: dict[str, Any]) -> None:
    """Load model, optimizer and the rest from the checkpoint ``(kind, path)`` whose plain state
    `read_meta` returned as ``state``."""
    strategy, wrapped, opt = trainer.strategy, trainer.wrapped, trainer.optimizer
    if kind == "file" and trainer.dist is None:
        load_trained_state_dict(trainer.model, state["model"])
        load_optimizer_state(opt, state["optimizer"])
    elif kind == "file":
        _load_file_distributed(trainer, state)
    else:
        tensors = {"model": strategy.model_state_dict(wrapped),
                   "optimizer": strategy.optimizer_state_dict(wrapped, opt)}
        trainer.dcp_checkpoints.load_tensors(tensors, path)
        strategy.load_model_state_dict(wrapped, tensors["model"])
        with _keep_hyper(opt):
            strategy.load_optimizer_state_dict(wrapped, opt, tensors["optimizer"])
    load_extra_state(trainer, state)


def _load_file_distributed(trainer: Trainer, state: dict[str, Any]) -> None:
    """A one-process checkpoint into a distributed run: full state dicts on every rank."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    wrapped, opt = trainer.wrapped, trainer.optimizer
    set_model_state_dict(wrapped, state["model"], options=opts)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    saved = state["optimizer"]
    by_name = {"state": {order[int(i)]: v for i, v in saved["state"].items()},
               "param_groups": [{**{k: v for k, v in g.items() if k != "params"},
                                 "params": [order[int(i)] for i in g["params"]]} for g in saved["param_groups"]]}
    with _keep_hyper(opt):
        set_optimizer_state_dict(wrapped, opt, by_name, options=opts)
