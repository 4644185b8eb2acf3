"""The training loop every method plugs into.

One optimizer step ``s`` (1-based) is::

    micro = batcher.next_step()                       # grad_accum micro-batches
    N     = Σ_mb objective.count(mb)                  # before any forward pass
    for mb in micro:
        out = objective(model, mb)                    # under autocast (bf16/fp16)
        backward(scale · out.loss_sum / N)            # scale = 1 unless fp16
    unscale_(grads); clip ‖g‖₂ to grad_clip           # clip on true (unscaled) gradients
    optimizer.step()                                  # skipped if fp16 grads overflowed
    scaler.update(); scheduler.step(); zero_grad(set_to_none=True)

Dividing by the step's total count ``N`` (not by ``grad_accum``) makes K micro-batches give the
gradient of one batch of the same examples, whatever the padding (see `objectives`).

Around it: logging (``metrics.jsonl``, TensorBoard if installed, a progress bar), evaluation
every ``eval_every`` steps, an atomic checkpoint every ``save_every`` steps and at the end, exact
resume (model, optimizer, schedule, loss scale, data position, every RNG), and divergence
handling: a non-finite loss or gradient in fp32/bf16 — or more than ``max_skipped_steps``
consecutive fp16 overflows — saves the last good state and raises `TrainingDiverged`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from trainlab.config import Precision, TrainConfig, dump_config
from trainlab.errors import TrainingDiverged
from trainlab.optim import build_optimizer, build_scheduler
from trainlab.train.amp import LossScaler, autocast_context, build_loss_scaler
from trainlab.train.callbacks import Callback
from trainlab.train.checkpoint import CheckpointManager, load_optimizer_state, rng_state, set_rng_state
from trainlab.train.data import StepSource
from trainlab.train.device import resolve_device
from trainlab.train.metrics import MetricsLogger
from trainlab.train.objectives import Batch, Objective
from trainlab.utils import seed_everything, write_json

log = logging.getLogger("trainlab.train")

EvalFn = Callable[[nn.Module], dict[str, float]]


class Scheduler(Protocol):
    """What the loop needs from a learning-rate scheduler (`CosineWarmupScheduler` or a torch one)."""

    def step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    """What `Trainer.fit` returns. Counters are cumulative over resumes of the same run."""

    steps: int
    tokens: int  # input tokens processed (non-padding where an attention mask says so)
    count: float  # objective units (supervised tokens for `CausalLMObjective`)
    final_loss: float  # loss of the last optimizer step (loss_sum / count)
    eval_history: list[dict[str, Any]]
    history: list[dict[str, Any]]  # the logged train records (as in metrics.jsonl)
    wall_time_s: float  # this fit() call, end to end
    train_time_s: float  # time inside optimizer steps (no eval/checkpoint), all resumes
    tokens_per_s: float  # tokens / train_time_s
    skipped_steps: int
    stopped_reason: str  # "max_steps", "interrupted" or "stopped: <callback's reason>"
    out_dir: Path
    checkpoint_path: Path | None
    metrics_path: Path
    tensorboard_dir: Path | None = None
    resumed_from: int | None = None  # the checkpoint step this call resumed from


@dataclass
class StepStats:
    """Gradient accumulation over one step's micro-batches (before the optimizer update)."""

    loss_sum: Tensor  # fp32 scalar, detached: Σ loss_sum over micro-batches
    count: float
    tokens: int
    metrics: dict[str, float] = field(default_factory=dict)  # count-weighted means


# ------------------------------------------------------------------------------------------
# Pieces usable on their own (and in tests)
# ------------------------------------------------------------------------------------------

def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def count_tokens(batch: Batch) -> int:
    """Input tokens in ``batch``: Σ attention masks if present (any ``*attention_mask`` key, so
    preference batches count both sides), else the size of the ``*input_ids`` tensors."""
    masks = [v for k, v in batch.items() if k.endswith("attention_mask") and isinstance(v, Tensor)]
    if masks:
        return int(sum(int(m.sum().item()) for m in masks))
    return int(sum(v.numel() for k, v in batch.items() if k.endswith("input_ids") and isinstance(v, Tensor)))


