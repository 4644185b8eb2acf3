"""The clipped policy loss against TRL 1.16's GRPOTrainer._compute_loss, called on the same tensors.

TRL's method is run for real: a stand-in ``self`` carries the attributes it reads, and its
``_get_per_token_logps_and_entropies`` returns our log-prob tensor, so loss and gradient flow through
TRL's own code (trl/trainer/grpo_trainer.py, ``GRPOTrainer._compute_loss``: ``coef_1 = exp(log_ratio)``,
two-sided clip, ``per_token_kl = exp(ref - logp) - (ref - logp) - 1``, then the per-loss-type
aggregation). Each loss type's value and gradient w.r.t. the per-token log-probs equal ours.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from trainlab.rl.config import TRL_LOSS_TYPES, rl_config
from trainlab.rl.kl import kl_estimate
from trainlab.rl.policy_loss import agg_count, policy_loss

GRPOTrainer = pytest.importorskip("trl.trainer.grpo_trainer").GRPOTrainer
N, C, L_MAX = 6, 7, 9


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 3, 5, 1, 6, 2])
    mask = (torch.arange(C)[None, :] < lengths[:, None]).long()
    old = -torch.rand(N, C, generator=g) * 3
    # ratios spread over [0.6, 1.65] so both clip bounds are hit
    logps = old + (torch.rand(N, C, generator=g) * 1.0 - 0.5)
    ref = old + torch.randn(N, C, generator=g) * 0.3
    adv = torch.randn(N, generator=g)
    return {"logps": logps, "old": old, "ref": ref, "adv": adv, "mask": mask}


def _trl_loss(loss_type: str, b: dict[str, torch.Tensor], logps: torch.Tensor, *, beta: float, eps_low: float,
              eps_high: float) -> tuple[torch.Tensor, dict[str, list[float]]]:
    args = SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1)
    stub = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        args=args, loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=L_MAX, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)},
        accelerator=SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction="sum": x),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
    )
    inputs = {"prompt_ids": torch.zeros(N, 2, dtype=torch.long), "prompt_mask": torch.ones(N, 2, dtype=torch.long),
              "completion_ids": torch.zeros(N, C, dtype=torch.long), "completion_mask": b["mask"],
              "advantages": b["adv"], "old_per_token_logps": b["old"], "ref_per_token_logps": b["ref"],
              "num_items_in_batch": b["mask"].sum()}
    return GRPOTrainer._compute_loss(stub, None, inputs), stub._metrics["train"]


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_grad_equal_trl(loss_type: str, beta: float) -> None:
    b = _batch()
    eps_low, eps_high = 0.2, (0.28 if loss_type == "dapo" else 0.2)
    theirs_lp = b["logps"].clone().requires_grad_(True)
    theirs, their_metrics = _trl_loss(loss_type, b, theirs_lp, beta=beta, eps_low=eps_low, eps_high=eps_high)
    theirs.backward()
    agg = rl_config(preset="tiny", overrides=[f"rl.loss_agg={loss_type}"]).rl.agg
    assert agg == TRL_LOSS_TYPES[loss_type]
    ours_lp = b["logps"].clone().requires_grad_(True)
    loss_sum, count, metrics = policy_loss(ours_lp, b["old"], b["adv"], b["mask"], eps_low, eps_high, agg,
                                           ref_logps=b["ref"] if beta else None, beta=beta, max_new_tokens=L_MAX)
    assert count == agg_count(b["mask"], agg)
    ours = loss_sum / count
    ours.backward()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours_lp.grad, theirs_lp.grad, rtol=1e-6, atol=1e-8)
    # the clip and KL metrics are TRL's too
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean") + (("kl",) if beta else ()):
        assert metrics[key] == pytest.approx(their_metrics[key][0], rel=1e-6), key
    assert metrics["clip_ratio/low_mean"] > 0 and metrics["clip_ratio/high_mean"] > 0


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batches_give_the_step_loss(agg: str) -> None:
    """The Objective contract: Σ loss_sum / Σ count over any split equals the one-batch loss."""
    b = _batch(1)
    full_sum, full_count, _ = policy_loss(b["logps"], b["old"], b["adv"], b["mask"], agg=agg, max_new_tokens=L_MAX)
    parts = [policy_loss(b["logps"][s], b["old"][s], b["adv"][s], b["mask"][s], agg=agg, max_new_tokens=L_MAX)
             for s in (slice(0, 1), slice(1, 4), slice(4, 6))]
    total = sum(float(p[0]) for p in parts) / sum(p[1] for p in parts)
    assert total == pytest.approx(float(full_sum) / full_count, rel=1e-6)


def test_kl_estimators_hand_values() -> None:
    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])  # log r = ref - logp = -0.5
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.125)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(torch.exp(torch.tensor(-0.5)).item() + 0.5 - 1)
    # k1 and k3 are unbiased: their mean under π approaches KL(π‖π_ref) of two categoricals
    g = torch.Generator().manual_seed(0)
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    y = torch.multinomial(p, 200_000, replacement=True, generator=g)
    true = float((p * (p / q).log()).sum())
    for est in ("k1", "k3"):
        assert kl_estimate(p.log()[y], q.log()[y], est).mean().item() == pytest.approx(true, rel=0.02)
