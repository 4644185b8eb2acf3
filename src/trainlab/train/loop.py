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

The step itself is `trainlab.train.step.optimizer_step`. Around it: logging (``metrics.jsonl``;
TensorBoard with ``report_to: tensorboard``; a progress bar), evaluation every ``eval_every``
steps, exact resume (model, optimizer, schedule, loss scale, data position, every RNG), and:

* Nothing lost: an atomic checkpoint every ``save_every`` steps or ``save_every_minutes`` minutes,
  whichever comes first, and at the end. SIGINT (Ctrl-C) or SIGTERM finishes the current step,
  saves and raises `TrainingInterrupted` (exit 130); a second one aborts at once. ``fit(resume=True)``
  refuses to start when there is no checkpoint, and refuses a checkpoint of another run (its
  ``identity``: input model and data fingerprints) unless ``force``. After a successful run the
  caller, once its output is safe, calls `Trainer.release_checkpoint` (removed unless
  ``keep_checkpoint``).
* Divergence: a non-finite loss or gradient in fp32/bf16 — or more than ``max_skipped_steps``
  consecutive fp16 overflows — saves the last good state and raises `TrainingDiverged`.
* Distributed (``trainlab <command> --nproc N`` or torchrun; `trainlab.distributed`): the same loop
  on every rank. The run's strategy (``dist.strategy``) wraps the model, each rank takes its
  ``1/dp`` share of every micro-batch (``StepBatcher.shard``), the step sums counts, loss and metrics
  over ranks (so every rank sees the single-process numbers), ranks agree every step on stopping
  and saving, checkpoints are torch.distributed.checkpoint folders, and rank 0 alone logs and writes.
* ``epochs`` instead of ``max_steps``: ``max_steps = ceil(epochs · examples / (batch_size ·
  grad_accum))``, as TRL derives it from ``num_train_epochs`` (our batcher drops no example at an
  epoch boundary, so an epoch is exactly ``examples / examples_per_step`` steps).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlab.config import TrainConfig, dump_config
from trainlab.errors import TrainingDiverged, TrainingInterrupted, UserError
from trainlab.optim import build_optimizer, build_scheduler
from trainlab.train import metrics as train_metrics
from trainlab.train import resume as train_resume
from trainlab.train.amp import LossScaler, autocast_context, build_loss_scaler
from trainlab.train.callbacks import Callback
from trainlab.train.checkpoint import CheckpointManager, ResumeMode, identity_mismatches
from trainlab.train.data import StepSource
from trainlab.train.device import resolve_device
from trainlab.train.metrics import MetricsLogger, NullMetricsLogger
from trainlab.train.objectives import Objective
from trainlab.train.result import EvalFn, Scheduler, StepWindow, TrainResult, isolated_rng
from trainlab.train.signals import install_stop_signals
from trainlab.train.step import (  # re-exported: the step's pieces lived here first
    StepHooks,
    StepOutcome,
    StepStats,
    accumulate_gradients,
    count_tokens,
    grad_norm_,
    optimizer_step,
    to_device,
)
from trainlab.utils import seed_everything, write_json

__all__ = ["EvalFn", "Scheduler", "StepHooks", "StepOutcome", "StepStats", "TrainResult", "Trainer",
           "accumulate_gradients", "count_tokens", "grad_norm_", "isolated_rng", "optimizer_step", "to_device"]

log = logging.getLogger("trainlab.train")

