"""AdaLoRA: LoRA in SVD form whose rank budget is re-allocated by importance during training (Zhang et al., 2023,
"AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR, arXiv:2303.10512)::

    h = W₀x + (α / (r₀ + 10⁻⁵)) · P Λ Q x,   P = lora_B ∈ R^{d×r₀}, Λ = diag(lora_E), Q = lora_A ∈ R^{r₀×k}

Λ starts at 0 (so the model starts as the base), P and Q at N(0, 0.02). ``r₀`` = ``peft.adalora_init_r``; the
scale stays ``α / r₀`` while triplets are pruned (as HF PEFT's ``ranknum``).

**Importance** of every entry ``w`` of P, Λ, Q after each optimizer step: ``I = |w · ∂L/∂w|``, smoothed
``Ī ← β₁Ī + (1−β₁)I`` (sensitivity) and ``Ū ← β₂Ū + (1−β₂)|I − Ī|`` (uncertainty), score ``s = Ī · Ū``. A triplet
``i`` scores ``s(λᵢ) + mean_j s(Q_ij) + mean_j s(P_ji)``.

**Budget schedule** (total ``T`` steps): ``r₀·n`` triplets for the first ``tinit`` steps, then a cubic decrease
``b(t) = b_T + (b₀ − b_T)(1 − (t − tinit)/(T − tfinal − tinit))³`` to ``b_T = r·n`` (``r = peft.r``, the target
average rank), applied every ``deltaT`` steps by zeroing the λ of the lowest-scoring triplets; fixed for the last
``tfinal`` steps (the pruned λ are kept at 0).

**Orthogonality regularizer** added to the loss: ``γ · mean over P, Q of ‖PᵀP − I‖_F`` / ``‖QQᵀ − I‖_F``
(``γ = peft.adalora_orth_reg``) keeps P and Q near-orthogonal, so Λ stays a meaningful spectrum.

HF PEFT format: ``peft_type: ADALORA``, tensors ``<path>.lora_A`` ``[r, k]``, ``.lora_E`` ``[r, 1]``, ``.lora_B``
``[d, r]`` with only the kept triplets and ``rank_pattern`` ``{"<path>.lora_E": [kept?] * r₀}`` once pruned; the
schedule and the allocator's state are PEFT's ``AdaLoraConfig`` / ``RankAllocator`` (this module implements them
itself; the EMA scores are module buffers so that a checkpoint resumes them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.peft import hf_format
from trainlab.peft.config import PeftConfig
from trainlab.peft.lora import base_weight, fold_into_base, lora_from_peft, make_generator
from trainlab.peft.registry import PeftInfo, PeftMethodSpec, register_peft_method
from trainlab.peft.targets import count_parameters, find_targets, freeze, is_conv1d, linear_shape, replace_module

_PARAMS = ("lora_A", "lora_E", "lora_B")


class SVDLinear(nn.Module):
    """``base(x) + α/(r₀+1e-5) · B (A ⊙ E) dropout(x)`` with a kept-triplet mask and importance buffers."""

    def __init__(self, base_layer: nn.Module, init_r: int, alpha: float, dropout: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = linear_shape(base_layer)
        self.fan_in_fan_out = is_conv1d(base_layer)
        w = getattr(base_layer, "weight", None)
        dtype = w.dtype if w is not None and w.is_floating_point() else torch.float32
        device = next(base_layer.parameters()).device
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.lora_A = nn.Parameter(torch.empty(init_r, self.in_features, **kw).normal_(0, 0.02, generator=generator))
        self.lora_E = nn.Parameter(torch.zeros(init_r, 1, **kw))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, init_r, **kw).normal_(0, 0.02, generator=generator))
        self.init_r, self.ranknum, self.scaling = init_r, float(init_r), float(alpha)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adapter_enabled = True
        self.register_buffer("rank_mask", torch.ones(init_r, dtype=torch.bool, device=device))
        for name in _PARAMS:  # sensitivity and uncertainty EMAs, in checkpoints (not in the adapter file)
            p = getattr(self, name)
            self.register_buffer(f"{name}_ipt", torch.zeros_like(p, dtype=torch.float32))
            self.register_buffer(f"{name}_unc", torch.zeros_like(p, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        if not self.adapter_enabled:
            return result
        h = self.lora_dropout(x)
        a = (self.lora_A * self.lora_E).to(x.dtype)
        return result + (h @ a.T @ self.lora_B.to(x.dtype).T) * (self.scaling / (self.ranknum + 1e-5))

    def delta_weight(self) -> Tensor:
        return self.lora_B @ (self.lora_A * self.lora_E) * (self.scaling / (self.ranknum + 1e-5))

    def merged_layer(self) -> nn.Module:
        w = base_weight(self.base_layer)
        return fold_into_base(self.base_layer, w + self.delta_weight().to(w.dtype))

    @torch.no_grad()
    def update_importance(self, beta1: float, beta2: float) -> None:
        for name in _PARAMS:
            p = getattr(self, name)
            if p.grad is None:
                continue
            ipt = (p * p.grad).abs().float()
            avg = getattr(self, f"{name}_ipt").mul_(beta1).add_(ipt, alpha=1 - beta1)
            getattr(self, f"{name}_unc").mul_(beta2).add_((ipt - avg).abs(), alpha=1 - beta2)

    def triplet_scores(self) -> Tensor:
        """``s(λᵢ) + mean_j s(Q_ij) + mean_j s(P_ji)`` with ``s = Ī·Ū`` (module docstring)."""
        def score(name: str) -> Tensor:
            return getattr(self, f"{name}_ipt") * getattr(self, f"{name}_unc")

        return score("lora_E").view(-1) + score("lora_A").mean(dim=1) + score("lora_B").mean(dim=0)

    @torch.no_grad()
    def apply_mask(self, keep: Tensor | None = None) -> None:
        if keep is not None:
            self.rank_mask.copy_(keep)
        self.lora_E.masked_fill_(~self.rank_mask.view(-1, 1), 0.0)

    @torch.no_grad()
    def reset_importance(self) -> None:
        for name in _PARAMS:
            getattr(self, f"{name}_ipt").zero_()
            getattr(self, f"{name}_unc").zero_()

    def extra_repr(self) -> str:
        return f"init_r={self.init_r}, kept={int(self.rank_mask.sum())}, scaling={self.scaling:g}"


def svd_modules(model: nn.Module) -> list[tuple[str, SVDLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SVDLinear)]


# --------------------------------------------------------------------------------------------
# The rank allocator (PEFT's RankAllocator + AdaLoraModel.update_and_allocate)
# --------------------------------------------------------------------------------------------


class RankAllocator:
    """Importance-based budget allocation over a model's `SVDLinear` modules (module docstring)."""

    def __init__(self, model: nn.Module, cfg: PeftConfig) -> None:
        self.modules = [m for _, m in svd_modules(model)]
        self.cfg = cfg
        self.total_step = total_steps(cfg)
        self.init_budget = sum(m.init_r for m in self.modules)
        self.target_budget = cfg.r * len(self.modules)

    def budget(self, step: int) -> tuple[int, bool]:
        """(budget, whether to mask at ``step``): warm-up, cubic decrease, final (PEFT's ``budget_schedule``)."""
        c = self.cfg
        if step <= c.adalora_tinit:
            return self.init_budget, False
        if step > self.total_step - c.adalora_tfinal:
            return self.target_budget, True
        coeff = 1 - (step - c.adalora_tinit) / (self.total_step - c.adalora_tfinal - c.adalora_tinit)
        budget = int((self.init_budget - self.target_budget) * coeff**3 + self.target_budget)
        return budget, step % c.adalora_delta_t == 0

    def mask_to_budget(self, budget: int) -> None:
        scores = [m.triplet_scores() for m in self.modules]
        k = self.init_budget - budget
        if k <= 0:
            keep = [torch.ones_like(s, dtype=torch.bool) for s in scores]
        else:
            threshold = torch.kthvalue(torch.cat(scores), k).values
            keep = [s > threshold for s in scores]
        for m, kept in zip(self.modules, keep, strict=True):
            m.apply_mask(kept)

    def step(self, step: int) -> None:
        """After optimizer step ``step`` (0-based, as PEFT counts), with the gradients still in ``.grad``."""
        final = self.total_step - self.cfg.adalora_tfinal
        if step < final:
            for m in self.modules:
                m.update_importance(self.cfg.adalora_beta1, self.cfg.adalora_beta2)
            budget, mask = self.budget(step)
            if mask:
                self.mask_to_budget(budget)
        elif step == final:
            self.mask_to_budget(self.budget(step)[0])
            for m in self.modules:
                m.reset_importance()
        else:
            for m in self.modules:
                m.apply_mask()