class StepHooks:
    """Observe one optimizer step from outside: ``phase(name, index)`` wraps each phase.

    Phases, in order: ``("forward", i)`` and ``("backward", i)`` for every micro-batch ``i``, then
    ``("optimizer", 0)`` (unscale, clip, update). Measurements (memory meters, the profiler's
    ``record_function``, saved-tensor hooks) subclass this instead of re-writing the step.
    ``forward_output(i, out)`` sees each micro-batch's `ObjectiveOutput` before it is released.
    """

    def phase(self, name: str, index: int) -> contextlib.AbstractContextManager[Any]:
        del name, index
        return contextlib.nullcontext()

    def forward_output(self, index: int, out: Any) -> None:
        del index, out


_NO_HOOKS = StepHooks()


def accumulate_gradients(model: nn.Module, objective: Objective, micro_batches: Sequence[Batch], *,
                         device: torch.device, precision: Precision = "fp32",
                         scaler: LossScaler | None = None, hooks: StepHooks | None = None) -> StepStats:
    """Forward + backward of every micro-batch, each scaled by ``1 / N`` (``N``: the step's count).

    Gradients accumulate into ``.grad`` (call ``zero_grad`` before). With ``N = 0`` (nothing
    supervised in the whole step) nothing is run and the returned count is 0.
    """
    hooks = hooks or _NO_HOOKS
    total = sum(objective.count(mb) for mb in micro_batches)
    tokens = sum(count_tokens(mb) for mb in micro_batches)
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)
    if total == 0:
        return StepStats(loss_sum=loss_sum, count=0, tokens=tokens)
    metric_sums: dict[str, float] = {}
    metric_weights: dict[str, float] = {}
    for i, mb in enumerate(micro_batches):
        mb = to_device(mb, device)
        with hooks.phase("forward", i):
            with autocast_context(device, precision):
                out = objective(model, mb)
            loss = out.loss_sum / total
        hooks.forward_output(i, out)
        loss_sum += out.loss_sum.detach().float()
        for k, v in out.metrics.items():
            metric_sums[k] = metric_sums.get(k, 0.0) + float(v) * float(out.count)
            metric_weights[k] = metric_weights.get(k, 0.0) + float(out.count)
        del out
        with hooks.phase("backward", i):
            (scaler.scale(loss) if scaler is not None else loss).backward()
            del loss
    metrics = {k: metric_sums[k] / metric_weights[k] for k in metric_sums if metric_weights[k] > 0}
    return StepStats(loss_sum=loss_sum, count=total, tokens=tokens, metrics=metrics)


@dataclass
class StepOutcome:
    """What one optimizer step did: its accumulated stats, loss, gradient norm, whether it updated."""

    stats: StepStats
    loss: float  # loss_sum / count of the step (nan when nothing was supervised)
    grad_norm: float  # global L2 norm before clipping (unscaled)
    stepped: bool  # the update was applied (False: fp16 overflow, empty step, or non-finite)
    finite: bool  # loss and gradient norm finite (always True for fp16, whose overflow the scaler handles)


