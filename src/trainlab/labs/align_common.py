"""What labs 1.7 and 1.8 share: the runs they name, what each row ran, and how they are measured.

* `AlignVariant`: a run of a lab. ``slug`` (``[a-z0-9-]+``) names its folder and its key in the
  lab's data; ``overrides`` is the explicit list of config overrides it adds; its display label is
  derived from the config it ran (`describe_run`), so a row cannot say "DPO" while it ran RPO.
* `dpo_stage_config`: the DPO stage both labs share (pure DPO, ``align.rpo_alpha=0``, spelled
  out so the stage does not depend on the method's default).
* `StepTimes`: per-step wall times of a run (a training-loop callback); `median_after_warmup`.
* `ReferenceHoldings`: what a run holds for its reference policy, measured on the live objects
  when training starts: the bytes of every tensor reachable from the objective other than the
  policy's own (a frozen reference model's weights), plus the bytes of the per-example ``ref_*``
  values the training data carries (cached reference log-probs). Nothing is read from the
  config: a method without a reference measures 0 because nothing is there.
* `ReleaseCheckpoint`: a lab run that saves no model (``save=False``) has its summary as output;
  its optimizer checkpoint is removed when training completes (unless ``train.keep_checkpoint``),
  as `run_alignment` does after saving a model.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from trainlab.align.config import AlignRunConfig
from trainlab.labs.common import slug as make_slug
from trainlab.train.callbacks import Callback

#: pure DPO: no NLL term (RPO is ``align.rpo_alpha > 0``, labelled as RPO)
PURE = ("align.rpo_alpha=0",)


@dataclass(frozen=True)
class AlignVariant:
    """A lab run: folder/key ``slug``, explicit ``overrides``, and the learning rate scaled by ``lr_scale``."""

    slug: str
    overrides: tuple[str, ...]
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if make_slug(self.slug) != self.slug:
            raise ValueError(f"not a slug: {self.slug!r} (use [a-z0-9-]+)")

    def override_list(self, base_lr: float) -> list[str]:
        """The overrides this run adds to the stage config (the learning rate written out)."""
        extra = [f"train.lr={base_lr * self.lr_scale:g}"] if self.lr_scale != 1.0 else []
        return [*self.overrides, *extra]


def describe_run(method: str, cfg: AlignRunConfig) -> str:
    """A display label from the config a run used: the loss, an NLL term (RPO) if any, β and lr."""
    a, lr = cfg.align, cfg.train.lr
    if method == "dpo":
        name = {"sigmoid": "DPO", "ipo": "IPO", "hinge": "hinge (SLiC)",
                "robust": "robust DPO"}[a.loss_type]
        if a.label_smoothing > 0:
            name = ("cDPO" if a.loss_type == "sigmoid" else name) + f" ε={a.label_smoothing:g}"
        if a.rpo_alpha > 0:
            name = f"RPO ({name} + {a.rpo_alpha:g}·NLL)"
        return f"{name}, β={a.beta:g}, lr={lr:g}"
    if method == "orpo":
        return f"ORPO, λ={a.orpo_lambda:g}, lr={lr:g}"
    if method == "simpo":
        return f"SimPO, β={a.beta:g}, γ={a.simpo_gamma:g}, lr={lr:g}"
    return f"{method.upper()}, lr={lr:g}"


def eval_task_records(cfg: AlignRunConfig, tokenizer: Any) -> list[Any]:
    """The held-out task prompts of a stage config: ``build_alignment_data(...).eval_records`` without
    tokenizing the training set when the data are the embedded tasks (what they are read from)."""
    if isinstance(cfg.align_data.source, str) and cfg.align_data.source == "embedded":
        from trainlab.align.records import embedded_alignment_data

        return list(embedded_alignment_data(cfg.align_data).eval_records)
    from trainlab.recipes.align import build_alignment_data

    return list(build_alignment_data("sft", cfg, tokenizer).eval_records)


def dpo_stage_config(ctx: Any) -> AlignRunConfig:
    """The shared DPO stage of labs 1.7 and 1.8: pure DPO with the method's other defaults."""
    from trainlab.recipes.align import stage_config

    return stage_config("dpo", ctx.preset, seed=ctx.seed, device=ctx.device, overrides=[*ctx.overrides, *PURE])


class StepTimes(Callback):
    """Wall seconds of every optimizer step of a run (the loop's ``step_time_s``)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        self.times.append(float(metrics["step_time_s"]))


def median_after_warmup(times: Sequence[float], warmup: int) -> float:
    """The median of ``times[warmup:]`` (the first steps allocate buffers and optimizer state)."""
    kept = list(times[warmup:])
    if not kept:
        raise ValueError(f"no step left after {warmup} warm-up steps of {len(times)}")
    return statistics.median(kept)


def _storage(t: Tensor) -> tuple[int, str, int]:
    st = t.untyped_storage()
    return st.data_ptr(), str(t.device), st.nbytes()


def reachable_tensor_bytes(roots: Iterable[Any], exclude: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct tensor storages reachable from ``roots`` (modules, tensors, containers
    and trainlab objects' attributes), leaving out the storages of ``exclude``."""
    skip = {_storage(t)[:2] for t in exclude}
    seen_obj: set[int] = set()
    seen: set[tuple[int, str]] = set()
    total = 0
    stack = list(roots)
    while stack:
        o = stack.pop()
        if o is None or isinstance(o, (int, float, str, bool, bytes)) or id(o) in seen_obj:
            continue
        seen_obj.add(id(o))
        if isinstance(o, Tensor):
            ptr, dev, nbytes = _storage(o)
            if (ptr, dev) not in skip and (ptr, dev) not in seen:
                seen.add((ptr, dev))
                total += nbytes
        elif isinstance(o, nn.Module):
            stack.extend(o.parameters())
            stack.extend(o.buffers())
            stack.extend(v for v in vars(o).values() if not isinstance(v, dict))  # plain attributes
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif type(o).__module__.startswith("trainlab") and hasattr(o, "__dict__"):
            stack.extend(vars(o).values())
    return total


class ReferenceHoldings(Callback):
    """At the start of training: bytes held for the reference policy (see the module docstring)."""

    def __init__(self) -> None:
        self.model_bytes = 0  # tensors reachable from the objective besides the policy's
        self.cached_bytes = 0  # per-example ``ref_*`` values in the training data
        self.measured = False

    def on_fit_start(self, trainer: Any) -> None:
        policy = trainer.model
        own = [*policy.parameters(), *policy.buffers()]
        self.model_bytes = reachable_tensor_bytes([trainer.objective], exclude=own)
        dataset = trainer.batcher.dataset
        total = 0
        for i in range(len(dataset)):
            item = dataset[i]
            total += sum(v.numel() * v.element_size() for k, v in item.items()
                         if k.startswith("ref_") and isinstance(v, Tensor))
        self.cached_bytes = total
        self.measured = True

    @property
    def total(self) -> int:
        return self.model_bytes + self.cached_bytes

    def to_dict(self) -> dict[str, int]:
        return {"reference_model_bytes": self.model_bytes, "cached_logps_bytes": self.cached_bytes,
                "total_bytes": self.total}


class ReleaseCheckpoint(Callback):
    """Remove the run's optimizer checkpoint when `Trainer.fit` completes (`Trainer.release_checkpoint`:
    kept with ``train.keep_checkpoint=true``). For lab runs with ``save=False``."""

    def on_fit_end(self, trainer: Any, result: Any) -> None:
        trainer.release_checkpoint()