def orth_regularizer(modules: list[SVDLinear]) -> Tensor:
    """``mean over P, Q of ‖PᵀP − I‖_F`` / ``‖QQᵀ − I‖_F`` (PEFT's ``AdaLoraModel.forward``)."""
    terms = []
    for m in modules:
        for cov in (m.lora_A @ m.lora_A.T, m.lora_B.T @ m.lora_B):
            eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
            terms.append(torch.linalg.matrix_norm(cov - eye, ord="fro"))
    return torch.stack(terms).mean()


class OrthRegObjective:
    """``objective`` plus ``γ · R`` per unit (``loss_sum + γ·R·count``: the step's mean loss gains ``γ·R``)."""

    def __init__(self, objective: Any, model: nn.Module, weight: float) -> None:
        self.inner, self.weight = objective, weight
        self.modules = [m for _, m in svd_modules(model)]

    def count(self, batch: Any) -> int | float:
        return self.inner.count(batch)  # type: ignore[no-any-return]

    def __call__(self, model: nn.Module, batch: Any) -> Any:
        from trainlab.train.objectives import ObjectiveOutput

        out = self.inner(model, batch)
        if self.weight == 0 or not self.modules:
            return out
        reg = orth_regularizer(self.modules)
        return ObjectiveOutput(out.loss_sum + self.weight * reg.float() * out.count, out.count,
                               {**out.metrics, "orth_reg": float(reg.detach())})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def total_steps(cfg: PeftConfig) -> int:
    t = cfg.adalora_total_step or cfg.adalora_tinit + cfg.adalora_tfinal + 1
    if cfg.adalora_tinit >= t - cfg.adalora_tfinal:
        raise UserError(f"peft.adalora_tinit={cfg.adalora_tinit} and adalora_tfinal={cfg.adalora_tfinal} leave no "
                        f"budgeting phase in {t} steps", key="peft.adalora_tinit")
    return t