def optimizer_step(model: nn.Module, objective: Objective, micro_batches: Sequence[Batch],
                   optimizer: torch.optim.Optimizer, scaler: LossScaler, *, device: torch.device,
                   precision: Precision = "fp32", grad_clip: float = 0.0,
                   params: Sequence[nn.Parameter] | None = None, hooks: StepHooks | None = None) -> StepOutcome:
    """THE optimizer step (see the module docstring): accumulate, unscale, clip, update, zero grads.

    Every training run and every measurement of a training step calls this function; what a
    measurement needs to see it gets through ``hooks``. In fp32/bf16 a non-finite loss or gradient
    norm skips the update and returns ``finite=False`` (the `Trainer` turns that into
    `TrainingDiverged`); in fp16 the loss scaler skips overflowing steps itself.
    """
    hooks = hooks or _NO_HOOKS
    stats = accumulate_gradients(model, objective, micro_batches, device=device, precision=precision,
                                 scaler=scaler, hooks=hooks)
    if stats.count == 0:
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(stats, math.nan, 0.0, stepped=False, finite=True)
    if params is None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
    with hooks.phase("optimizer", 0):
        scaler.unscale_(optimizer)
        norm = grad_norm_(params, grad_clip)
        # One host sync per step, for both values; needed anyway to detect divergence.
        pair = torch.stack([stats.loss_sum / stats.count, norm.float().to(stats.loss_sum.device)])
        loss, gnorm = pair.tolist()
        finite = precision == "fp16" or (math.isfinite(loss) and math.isfinite(gnorm))
        stepped = False
        if finite:
            stepped = scaler.step(optimizer)
            scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(stats, loss, gnorm, stepped=stepped, finite=finite)


def grad_norm_(params: Sequence[nn.Parameter], max_norm: float) -> Tensor:
    """Global L2 norm of the gradients (before clipping); clip to ``max_norm`` if it is > 0.

    Clipping by global norm (Pascanu et al., "On the difficulty of training recurrent neural
    networks", 2013) rescales all gradients by ``min(1, max_norm / ‖g‖)``, keeping the direction.
    """
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Run a block without disturbing the training RNG streams (Python, numpy, torch, CUDA).

    Evaluation that samples would otherwise shift dropout masks of later steps, making results
    depend on how often one evaluates.
    """
    py, npst = random.getstate(), np.random.get_state()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npst)


class _Window:
    """Sums over the steps since the last log line (saved in checkpoints so resumed logs match)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.updates = 0  # steps whose update was applied (loss and grad norm are averaged over these)
        self.loss_sum = 0.0
        self.count = 0.0
        self.tokens = 0
        self.time = 0.0
        self.grad_norm = 0.0
        self.metric_sums: dict[str, float] = {}
        self.metric_weights: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


# ------------------------------------------------------------------------------------------
# The Trainer
# ------------------------------------------------------------------------------------------

