"""GRPO, Dr. GRPO, DAPO-style, RLOO and REINFORCE++ training through the one training loop.

One optimizer step (``trainlab.train.Trainer`` calls the batcher, then `optimizer_step`):

1. `RolloutBatcher.next_step` takes the next ``prompts_per_step`` prompts (a seeded permutation of the
   training prompts, epoch after epoch, as `StepBatcher` does), samples ``group_size`` completions of
   each with the *current* policy on the KV cache (`trainlab.rl.rollout`), scores them
   (`trainlab.rl.rewards`: oracle, user function or reward model; EOS/length penalties), computes
   the advantages (`trainlab.rl.advantages`) and splits the rollout into micro-batches of
   ``train.batch_size`` completions;
2. `GRPOObjective` recomputes the per-token log-probs with gradient and returns the clipped
   surrogate's ``(loss_sum, count)`` (`trainlab.rl.policy_loss`): the loop divides by the step's total
   count, so the micro-batch split does not change the update.

``rl.updates_per_rollout`` μ > 1 (TRL's ``num_iterations``) reuses one rollout for μ optimizer steps;
the sampling policy's log-probs are then recomputed once after sampling (π_old), the ratio moves
away from 1 and clipping matters. With μ = 1 π_old = π_θ at the update and the extra forward pass is
skipped (``old_logps = logps.detach()``), as TRL does.

Resume: the batcher's state (prompt order position, rollout counter, a half-used rollout when
μ > 1) is in every checkpoint, and each rollout samples from a generator seeded by
``(train.seed, rollout index)``: a resumed run draws the same completions as an uninterrupted one.

Forward passes per step (`RolloutBatcher.passes`): generation (prefill + one decode step per token,
counted as one pass over the sequences), the policy's training forward, π_old when μ > 1, the
reference when β > 0 / KL is tracked, and the reward model when ``rl.reward=model``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.align.records import embedded_alignment_data
from trainlab.data.loaders import read_jsonl
from trainlab.data.tasks import TaskRecord, make_task_records
from trainlab.errors import UserError
from trainlab.model.generate import SamplingParams
from trainlab.model.text import pad_id, prompt_ids, stop_token_ids
from trainlab.rl.advantages import compute_advantages, group_stats
from trainlab.rl.config import RLConfig, RLRunConfig
from trainlab.rl.policy_loss import agg_count, policy_loss
from trainlab.rl.rewards import PromptItem, RewardFn, apply_penalties, oracle_reward, score_completions
from trainlab.rl.rollout import Rollout, rollout, sequence_token_logps
from trainlab.train.objectives import Batch, ObjectiveOutput

STAT = "stat/"  # batch keys of step-level scalars the objective reports as metrics


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def prompt_items(cfg: RLRunConfig) -> tuple[list[PromptItem], list[TaskRecord]]:
    """Training prompts and held-out task records (for oracle accuracy) of ``align_data``.

    Embedded: ``n_train`` task problems of the train split (as the SFT/DPO data), the held-out
    records exactly as lab 1.7 evaluates (`embedded_alignment_data`). A JSONL file: one record per
    line with a string ``prompt``; the other keys are passed to a user reward function as columns.
    """
    dc = cfg.align_data
    if dc.source == "embedded":
        train = make_task_records(dc.n_train, dc.seed, dc.tasks, dc.difficulty, split="train")
        held = embedded_alignment_data(dc.model_copy(update={"n_train": 1, "n_eval_pairs": 0})).eval_records
        return [PromptItem.from_record(r) for r in train], held
    path = Path(dc.source)
    if path.suffix.lower() != ".jsonl":
        raise UserError("RL prompts: give a .jsonl file with a 'prompt' field per line (or 'embedded')",
                        path=path, key="align_data.source")
    if not path.is_file():
        raise UserError("prompt file not found", path=path, key="align_data.source")
    items: list[PromptItem] = []
    for row in read_jsonl(path):
        if row.error is not None or row.value is None:
            raise UserError(row.error or "not a JSON object", path=row.path, line=row.line)
        prompt = row.value.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise UserError("'prompt' must be a non-empty string", path=row.path, line=row.line, key="prompt")
        items.append(PromptItem(prompt, None, {k: v for k, v in row.value.items() if k != "prompt"}))
    if not items:
        raise UserError("no prompts in the file", path=path)
    return items, []


# --------------------------------------------------------------------------------------------
# The batcher: sampling with the current policy
# --------------------------------------------------------------------------------------------


class RolloutBatcher:
    """``next_step() -> list[Batch]``: one rollout (or its reuse, μ > 1) split into micro-batches."""

    def __init__(self, policy: nn.Module, tokenizer: Any, items: Sequence[PromptItem], rl: RLConfig,
                 reward_fn: RewardFn, *, micro_batch: int, seed: int = 0, reference: nn.Module | None = None,
                 autocast: Callable[[], Any] | None = None, chunk_size: int = 0, track_kl: bool = False,
                 share_prefix: bool = False,
                 reward_passes: int = 0) -> None:
        if not items:
            raise UserError("no training prompts")
        self.policy, self.tokenizer, self.items, self.rl = policy, tokenizer, list(items), rl
        self.reward_fn, self.reference, self.autocast, self.chunk_size = reward_fn, reference, autocast, chunk_size
        self.share_prefix = share_prefix
        self.micro_batch = max(1, micro_batch)
        self.seed = seed
        self.track_kl = track_kl and reference is not None
        self.ids = [prompt_ids(tokenizer, it.prompt) for it in self.items]
        eos = stop_token_ids(policy, tokenizer)
        if not eos:
            raise UserError("the tokenizer has no EOS token: completions could never end (RL needs one)")
        self.params = SamplingParams(max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, top_k=rl.top_k,
                                     top_p=rl.top_p, eos_token_id=eos, pad_token_id=pad_id(tokenizer))
        self.position = 0  # prompts consumed in total (epoch = position // len(items))
        self.rollouts = 0
        self.pending: list[Batch] = []  # a rollout's micro-batches still to be reused (μ > 1)
        self.uses_left = 0
        self.history: list[dict[str, Any]] = []  # one record per rollout (not saved: the lab reads it)
        self.samples: list[dict[str, Any]] = []  # the last rollout's first completions (for a report)
        needs_old = rl.updates_per_rollout > 1 or (rl.beta > 0 and rl.estimator in ("rloo", "reinforce_pp"))
        self.passes = {"generate": 1, "policy_train": 1, "policy_old": int(needs_old),
                       "reference": int(reference is not None and (rl.beta > 0 or track_kl)),
                       "reward_model": reward_passes}

    # ---- order of prompts, as StepBatcher: a fresh permutation per epoch
    def _take(self, k: int) -> list[int]:
        n = len(self.items)
        out: list[int] = []
        while len(out) < k:
            epoch, offset = divmod(self.position, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch)).tolist()
            take = min(k - len(out), n - offset)
            out += perm[offset:offset + take]
            self.position += take
        return out

    def _decode(self, r: Rollout) -> tuple[list[str], list[list[int]]]:
        eos = set(self.params.eos_ids)
        texts, ids = [], []
        for row, n in zip(r.completion_ids.tolist(), r.lengths.tolist(), strict=True):
            row = row[:n]
            ids.append(row)
            if row and row[-1] in eos:
                row = row[:-1]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return texts, ids

    def next_step(self) -> list[Batch]:
        if self.uses_left > 0:
            self.uses_left -= 1
            return self.pending
        return self._new_rollout()

    def _new_rollout(self) -> list[Batch]:
        rl = self.rl
        chosen = self._take(rl.prompts_per_step)
        device = next(self.policy.parameters()).device
        gen = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + self.rollouts)
        t0 = time.perf_counter()
        with_ref = self.reference is not None and (rl.beta > 0 or self.track_kl)
        r = rollout(self.policy, [self.ids[i] for i in chosen], self.params, rl.group_size, generator=gen,
                    old_logps=rl.updates_per_rollout > 1, reference=self.reference if with_ref else None,
                    autocast=self.autocast, chunk_size=self.chunk_size, share_prefix=self.share_prefix)
        t_gen = time.perf_counter() - t0
        items = [self.items[i] for i in chosen for _ in range(rl.group_size)]
        texts, ids = self._decode(r)
        t1 = time.perf_counter()
        raw = score_completions(self.reward_fn, [it.prompt for it in items], texts, items, ids)
        t_reward = time.perf_counter() - t1
        rewards = apply_penalties(raw, r.eos, r.lengths, eos_penalty=rl.eos_penalty,
                                  length_penalty=rl.length_penalty, max_new_tokens=rl.max_new_tokens)
        loss_mask = r.completion_mask.clone()
        if rl.mask_truncated:
            loss_mask[~r.eos] = 0
        if r.old_logps is None and r.ref_logps is not None and rl.beta > 0 and rl.estimator in ("rloo", "reinforce_pp"):
            # the KL in the reward needs π_old
            r.old_logps = _logps(self.policy, r, self.autocast, self.chunk_size, self.share_prefix)
        adv = self._advantages(rewards.to(device), r, loss_mask)
        stats = group_stats(rewards, rl.group_size)
        if self.reward_fn is not oracle_reward and all(it.record is not None for it in items):
            # a learned or user reward beside the exact one: where they disagree, the policy can exploit it
            stats["oracle_reward"] = float(oracle_reward([], texts, items).mean())
        record = {"rollout": self.rollouts, **stats, "reward_raw": float(raw.mean()),
                  "completion_length": float(r.lengths.float().mean()), "eos_rate": float(r.eos.float().mean()),
                  "generate_s": t_gen, "reward_s": t_reward, "completions": r.n}
        self.history.append(record)
        self.samples = [{"prompt": it.prompt, "completion": t, "reward": float(x)}
                        for it, t, x in zip(items[: 2 * rl.group_size], texts, rewards.tolist(), strict=False)]
        self.rollouts += 1
        scalars = {f"{STAT}{k}": torch.tensor(float(v)) for k, v in record.items()
                   if k in ("reward", "reward_std", "frac_reward_zero_std", "completion_length", "eos_rate",
                            "generate_s", "oracle_reward")}
        seq = r.sequences
        att = r.attention_mask
        batches: list[Batch] = []
        for s in range(0, r.n, self.micro_batch):
            sl = slice(s, s + self.micro_batch)
            b: Batch = {"input_ids": seq[sl], "attention_mask": att[sl], "completion_mask": loss_mask[sl],
                        "advantages": adv[sl], **scalars}
            if r.old_logps is not None:
                b["old_logps"] = r.old_logps[sl]
            if r.ref_logps is not None:  # the KL term (β > 0, not in the reward) or the KL metric
                b["ref_logps"] = r.ref_logps[sl]
            batches.append(b)
        self.pending = batches
        self.uses_left = rl.updates_per_rollout - 1
        return batches

    def _advantages(self, rewards: Tensor, r: Rollout, mask: Tensor) -> Tensor:
        rl = self.rl
        opts: dict[str, Any] = {"scale_rewards": rl.scale, "mask": mask, "beta": rl.beta}
        if rl.beta > 0 and r.ref_logps is not None and rl.estimator in ("rloo", "reinforce_pp"):
            assert r.old_logps is not None
            k1 = (r.old_logps - r.ref_logps) * r.completion_mask
            opts["seq_kl"] = k1.sum(dim=1)  # RLOO: TRL's sequence-level k1 in the reward
            if rl.kl_in_reward:
                opts["token_kl"] = k1  # REINFORCE++: per-token KL in the reward
        return compute_advantages(rl.estimator, rewards, rl.group_size, **opts)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "rollouts": self.rollouts, "uses_left": self.uses_left,
                "pending": [{k: v.cpu() for k, v in b.items()} for b in self.pending] if self.uses_left else []}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
        self.rollouts = int(state["rollouts"])
        self.uses_left = int(state.get("uses_left", 0))
        device = next(self.policy.parameters()).device
        self.pending = [{k: v.to(device) for k, v in b.items()} for b in state.get("pending", [])]


@torch.no_grad()
def _logps(model: nn.Module, r: Rollout, autocast: Callable[[], Any] | None, chunk_size: int,
           share_prefix: bool = False) -> Tensor:
    import contextlib

    with autocast() if autocast is not None else contextlib.nullcontext():
        return sequence_token_logps(model, r.sequences, r.attention_mask, r.completion_mask,
                                    chunk_size=chunk_size, share_prefix=share_prefix).float()


# --------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------


class GRPOObjective:
    """The clipped policy loss of a micro-batch of completions (`trainlab.rl.policy_loss`)."""

    def __init__(self, rl: RLConfig, *, chunk_size: int = 0, share_prefix: bool = False) -> None:
        self.rl = rl
        self.agg = rl.agg
        self.chunk_size = chunk_size
        self.share_prefix = share_prefix  # a group's completions as one packed row (`sequence_token_logps`)

    def count(self, batch: Batch) -> float:
        return agg_count(batch["completion_mask"], self.agg)

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        rl = self.rl
        # attend to every generated token; score (and train on) the loss mask's
        att = batch["attention_mask"]
        c = batch["completion_mask"].shape[1]
        gen_mask = att[:, att.shape[1] - c:]
        logps = sequence_token_logps(model, batch["input_ids"], att, gen_mask, chunk_size=self.chunk_size,
                                     share_prefix=self.share_prefix)
        loss_sum, count, metrics = policy_loss(
            logps, batch.get("old_logps"), batch["advantages"], batch["completion_mask"], rl.eps_low, rl.eps_hi,
            self.agg, ref_logps=batch.get("ref_logps"), beta=rl.beta if not rl.kl_in_reward else 0.0,
            kl_estimator=rl.kl_estimator, max_new_tokens=rl.max_new_tokens)
        for k, v in batch.items():
            if k.startswith(STAT):
                metrics[k[len(STAT):]] = float(v)
        return ObjectiveOutput(loss_sum=loss_sum, count=count, metrics=metrics)


def frozen_reference(policy: nn.Module) -> nn.Module:
    """A frozen copy of the starting policy (π_ref for the KL terms)."""
    ref = copy.deepcopy(policy)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
