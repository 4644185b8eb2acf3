"""PPO for language models (RLHF): rollouts, per-token KL-shaped rewards, GAE, clipped policy and value losses.

References: Schulman et al. 2017 (PPO); Ziegler et al. 2019 ("Fine-tuning language models from human
preferences": the per-token KL penalty and the adaptive KL controller); Stiennon et al. 2020;
Ouyang et al. 2022; Huang et al. 2024, "The N+ implementation details of RLHF with PPO"; OpenRLHF
(``PolicyLoss``, ``ValueLoss``, ``AdaptiveKLController``, its experience maker's ``compute_reward``).

One rollout (`PPOBatcher`), ``N = prompts_per_step × group_size`` completions sampled by the current
policy π_old on the KV cache, then, with no gradient:

* ``log π_old(y_t)``, ``log π_ref(y_t)`` per completion token (the policy and the frozen reference),
  ``V_old(t)`` from the critic (`trainlab.rl.value`), the score ``s`` of each completion (the reward
  model, or the task's oracle), minus ``rl.eos_penalty`` when it never emitted EOS;
* token rewards ``r_t = −β·KL_t + [t = T]·s`` with ``KL_t`` the per-token estimator ``rl.kl_estimator``
  (k1 = ``log π_old − log π_ref`` by default, as TRL's PPOTrainer; k3 as an option); optionally whitened
  (``rl.whiten_rewards``);
* GAE (`trainlab.rl.gae`, γ = ``rl.gamma``, λ = ``rl.lam``): advantages ``A_t`` and returns
  ``R_t = A_t + V_old(t)``; advantages whitened over the rollout's tokens (``rl.whiten_advantages``);
* the KL controller moves β (`AdaptiveKLController`, Ziegler et al. §2.2):
  ``e = clip(KL/KL_target − 1, −0.2, 0.2)``, ``β ← β·(1 + e·N/horizon)`` with ``KL`` the mean
  sequence KL of the rollout (``kl_seq``: Σ_t KL_t); `FixedKLController` keeps β. The ``kl`` reported per
  rollout and step is the k3 estimate per completion token, what the GRPO runs report, so curves compare.

Then ``rl.ppo_epochs`` passes over the rollout, each in ``rl.mini_batches`` shuffled mini-batches: every
mini-batch is one optimizer step of the one `trainlab.train.Trainer` (the batcher hands it out as the
step's micro-batches of ``train.batch_size`` completions), and a new rollout is sampled when the last
one is used up. `PPOObjective` per token (token mean over the step, the Objective contract):

    ρ_t    = π_θ(y_t) / π_old(y_t)
    L^π_t  = −min(ρ_t A_t, clip(ρ_t, 1−ε, 1+ε_high) A_t)                       (`trainlab.rl.policy_loss`)
    L^V_t  = ½·max((V_t − R_t)², (V_old + clip(V_t − V_old, −ε_v, ε_v) − R_t)²)  (clipped value loss)
    loss   = Σ_t (L^π_t + c_v·L^V_t) / tokens

Resume: the rollout in use (its tensors and the remaining mini-batch schedule), the prompt position,
the rollout counter and β are in the batcher's state, saved in every checkpoint; each rollout samples
from a generator seeded by ``(train.seed, rollout index)``, so a resumed run continues exactly.

Forward passes are counted, not assumed (`PassCounter`: a hook on each network's input embedding):
per rollout one pass each of the policy (π_old and, with a shared head, the values), the reference,
the separate critic and the reward model, besides sampling; per optimizer step the policy and the
critic again. That is where "RLHF needs 4 models' forward passes" (policy, reference, value, reward)
comes from, against DPO's 2 (policy, reference).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.rl.advantages import masked_whiten
from trainlab.rl.config import RLConfig
from trainlab.rl.gae import gae, token_rewards
from trainlab.rl.grpo import STAT, RolloutBatcher
from trainlab.rl.kl import kl_estimate
from trainlab.rl.policy_loss import agg_count, policy_loss
from trainlab.rl.rewards import PromptItem, RewardFn, apply_penalties, score_completions
from trainlab.rl.rollout import rollout, sequence_token_logps
from trainlab.rl.value import PolicyValue
from trainlab.train.objectives import Batch, ObjectiveOutput

# ------------------------------------------------------------------------------------------
# KL controllers
# ------------------------------------------------------------------------------------------


class FixedKLController:
    """β stays at its initial value."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        del current_kl, n_steps

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019 §2.2: ``β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n/horizon)`` after each
    rollout of ``n`` samples whose mean sequence KL is ``KL`` (OpenRLHF's ``AdaptiveKLController``)."""

    def __init__(self, value: float, target: float, horizon: int) -> None:
        super().__init__(value)
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def kl_controller(rl: RLConfig) -> FixedKLController:
    """``rl.kl_ctl``: fixed β (``rl.beta``) or adaptive toward ``rl.kl_target`` over ``rl.kl_horizon`` samples."""
    if rl.kl_ctl == "adaptive":
        return AdaptiveKLController(rl.beta, rl.kl_target, rl.kl_horizon)
    return FixedKLController(rl.beta)


# ------------------------------------------------------------------------------------------
# Counting forward passes
# ------------------------------------------------------------------------------------------


def input_embedding(model: nn.Module) -> nn.Module:
    """The module every full forward pass of ``model`` starts with (our decoder's ``embed``, a transformers
    model's input embeddings; a reward/value model's body's)."""
    for candidate in (model, getattr(model, "body", None), getattr(model, "model", None)):
        if candidate is None:
            continue
        embed = getattr(candidate, "embed", None)
        if isinstance(embed, nn.Embedding):
            return embed
        get = getattr(candidate, "get_input_embeddings", None)
        if callable(get) and isinstance(get(), nn.Module):
            return get()
    raise TypeError(f"cannot find the input embedding of {type(model).__name__}")


class PassCounter:
    """Counts forward passes per named network (a forward hook on its input embedding).

    A PEFT policy's reference is the same network with its adapters off (`trainlab.peft.ReferenceView`): its
    passes are told apart by `relabel`."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.active = True
        self.label: str | None = None
        self._handles: list[Any] = []

    def watch(self, name: str, model: nn.Module) -> None:
        def hit(*_: Any) -> None:
            if self.active:
                self.counts[self.label or name] += 1

        self._handles.append(input_embedding(model).register_forward_hook(hit))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        before, self.active = self.active, False
        try:
            yield
        finally:
            self.active = before

    @contextlib.contextmanager
    def relabel(self, name: str) -> Iterator[None]:
        """Count every pass inside the block as ``name`` (the reference when it is the policy with its
        adapters off: the same network's embedding runs)."""
        before, self.label = self.label, name
        try:
            yield
        finally:
            self.label = before

    def take(self) -> dict[str, int]:
        """The counts since the last `take` (and reset)."""
        out = dict(self.counts)
        self.counts.clear()
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


# ------------------------------------------------------------------------------------------
# The batcher: one rollout, several epochs of mini-batches
# ------------------------------------------------------------------------------------------

_ROLLOUT_KEYS = ("input_ids", "attention_mask", "completion_mask", "old_logps", "values", "returns", "advantages")
_STAT_KEYS = ("reward", "reward_raw", "score", "kl", "kl_seq", "kl_coef", "non_score_reward", "value_mean",
              "return_mean", "completion_length", "eos_rate", "generate_s")


class PPOBatcher(RolloutBatcher):
    """``next_step()``: the next mini-batch of the current rollout, as micro-batches; a new rollout when used up.

    ``model`` is the trained `PolicyValue` (sampling uses its policy), ``reference`` the frozen π_ref,
    ``reward_fn`` scores completions (`trainlab.rl.rewards`), ``counter`` (optional) counts forward passes.
    """

    def __init__(self, model: PolicyValue, tokenizer: Any, items: Sequence[PromptItem], rl: RLConfig,
                 reward_fn: RewardFn, reference: nn.Module, *, micro_batch: int, seed: int = 0,
                 autocast: Callable[[], Any] | None = None, chunk_size: int = 0,
                 counter: PassCounter | None = None) -> None:
        super().__init__(model.policy, tokenizer, items, rl, reward_fn, micro_batch=micro_batch, seed=seed,
                         reference=reference, autocast=autocast, chunk_size=chunk_size)
        self.model = model
        self.kl = kl_controller(rl)
        self.counter = counter
        self.buffer: dict[str, Tensor] = {}
        self.schedule: list[list[int]] = []
        self.steps_per_rollout = rl.ppo_epochs * rl.mini_batches

    def next_step(self) -> list[Batch]:
        if not self.schedule:
            self._new_rollout()
        rows = torch.tensor(self.schedule.pop(0), dtype=torch.long)
        stats = {k: v for k, v in self.buffer.items() if k.startswith(STAT)}
        out: list[Batch] = []
        for s in range(0, len(rows), self.micro_batch):
            idx = rows[s:s + self.micro_batch].to(self.buffer["input_ids"].device)
            out.append({**{k: self.buffer[k][idx] for k in _ROLLOUT_KEYS}, **stats})
        return out

    def _autocast(self) -> Any:
        return self.autocast() if self.autocast is not None else contextlib.nullcontext()

    @torch.no_grad()
    def _new_rollout(self) -> None:  # type: ignore[override]
        rl, model = self.rl, self.model
        chosen = self._take(rl.prompts_per_step)
        device = next(self.policy.parameters()).device
        gen = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + self.rollouts)
        was_training = model.training
        model.eval()
        try:
            t0 = time.perf_counter()
            paused = self.counter.paused() if self.counter is not None else contextlib.nullcontext()
            with paused:  # sampling is counted as one generation, not as its decode steps
                r = rollout(self.policy, [self.ids[i] for i in chosen], self.params, rl.group_size, generator=gen,
                            old_logps=False, chunk_size=self.chunk_size)
            t_gen = time.perf_counter() - t0
            items = [self.items[i] for i in chosen for _ in range(rl.group_size)]
            texts, ids = self._decode(r)
            t1 = time.perf_counter()
            raw = score_completions(self.reward_fn, [it.prompt for it in items], texts, items, ids)
            t_reward = time.perf_counter() - t1
            score = apply_penalties(raw, r.eos, r.lengths, eos_penalty=rl.eos_penalty,
                                    length_penalty=rl.length_penalty, max_new_tokens=rl.max_new_tokens).to(device)
            seq, att, mask = r.sequences, r.attention_mask, r.completion_mask
            with self._autocast():
                old_logps, values = model.logps_and_values(seq, att, mask, chunk_size=self.chunk_size)
                relabel = self.counter.relabel("reference") if self.counter is not None else contextlib.nullcontext()
                with relabel:
                    ref_logps = sequence_token_logps(self.reference, seq, att, mask, chunk_size=self.chunk_size)
        finally:
            model.train(was_training)
        loss_mask = mask.clone()
        if rl.mask_truncated:
            loss_mask[~r.eos] = 0
        m = mask.float()
        old_logps, ref_logps, values = old_logps.float(), ref_logps.float(), values.float() * m
        kl = kl_estimate(old_logps, ref_logps, rl.kl_estimator) * m
        beta = self.kl.value
        rewards = token_rewards(score, mask, kl, beta)
        if rl.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * m
        advantages, returns = gae(rewards, values, mask, rl.gamma, rl.lam)
        if rl.whiten_advantages:
            advantages = masked_whiten(advantages, loss_mask) * loss_mask.float()
        seq_kl = float(kl.sum(dim=1).mean())
        self.kl.update(seq_kl, r.n)
        # what every RL run of trainlab reports as "kl": k3 per completion token (GRPO's metric, TRL's estimator)
        tok_kl = float((kl_estimate(old_logps, ref_logps, "k3") * m).sum() / m.sum().clamp(min=1))
        passes = self.counter.take() if self.counter is not None else {}
        record = {"rollout": self.rollouts, "reward": float(score.mean()), "reward_raw": float(raw.mean()),
                  "score": float(raw.mean()), "kl": tok_kl, "kl_ref": tok_kl, "kl_seq": seq_kl, "kl_coef": beta,
                  "non_score_reward": float((-beta * kl).sum(dim=1).mean()),
                  "value_mean": float(values.sum() / m.sum().clamp(min=1)),
                  "return_mean": float(returns.sum() / m.sum().clamp(min=1)),
                  "completion_length": float(r.lengths.float().mean()), "eos_rate": float(r.eos.float().mean()),
                  "generate_s": t_gen, "reward_s": t_reward, "completions": r.n,
                  "passes": {"generate": 1, **passes}}
        self.history.append(record)
        self.samples = [{"prompt": it.prompt, "completion": t, "reward": float(x)}
                        for it, t, x in zip(items[:8], texts, score.tolist(), strict=False)]
        self.rollouts += 1
        self.buffer = {"input_ids": seq, "attention_mask": att, "completion_mask": loss_mask, "old_logps": old_logps,
                       "values": values, "returns": returns, "advantages": advantages,
                       **{f"{STAT}{k}": torch.tensor(float(record[k])) for k in _STAT_KEYS}}
        self.schedule = self._schedule(r.n)

    def _schedule(self, n: int) -> list[list[int]]:
        """``ppo_epochs`` shuffled passes over the rollout's rows, each cut into ``mini_batches`` parts."""
        rl = self.rl
        if n < rl.mini_batches:
            raise ValueError(f"rl.mini_batches={rl.mini_batches} is more than the rollout's {n} completions")
        out: list[list[int]] = []
        for epoch in range(rl.ppo_epochs):
            g = torch.Generator().manual_seed(self.seed * 7_919 + self.rollouts * 131 + epoch)
            perm = torch.randperm(n, generator=g)
            out += [part.tolist() for part in torch.tensor_split(perm, rl.mini_batches)]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "rollouts": self.rollouts, "kl": self.kl.state_dict(),
                "schedule": [list(s) for s in self.schedule],
                "buffer": {k: v.cpu() for k, v in self.buffer.items()} if self.schedule else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
        self.rollouts = int(state["rollouts"])
        self.kl.load_state_dict(state["kl"])
        self.schedule = [list(s) for s in state.get("schedule", [])]
        device = next(self.policy.parameters()).device
        self.buffer = {k: v.to(device) for k, v in state.get("buffer", {}).items()}


# ------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------


def ppo_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, values: Tensor, old_values: Tensor,
             returns: Tensor, mask: Tensor, *, eps_low: float = 0.2, eps_high: float | None = None,
             cliprange_value: float = 0.2, vf_coef: float = 0.1) -> tuple[Tensor, float, dict[str, float]]:
    """``(loss_sum, count, metrics)``: Σ over masked tokens of ``L^π + vf_coef·L^V`` (module docstring),
    ``count`` = tokens. The policy term is `trainlab.rl.policy_loss.policy_loss` (token mean)."""
    pg_sum, count, metrics = policy_loss(logps, old_logps, advantages, mask, eps_low, eps_high, "token_mean")
    m = mask.to(values.dtype)
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf1, vf2 = (values - returns) ** 2, (v_clipped - returns) ** 2
    vf_sum = 0.5 * (torch.maximum(vf1, vf2) * m).sum()
    with torch.no_grad():
        n = max(float(m.sum()), 1.0)
        log_ratio = (logps - old_logps) * m
        metrics.update({
            "pg_loss": float(pg_sum) / n, "vf_loss": float(vf_sum) / n,
            "vf_clipfrac": float(((vf2 > vf1).to(m.dtype) * m).sum()) / n,
            "value": float((values * m).sum()) / n,
            "approx_kl": float((0.5 * log_ratio ** 2).sum()) / n,  # KL(π_old‖π_θ) by k2 (TRL's approxkl)
        })
    return pg_sum + vf_coef * vf_sum, count, metrics