class Trainer:
    """Trains ``model`` on ``objective`` over ``batcher``'s steps as ``cfg`` says.

    ``model`` must be initialised already (seed it yourself, e.g. ``seed_everything(cfg.seed)``
    before building it); the trainer moves it to ``cfg.device``. ``batcher`` is the source of
    truth for batch size and accumulation (a `StepBatcher`, or anything with ``next_step`` and a
    state dict). ``eval_fn(model) -> {name: value}`` runs in eval mode under ``no_grad`` and the
    training precision's autocast, with the training RNG streams isolated.

    ``run_config`` (the whole run's config as a dict) is stored in ``config.json`` and in every
    checkpoint; without it the `TrainConfig` alone is. ``optimizer``, ``scheduler`` and ``scaler``
    override the defaults built from ``cfg`` (e.g. an optimizer over LoRA parameters only, or a
    custom loss scaler). ``keep_every`` > 0 keeps a snapshot every that many steps besides the
    latest checkpoint.
    """

    def __init__(self, model: nn.Module, objective: Objective, batcher: StepSource, cfg: TrainConfig,
                 out_dir: str | Path, *, eval_fn: EvalFn | None = None,
                 run_config: dict[str, Any] | None = None,
                 callbacks: Sequence[Callback] | None = None, quiet: bool = False,
                 optimizer: torch.optim.Optimizer | None = None, scheduler: Scheduler | None = None,
                 scaler: LossScaler | None = None, keep_every: int = 0, tensorboard: bool = True) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        autocast_context(self.device, cfg.precision)  # fail now, not at step 1, if unsupported
        self.model = model.to(self.device)
        self.objective = objective
        self.batcher = batcher
        self.out_dir = Path(out_dir)
        self.eval_fn = eval_fn
        self.run_config = run_config
        self.callbacks = list(callbacks or [])
        self.quiet = quiet
        self.tensorboard = tensorboard
        self.optimizer = optimizer if optimizer is not None else build_optimizer(self.model, cfg)
        self.scheduler: Scheduler = (scheduler if scheduler is not None
                                     else build_scheduler(self.optimizer, cfg))
        self.scaler: LossScaler = scaler if scaler is not None else build_loss_scaler(
            cfg.precision, self.device, cfg.init_loss_scale)
        self.checkpoints = CheckpointManager(self.out_dir, keep_every)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for name in ("batch_size", "grad_accum"):
            have = getattr(batcher, name, None)
            if have is not None and have != getattr(cfg, name):
                log.warning("batcher.%s = %s but train.%s = %s; the batcher's value is used",
                            name, have, name, getattr(cfg, name))
        self._reset_counters()

    # -- state ------------------------------------------------------------------------------

    def _reset_counters(self) -> None:
        self.step = 0
        self.tokens = 0
        self.count = 0.0
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.train_time_s = 0.0
        self.last_loss = math.nan
        self.history: list[dict[str, Any]] = []
        self.eval_history: list[dict[str, Any]] = []
        self._window = _Window()
        self._stop_reason: str | None = None
        self._last_saved_step = -1
        self._last_eval_step = -1

    def request_stop(self, reason: str) -> None:
        """End training after the current step (evaluate, save, return ``stopped: reason``)."""
        self._stop_reason = f"stopped: {reason}"

    def _config_dict(self) -> dict[str, Any]:
        return self.run_config if self.run_config is not None else {"train": dump_config(self.cfg)}

    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-exact resume needs (see `checkpoint`)."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "batcher": self.batcher.state_dict(),
            "rng": rng_state(),
            "config": self._config_dict(),
            "train_config": dump_config(self.cfg),
            "metrics": {
                "tokens": self.tokens, "count": self.count, "skipped_steps": self.skipped_steps,
                "consecutive_skips": self.consecutive_skips, "train_time_s": self.train_time_s,
                "last_loss": self.last_loss, "history": self.history, "eval_history": self.eval_history,
                "window": self._window.state_dict(), "last_eval_step": self._last_eval_step,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        old = state.get("train_config", {})
        new = dump_config(self.cfg)
        changed = sorted(k for k in new if k in old and old[k] != new[k])
        if changed:
            log.warning("resuming with changed train settings: %s",
                        ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in changed))
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when the checkpoint was fp32/bf16
            self.scaler.load_state_dict(state["scaler"])
        self.batcher.load_state_dict(state["batcher"])
        set_rng_state(state["rng"])
        m = state["metrics"]
        self.step = int(state["step"])
        self.tokens = int(m["tokens"])
        self.count = float(m["count"])
        self.skipped_steps = int(m["skipped_steps"])
        self.consecutive_skips = int(m["consecutive_skips"])
        self.train_time_s = float(m["train_time_s"])
        self.last_loss = float(m["last_loss"])
        self.history = list(m["history"])
        self.eval_history = list(m["eval_history"])
        self._window.load_state_dict(m["window"])
        self._last_eval_step = int(m["last_eval_step"])
        self._last_saved_step = self.step

    def save(self) -> Path:
        """Write the checkpoint for the current step now."""
        path = self.checkpoints.save(self.state_dict(), self.step)
        self._last_saved_step = self.step
        for cb in self.callbacks:
            cb.on_checkpoint(self, self.step, path)
        return path

    # -- fit --------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``cfg.max_steps`` (or a stop request); return a `TrainResult`.

        ``resume=True`` continues from ``out_dir/checkpoint.pt`` exactly where it was written;
        if there is none, training starts fresh (logged) — so the same command can start a
        run and restart it after a crash. ``resume=False`` starts fresh and overwrites any
        checkpoint and ``metrics.jsonl`` in ``out_dir``.
        """
        t_fit = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._reset_counters()
        resumed_from: int | None = None
        state = self.checkpoints.load() if resume else None
        if state is not None:
            self.load_state_dict(state)
            resumed_from = self.step
            del state
        else:
            seed_everything(self.cfg.seed)
            if resume:
                log.info("no checkpoint in %s; starting fresh", self.out_dir)
            elif self.checkpoints.latest() is not None:
                log.info("starting fresh in %s; its existing checkpoint will be overwritten", self.out_dir)
        write_json(self.out_dir / "config.json", self._config_dict())

        logger = MetricsLogger(self.out_dir, total_steps=self.cfg.max_steps, start_step=self.step,
                               resumed=resumed_from is not None, quiet=self.quiet,
                               tensorboard=self.tensorboard)
        if resumed_from is not None:
            logger.info(f"resumed from step {resumed_from} ({self.checkpoints.path})")
        det_before = torch.are_deterministic_algorithms_enabled()
        restore_sigint = self._install_sigint()
        try:
            if self.cfg.deterministic:
                # cuBLAS needs a fixed workspace for reproducible GEMMs; must be set before its init.
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True)
            self.model.train()
            for cb in self.callbacks:
                cb.on_fit_start(self)
            stopped = self._run(logger)
        finally:
            restore_sigint()
            torch.use_deterministic_algorithms(det_before)
            logger.close()

        result = TrainResult(
            steps=self.step, tokens=self.tokens, count=self.count, final_loss=self.last_loss,
            eval_history=list(self.eval_history), history=list(self.history),
            wall_time_s=time.perf_counter() - t_fit, train_time_s=self.train_time_s,
            tokens_per_s=self.tokens / self.train_time_s if self.train_time_s > 0 else 0.0,
            skipped_steps=self.skipped_steps, stopped_reason=stopped, out_dir=self.out_dir,
            checkpoint_path=self.checkpoints.latest(), metrics_path=logger.path,
            tensorboard_dir=logger.tb_dir, resumed_from=resumed_from,
        )
        for cb in self.callbacks:
            cb.on_fit_end(self, result)
        return result

    def _install_sigint(self) -> Callable[[], None]:
        """First Ctrl-C: finish the step, save, return ``interrupted``. Second: stop at once."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            if self._stop_reason == "interrupted":
                raise KeyboardInterrupt
            self._stop_reason = "interrupted"
            log.warning("interrupt: stopping after this step (Ctrl-C again to abort without saving)")

        signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous)

    def _run(self, logger: MetricsLogger) -> str:
        cfg = self.cfg
        while self.step < cfg.max_steps and self._stop_reason is None:
            metrics = self._train_step(logger)
            s = self.step
            if s == 1 or s % cfg.log_every == 0 or s == cfg.max_steps:
                self._log(logger, metrics)
            else:
                logger.advance(s)
            for cb in self.callbacks:
                cb.on_step_end(self, s, metrics)
            if cfg.eval_every and s % cfg.eval_every == 0:
                self._evaluate(logger)
            if cfg.save_every and s % cfg.save_every == 0:
                self.save()
        stopped = self._stop_reason or "max_steps"
        if stopped != "interrupted" and self._last_eval_step != self.step:
            self._evaluate(logger)
        if self._last_saved_step != self.step:
            self.save()
        return stopped

    def _train_step(self, logger: MetricsLogger) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        batcher_before = self.batcher.state_dict()
        micro = self.batcher.next_step()
        lr = float(self.optimizer.param_groups[0]["lr"])
        outcome = optimizer_step(self.model, self.objective, micro, self.optimizer, self.scaler,
                                 device=self.device, precision=cfg.precision, grad_clip=cfg.grad_clip,
                                 params=self._params)
        stats, loss, gnorm, stepped = outcome.stats, outcome.loss, outcome.grad_norm, outcome.stepped
        step = self.step + 1
        if stats.count == 0:
            # Nothing supervised in the whole step (e.g. every prompt filled the window): there
            # is no gradient signal, and an AdamW update from zero grads would still move the
            # weights (momentum, decay). The update was skipped; the schedule follows the step counter.
            logger.info(f"step {step}: no supervised units in the batch; update skipped")
        elif not outcome.finite:
            self._diverged(step, f"loss = {loss}, grad norm = {gnorm} ({cfg.precision})", batcher_before)
        self.scheduler.step()
        self.step = step

        dt = time.perf_counter() - t0
        self.train_time_s += dt
        self.tokens += stats.tokens
        self.count += stats.count
        w = self._window
        w.steps += 1
        w.tokens += stats.tokens
        w.time += dt
        if stepped:
            self.last_loss = loss
            self.consecutive_skips = 0
            w.updates += 1
            w.loss_sum += loss * stats.count
            w.count += stats.count
            w.grad_norm += gnorm
            for k, v in stats.metrics.items():
                w.metric_sums[k] = w.metric_sums.get(k, 0.0) + v * stats.count
                w.metric_weights[k] = w.metric_weights.get(k, 0.0) + stats.count
        else:
            self.skipped_steps += 1
            if stats.count:  # an fp16 overflow (an empty step is not the scaler's failure)
                self.consecutive_skips += 1
                if self.consecutive_skips > cfg.max_skipped_steps:
                    self._diverged(step, f"{self.consecutive_skips} consecutive fp16 overflow steps "
                                   f"(loss scale now {self.scaler.get_scale():g})", None)
        return {"step": step, "loss": loss, "lr": lr, "grad_norm": gnorm,
                "loss_scale": self.scaler.get_scale(), "tokens": stats.tokens, "count": stats.count,
                "step_time_s": dt, "tokens_per_s": stats.tokens / dt if dt > 0 else 0.0,
                "skipped": not stepped, **stats.metrics}

    def _log(self, logger: MetricsLogger, metrics: dict[str, Any]) -> None:
        """One train record: means over the steps since the previous record."""
        w = self._window
        record: dict[str, Any] = {
            "step": self.step,
            "loss": w.loss_sum / w.count if w.count else math.nan,
            "lr": metrics["lr"],
            "grad_norm": w.grad_norm / w.updates if w.updates else math.nan,
            "loss_scale": metrics["loss_scale"],
            "tokens_per_s": w.tokens / w.time if w.time > 0 else 0.0,
            "step_time_s": w.time / max(1, w.steps),
            "tokens_seen": self.tokens,
            "count_seen": self.count,
            "skipped_steps": self.skipped_steps,
            "train_time_s": self.train_time_s,
        }
        for k, v in w.metric_sums.items():
            if w.metric_weights.get(k):
                record[k] = v / w.metric_weights[k]
        self.history.append(record)
        logger.train(record)
        w.reset()

    def _evaluate(self, logger: MetricsLogger) -> None:
        if self.eval_fn is None:
            return
        self.model.eval()
        try:
            amp = autocast_context(self.device, self.cfg.precision)
            with isolated_rng(self.device), torch.no_grad(), amp:
                values = self.eval_fn(self.model)
        finally:
            self.model.train()
        record = {"step": self.step, **{k: float(v) for k, v in values.items()}}
        self.eval_history.append(record)
        self._last_eval_step = self.step
        logger.eval(record)
        for cb in self.callbacks:
            cb.on_eval(self, self.step, record)

    def _diverged(self, step: int, what: str, batcher_before: dict[str, Any] | None) -> None:
        """Save the last good state and raise `TrainingDiverged`."""
        self.optimizer.zero_grad(set_to_none=True)
        if batcher_before is not None:
            # The failed step never happened: its update was not applied, so rewind its data too;
            # resuming (with a lower lr) replays exactly that batch.
            self.batcher.load_state_dict(batcher_before)
        else:
            self.step = step  # fp16 skips: the streak's steps did happen (schedule and data moved)
        path = self.save()
        raise TrainingDiverged(
            f"training diverged at step {step}: {what}. The last good state (step {self.step}) is saved "
            f"in {path}. Try a lower learning rate (train.lr, now {self.cfg.lr:g}), a longer warm-up "
            f"(train.warmup_steps), gradient clipping (train.grad_clip), or precision bf16 instead of fp16; "
            f"then rerun with resume.")