def adalora_train_extras(model: nn.Module, cfg: PeftConfig, objective: Any) -> tuple[Any, list[Any]]:
    """The objective with the orthogonality regularizer, and the callback that runs the allocator after every
    optimizer step (hooked on the optimizer: the gradients are still there)."""
    from trainlab.train.callbacks import Callback

    allocator = RankAllocator(model, cfg)

    class _Allocate(Callback):
        def on_fit_start(self, trainer: Any) -> None:
            # PEFT counts the steps from 0 (its examples call update_and_allocate(global_step) before += 1)
            trainer.optimizer.register_step_post_hook(lambda *_: allocator.step(trainer.step))

    return OrthRegObjective(objective, model, cfg.adalora_orth_reg), [_Allocate()]


# --------------------------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------------------------


def apply_adalora(model: nn.Module, cfg: PeftConfig) -> PeftInfo:
    if cfg.r > cfg.adalora_init_r:
        raise UserError(f"peft.r={cfg.r} (AdaLoRA's target average rank) exceeds peft.adalora_init_r="
                        f"{cfg.adalora_init_r}", key="peft.r")
    targets = find_targets(model, cfg.targets)
    freeze(model)
    generator = None
    pattern = cfg.adalora_rank_pattern or {}
    for path, module in targets:
        if generator is None:
            generator = make_generator(cfg, next(module.parameters()).device)
        layer = SVDLinear(module, cfg.adalora_init_r, cfg.alpha, cfg.dropout, generator)
        kept = pattern.get(hf_format.hf_module_path(model, path) + ".lora_E")
        if kept is not None:
            if len(kept) != cfg.adalora_init_r:
                raise UserError(f"rank_pattern of {path}: {len(kept)} entries for init_r={cfg.adalora_init_r}")
            layer.apply_mask(torch.tensor(kept, dtype=torch.bool, device=layer.rank_mask.device))
        replace_module(model, path, layer)
    trainable, total = count_parameters(model)
    return PeftInfo("adalora", trainable, total, [p for p, _ in targets])


def rank_pattern(model: nn.Module) -> dict[str, list[bool]] | None:
    """PEFT's ``rank_pattern`` (None while nothing is pruned)."""
    modules = svd_modules(model)
    if all(bool(m.rank_mask.all()) for _, m in modules):
        return None
    return {hf_format.hf_module_path(model, p) + ".lora_E": m.rank_mask.tolist() for p, m in modules}