_Window = StepWindow  # the old private name


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

    ``identity`` says which run a checkpoint belongs to, e.g. ``{"model": <fingerprint of the input
    model>, "data": <fingerprint of the tokenized training set>}``: it is stored in every
    checkpoint, and resuming from one whose identity differs is refused unless ``fit(force=True)``.
    ``tensorboard=False`` turns TensorBoard off even when ``cfg.report_to`` asks for it.

    In a distributed run (`trainlab.distributed.env.current` is set) ``model`` stays the user's
    module (``trainer.model``; its parameters are shards under FSDP) and ``trainer.wrapped`` is what
    the step runs; `final_model` gathers the full weights on rank 0 for saving.
    """

    def __init__(self, model: nn.Module, objective: Objective, batcher: StepSource, cfg: TrainConfig,
                 out_dir: str | Path, *, eval_fn: EvalFn | None = None,
                 run_config: dict[str, Any] | None = None,
                 callbacks: Sequence[Callback] | None = None, quiet: bool = False,
                 optimizer: torch.optim.Optimizer | None = None, scheduler: Scheduler | None = None,
                 scaler: LossScaler | None = None, keep_every: int = 0, tensorboard: bool = True,
                 identity: dict[str, Any] | None = None) -> None:
        self.epoch_info: dict[str, Any] | None = None
        if cfg.epochs is not None:
            cfg, self.epoch_info = self._steps_from_epochs(cfg, batcher)
        from trainlab.distributed import env as dist_env
        from trainlab.distributed.checkpoint import DCPCheckpointManager
        from trainlab.distributed.strategy import build_strategy

        self.cfg = cfg
        self.identity = dict(identity or {})
        self.dist = dist_env.current()
        self.strategy = build_strategy(self.dist)
        self.strategy.validate(cfg)
        self.device = self.dist.device if self.dist is not None else resolve_device(cfg.device)
        autocast_context(self.device, cfg.precision)  # fail now, not at step 1, if unsupported
        self.model = model.to(self.device)
        if self.dist is not None:
            self._shard_batcher(batcher)
        self.wrapped = self._wrap(optimizer)
        self.objective = objective
        self.batcher = batcher
        self.out_dir = Path(out_dir)
        self.eval_fn = eval_fn
        self.run_config = run_config
        self.callbacks = list(callbacks or [])
        self.is_main = self.dist is None or self.dist.is_main
        self.quiet = quiet or not self.is_main
        self.tensorboard = tensorboard and cfg.report_to == "tensorboard"
        if self.tensorboard and not train_metrics.tensorboard_available():
            raise UserError("train.report_to=tensorboard needs the tensorboard package (pip install tensorboard); "
                            "or report_to=jsonl (metrics.jsonl is always written)")
        if optimizer is None:
            optimizer = self.strategy.build_optimizer(self.wrapped, cfg) if self.dist is not None else None
        self.optimizer = optimizer if optimizer is not None else build_optimizer(self.model, cfg)
        if optimizer is not None and self._renamed:
            _remap_optimizer(optimizer, self._renamed)
        self.scheduler: Scheduler = (scheduler if scheduler is not None
                                     else build_scheduler(self.optimizer, cfg))
        self.scaler: LossScaler = scaler if scaler is not None else build_loss_scaler(
            cfg.precision, self.device, cfg.init_loss_scale)
        self.checkpoints = CheckpointManager(self.out_dir, keep_every)
        self.dcp_checkpoints = DCPCheckpointManager(self.out_dir, keep_every, self.dist)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for name in ("batch_size", "grad_accum"):
            have = getattr(batcher, name, None)
            if have is not None and have != getattr(cfg, name):
                log.warning("batcher.%s = %s but train.%s = %s; the batcher's value is used",
                            name, have, name, getattr(cfg, name))
        self._reset_counters()

    @staticmethod
    def _steps_from_epochs(cfg: TrainConfig, batcher: StepSource) -> tuple[TrainConfig, dict[str, Any]]:
        """``cfg`` with ``max_steps = ceil(epochs · steps per epoch)`` from the batcher's dataset."""
        assert cfg.epochs is not None
        n = getattr(batcher, "n", None)
        per_step = getattr(batcher, "examples_per_step", None)
        if not n or not per_step:
            raise UserError("train.epochs needs a batcher with a known dataset length (StepBatcher); "
                            "set train.max_steps instead", key="train.epochs")
        steps = max(1, math.ceil(cfg.epochs * n / per_step - 1e-9))
        info = {"epochs": cfg.epochs, "max_steps": steps, "examples": int(n), "examples_per_step": int(per_step)}
        return cfg.model_copy(update={"max_steps": steps}), info

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
        self._last_save_time = time.monotonic()
        self._last_eval_step = -1
        self._signal_name = "SIGINT"
        self._completed = False

    def request_stop(self, reason: str) -> None:
        """End training after the current step (evaluate, save, return ``stopped: reason``)."""
        self._stop_reason = f"stopped: {reason}"

    def _config_dict(self) -> dict[str, Any]:
        return self.run_config if self.run_config is not None else {"train": dump_config(self.cfg)}

    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-exact resume needs (see `checkpoint`; one process)."""
        return {"model": train_resume.trained_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
                **train_resume.extra_state(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict` (one process)."""
        train_resume.load(self, "file", None, state)

    def save(self) -> Path:
        """Write the checkpoint for the current step now (collective in a distributed run)."""
        path = train_resume.save(self)
        self._last_saved_step = self.step
        self._last_save_time = time.monotonic()
        for cb in self.callbacks:
            cb.on_checkpoint(self, self.step, path)
        return path

    def latest_checkpoint(self) -> Path | None:
        found = train_resume.latest_state(self)
        return found[1] if found is not None else None

    def final_model(self) -> nn.Module | None:
        """The trained model with its full weights: ``trainer.model`` for one process and DDP, gathered
        from the shards under FSDP; None on ranks other than 0. Collective in a distributed run."""
        if self.dist is None:
            return self.model
        return self.strategy.final_model(self.wrapped)

    def _wrap(self, optimizer: torch.optim.Optimizer | None) -> nn.Module:
        """Wrap the model for the strategy; remember parameters it replaced (FSDP) for a given optimizer."""
        self._renamed: dict[int, nn.Parameter] = {}
        if self.dist is None:
            return self.model
        before = {n: p for n, p in self.model.named_parameters()}
        wrapped = self.strategy.wrap(self.model)
        self.model = self.strategy.unwrap(wrapped)
        after = dict(self.model.named_parameters())
        if optimizer is not None:
            self._renamed = {id(p): after[n] for n, p in before.items() if n in after and after[n] is not p}
        return wrapped

    def _shard_batcher(self, batcher: StepSource) -> None:
        assert self.dist is not None
        shard = getattr(batcher, "shard", None)
        if shard is None:
            raise UserError(f"this run's batcher ({type(batcher).__name__}) cannot split its steps over "
                            f"{self.dist.dp_world} data-parallel processes; run it on one process")
        shard(self.dist.dp_rank, self.dist.dp_world)

    # -- fit --------------------------------------------------------------------------------

    def fit(self, resume: ResumeMode = False, *, force: bool = False) -> TrainResult:
        """Train to ``cfg.max_steps`` (or a stop request); return a `TrainResult`.

        ``resume=True`` continues from ``out_dir/checkpoint.pt`` exactly where it was written and
        raises `UserError` if there is none; ``resume="or_start"`` starts fresh in that case (so the
        same command starts a run and restarts it after a crash). A checkpoint whose ``identity``
        differs from this trainer's (another input model, other data) is refused unless ``force``.
        ``resume=False`` starts fresh and overwrites any checkpoint and ``metrics.jsonl`` in ``out_dir``.

        SIGINT/SIGTERM: the current step finishes, the checkpoint is saved and `TrainingInterrupted`
        is raised (callbacks' ``on_fit_end`` is not called).
        """
        t_fit = time.perf_counter()
        self._reset_counters()
        resumed_from: int | None = None
        found = train_resume.latest_state(self) if resume else None
        if found is None and resume is True:
            raise UserError(f"--resume: no checkpoint in {self.out_dir} ({self.checkpoints.path.name}); run without "
                            "--resume to start, or with --resume-or-start to continue if there is one")
        notes: list[str] = []
        if found is not None:
            kind, path = found
            state = train_resume.read_meta(kind, path, self)
            self._check_identity(state.get("identity") or {}, force)
            try:
                train_resume.load(self, kind, path, state)
            except (RuntimeError, KeyError, ValueError) as exc:  # a checkpoint of another shape (forced)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"cannot resume from {path}: it does not fit this run ({first})") from None
            resumed_from = self.step
            del state
            if self.step > self.cfg.max_steps:  # it would save the checkpoint's weights as if trained to max_steps
                raise UserError(f"--resume: the checkpoint in {self.out_dir} is at step {self.step}, past "
                                f"train.max_steps={self.cfg.max_steps}: nothing to train; give --max-steps above "
                                f"{self.step} to continue it", key="train.max_steps")
        else:
            seed_everything(self.cfg.seed)
            if resume:
                notes.append(f"no checkpoint in {self.out_dir}; starting fresh")
            elif self.latest_checkpoint() is not None:
                notes.append(f"starting fresh in {self.out_dir}; its existing checkpoint will be overwritten")
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.out_dir / "config.json", self._config_dict())
            logger: MetricsLogger = MetricsLogger(self.out_dir, total_steps=self.cfg.max_steps, start_step=self.step,
                                                  resumed=resumed_from is not None, quiet=self.quiet,
                                                  tensorboard=self.tensorboard)
        else:
            logger = NullMetricsLogger(self.out_dir)
        for note in notes:
            logger.info(note)
        if self.epoch_info is not None:
            e = self.epoch_info
            logger.info(f"train.epochs={e['epochs']:g}: {e['max_steps']} optimizer steps ({e['examples']} examples, "
                        f"{e['examples_per_step']} per step)")
        if resumed_from is not None:
            logger.info(f"resumed from step {resumed_from} ({found[1] if found else self.checkpoints.path})")
        det_before = torch.are_deterministic_algorithms_enabled()
        # distributed: SIGTERM keeps its default (torchrun ends the other ranks with it after a failure)
        restore_signals = install_stop_signals(self, sigterm=self.dist is None)
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
            restore_signals()
            torch.use_deterministic_algorithms(det_before)
            logger.close()
        if stopped == "interrupted":
            raise TrainingInterrupted(self.step, self.cfg.max_steps, self.latest_checkpoint(), self._signal_name)
        self._completed = True

        result = TrainResult(
            steps=self.step, tokens=self.tokens, count=self.count, final_loss=self.last_loss,
            eval_history=list(self.eval_history), history=list(self.history),
            wall_time_s=time.perf_counter() - t_fit, train_time_s=self.train_time_s,
            tokens_per_s=self.tokens / self.train_time_s if self.train_time_s > 0 else 0.0,
            skipped_steps=self.skipped_steps, stopped_reason=stopped, out_dir=self.out_dir,
            checkpoint_path=self.latest_checkpoint(), metrics_path=logger.path,
            tensorboard_dir=logger.tb_dir, resumed_from=resumed_from,
        )
        for cb in self.callbacks:
            cb.on_fit_end(self, result)
        return result

    def release_checkpoint(self) -> bool:
        """After a completed `fit`, once the caller's output (the saved model) is safe: remove
        ``checkpoint.pt`` unless ``cfg.keep_checkpoint``. True if it was removed. Interrupted and
        diverged runs never get here (they raise), so their checkpoint stays."""
        if not self._completed or self.cfg.keep_checkpoint:
            return False
        if self.dist is not None:
            return self.dcp_checkpoints.remove()
        return self.checkpoints.remove()

    def _check_identity(self, saved: dict[str, Any], force: bool) -> None:
        differ = identity_mismatches(saved, self.identity)
        if not differ:
            return
        what = {"model": "from another model", "data": "on other data"}
        said = "; ".join(f"{what.get(k, f'with another {k}')} ({k} {saved[k]} != {self.identity[k]})"
                         for k in differ)
        if not force:
            raise UserError(f"cannot resume: the checkpoint in {self.out_dir} was trained {said}; use the same "
                            "inputs, another --out, or --force to resume anyway")
        log.warning("resuming although the checkpoint was trained %s (--force)", said)

    def _save_due(self, step: int) -> bool:
        """Every ``save_every`` steps, or when ``save_every_minutes`` passed since the last save."""
        cfg = self.cfg
        if cfg.save_every and step % cfg.save_every == 0:
            return True
        return bool(cfg.save_every_minutes) and time.monotonic() - self._last_save_time >= 60 * cfg.save_every_minutes

    def _agree(self, s: int) -> bool:
        """Whether to save after step ``s``; in a distributed run every rank agrees (one all-reduce of
        the stop and save wishes: a signal or a clock seen by one rank applies to all)."""
        due = self._save_due(s)
        if self.dist is None:
            return due
        interrupted, stopped, due_any = self.dist.all_reduce_sum(
            [self._stop_reason == "interrupted", self._stop_reason is not None, due])
        if interrupted and self._stop_reason != "interrupted":
            self._stop_reason = "interrupted"
        elif stopped and self._stop_reason is None:
            self._stop_reason = "stopped: another rank asked to stop"
        return due_any > 0

    def _run(self, logger: MetricsLogger) -> str:
        cfg = self.cfg
        self._last_save_time = time.monotonic()
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
            save = self._agree(s)
            if s < cfg.max_steps and self._stop_reason is None and save:
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
        outcome = optimizer_step(self.wrapped, self.objective, micro, self.optimizer, self.scaler,
                                 device=self.device, precision=cfg.precision, grad_clip=cfg.grad_clip,
                                 params=self._params, dist=self.strategy if self.dist is not None else None)
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
                eval_fn = self.eval_fn
                values = eval_fn(self.model) if self.dist is None else self.strategy.forward(self.wrapped, eval_fn)
        finally:
            self.model.train()
        self._last_eval_step = self.step
        if not values:  # nothing to evaluate on (e.g. no held-out data): no empty record or line
            return
        record = {"step": self.step, **{k: float(v) for k, v in values.items()}}
        self.eval_history.append(record)
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


def _remap_optimizer(optimizer: torch.optim.Optimizer, renamed: dict[int, nn.Parameter]) -> None:
    """Point a caller-built optimizer at the parameters a strategy replaced (FSDP's DTensor
    parameters, matched by name); it has no state yet."""
    for group in optimizer.param_groups:
        group["params"] = [renamed.get(id(p), p) for p in group["params"]]