class PPOObjective:
    """`ppo_loss` on a micro-batch of a rollout (``count`` = completion tokens), through `PolicyValue`."""

    def __init__(self, rl: RLConfig, *, chunk_size: int = 0) -> None:
        self.rl = rl
        self.chunk_size = chunk_size

    def count(self, batch: Batch) -> float:
        return agg_count(batch["completion_mask"], "token_mean")

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        rl = self.rl
        att, mask = batch["attention_mask"], batch["completion_mask"]
        c = mask.shape[1]
        # every generated token is attended to and scored; the loss mask may drop truncated rows
        logps, values = model.logps_and_values(batch["input_ids"], att, att[:, att.shape[1] - c:],  # type: ignore[operator]
                                               chunk_size=self.chunk_size)
        loss_sum, count, metrics = ppo_loss(logps, batch["old_logps"], batch["advantages"], values, batch["values"],
                                            batch["returns"], mask, eps_low=rl.eps_low, eps_high=rl.eps_hi,
                                            cliprange_value=rl.cliprange_value, vf_coef=rl.vf_coef)
        for k, v in batch.items():
            if k.startswith(STAT):
                metrics[k[len(STAT):]] = float(v)
        return ObjectiveOutput(loss_sum=loss_sum, count=count, metrics=metrics)