def adalora_peft_config(cfg: PeftConfig, model: nn.Module) -> dict[str, Any]:
    modules = svd_modules(model)
    return {
        "peft_type": "ADALORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": hf_format.base_model_name(model),
        # no "r": AdaLoRA ignores it (PEFT warns when it is not its default)
        "target_r": cfg.r, "init_r": cfg.adalora_init_r, "tinit": cfg.adalora_tinit,
        "tfinal": cfg.adalora_tfinal, "deltaT": cfg.adalora_delta_t, "beta1": cfg.adalora_beta1,
        "beta2": cfg.adalora_beta2, "orth_reg_weight": cfg.adalora_orth_reg, "total_step": total_steps(cfg),
        "rank_pattern": rank_pattern(model), "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
        "target_modules": hf_format.hf_target_names(model, [p for p, _ in modules]),
        "fan_in_fan_out": any(m.fan_in_fan_out for _, m in modules), "bias": "none", "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        "use_rslora": False, "use_dora": False,
    }


def adalora_state(model: nn.Module) -> dict[str, Tensor]:
    """Only the kept triplets (PEFT's ``resize_state_dict_by_rank_pattern``)."""
    out: dict[str, Tensor] = {}
    for path, m in svd_modules(model):
        keep = m.rank_mask
        out[hf_format.peft_key(model, path, "lora_A")] = m.lora_A[keep]
        out[hf_format.peft_key(model, path, "lora_E")] = m.lora_E[keep]
        out[hf_format.peft_key(model, path, "lora_B")] = m.lora_B[:, keep]
    return out


def load_adalora_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    modules = dict(svd_modules(model))
    seen = set()
    for key, tensor in state.items():
        path, suffix = hf_format.split_peft_key(model, key, _PARAMS)
        m = modules.get(path)
        if m is None:
            raise UserError(f"adapter tensor {key}: no such adapted module in this model")
        keep = m.rank_mask
        param = getattr(m, suffix)
        want = (int(keep.sum()), param.shape[1]) if suffix != "lora_B" else (param.shape[0], int(keep.sum()))
        if tuple(tensor.shape) != want:
            raise UserError(f"adapter tensor {key} has shape {tuple(tensor.shape)}, expected {want}")
        with torch.no_grad():
            param.zero_()
            if suffix == "lora_B":
                param[:, keep] = tensor.to(param.dtype)
            else:
                param[keep] = tensor.to(param.dtype)
        seen.add((path, suffix))
    missing = [(p, s) for p in modules for s in _PARAMS if (p, s) not in seen]
    if missing:
        raise UserError(f"adapter is missing {len(missing)} tensors, e.g. "
                        f"{hf_format.peft_key(model, missing[0][0], missing[0][1])}")


def merge_adalora(model: nn.Module) -> None:
    for path, m in svd_modules(model):
        replace_module(model, path, m.merged_layer())


def adalora_from_peft(c: dict[str, Any]) -> PeftConfig:
    base = lora_from_peft({k: v for k, v in c.items() if k != "rank_pattern"}, method="adalora")
    return base.model_copy(update={
        "r": int(c.get("target_r", 8)),
        "adalora_init_r": int(c.get("init_r", 12)), "adalora_tinit": int(c.get("tinit", 0)),
        "adalora_tfinal": int(c.get("tfinal", 0)), "adalora_delta_t": int(c.get("deltaT", 1)),
        "adalora_beta1": float(c.get("beta1", 0.85)), "adalora_beta2": float(c.get("beta2", 0.85)),
        "adalora_orth_reg": float(c.get("orth_reg_weight", 0.5)), "adalora_total_step": c.get("total_step"),
        "adalora_rank_pattern": c.get("rank_pattern")})


register_peft_method(PeftMethodSpec(
    name="adalora", peft_type="ADALORA", apply=apply_adalora, peft_config=adalora_peft_config,
    state_to_peft=adalora_state, state_from_peft=load_adalora_state, merge=merge_adalora,
    config_from_peft=adalora_from_peft, train_extras=adalora_train_extras,
    description="AdaLoRA (Zhang et al., 2023): P diag(E) Q with importance-based rank allocation"))
