"""The alignment methods, one registry entry each: what `trainlab.recipes.align` needs to run one.

An `AlignMethod` says everything the recipe would otherwise decide by the method's name:

* ``data``: the records and dataset it trains on: ``sft`` (prompt/completion, text, messages: `SFTDataset`
  with prompt labels -100), ``preference`` (`PreferenceDataset`: chosen and rejected rows in one
  batch) or ``unpaired`` (KTO's desirable/undesirable examples); the collate follows from it;
* ``objective(align, reference)``: the `trainlab.train.objectives.Objective` built from the
  ``align`` config section (and a frozen reference when ``align.reference=frozen``);
* ``reference``: whether it needs π_ref's log-probs (DPO, KTO) — cached before training or scored
  by a frozen copy, of the starting policy or of ``align.ref_model``;
* ``evaluations``: what runs on evaluation pairs: ``reward_accuracy`` (implicit-reward accuracy
  with ``reward_beta``, against π_ref when ``reference``), ``kl`` (KL to the reference model);
  oracle accuracy on held-out task prompts runs for every method on the embedded data;
* ``reward_beta(align)``: the scale of its implicit reward (DPO/KTO/SimPO β, ORPO λ, SFT 1);
* ``unit``: what its objective counts (``count``): tokens, pairs or examples.

A new method (a reward model, PPO, GRPO) is one `register_method` call here plus its defaults row
in `trainlab.align.config` (``_METHOD``, ``_SCHEDULE``, ``_TRL``; a test checks the two agree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from trainlab.align.config import AlignConfig
from trainlab.align.datasets import collate_preference, collate_unpaired
from trainlab.align.objectives import DPOObjective, KTOObjective, ORPOObjective, SimPOObjective
from trainlab.data.datasets import collate_padded
from trainlab.errors import UserError
from trainlab.train.objectives import CausalLMObjective, Objective

DataKind = Literal["sft", "preference", "unpaired"]
Evaluation = Literal["reward_accuracy", "kl"]
ObjectiveFactory = Callable[[AlignConfig, Any], Objective]

_COLLATES: dict[str, Callable[..., dict[str, Any]]] = {
    "sft": collate_padded,
    "preference": collate_preference,
    "unpaired": collate_unpaired,
}
_UNITS: dict[str, str] = {"sft": "tokens", "preference": "pairs", "unpaired": "examples"}


@dataclass(frozen=True)
class AlignMethod:
    """One alignment method (see the module docstring)."""

    name: str
    summary: str
    data: DataKind
    objective: ObjectiveFactory
    reference: bool = False
    reward_beta: Callable[[AlignConfig], float] = lambda a: a.beta
    evaluations: tuple[Evaluation, ...] = ("reward_accuracy", "kl")

    @property
    def unit(self) -> str:
        """What the objective's ``count`` counts: tokens (SFT), pairs or examples (KTO)."""
        return _UNITS[self.data]

    def collate(self, pad_id: int) -> Callable[[list[Any]], dict[str, Any]]:
        """The batch collate of its data kind, padding with ``pad_id``."""
        return partial(_COLLATES[self.data], pad_id=pad_id)

    @property
    def reference_kind(self) -> str:
        """The ``kind`` of `trainlab.align.reference.reference_logps` for its data."""
        return "unpaired" if self.data == "unpaired" else "preference"


_REGISTRY: dict[str, AlignMethod] = {}


def register_method(method: AlignMethod) -> AlignMethod:
    """Make ``method`` available to `trainlab.recipes.align.run_alignment` by its name."""
    if method.data not in _COLLATES:
        raise ValueError(f"{method.name}: unknown data kind {method.data!r}")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> AlignMethod:
    """The registered method ``name``; an unknown name is a `UserError` listing the known ones."""
    method = _REGISTRY.get(name)
    if method is None:
        raise UserError(f"unknown alignment method {name!r}; expected one of {', '.join(method_names())}")
    return method


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


register_method(AlignMethod(
    name="sft",
    summary="Supervised fine-tuning on prompt/completion records (embedded task data by default).",
    data="sft",
    # the completion logits in chunks where they would pass 32 MiB (align.chunk_size, as the pair losses)
    objective=lambda a, ref: CausalLMObjective(token_accuracy=True, chunk_size=a.chunk_size),
    reward_beta=lambda a: 1.0,  # judged by the log-likelihood margin of chosen over rejected
))
register_method(AlignMethod(
    name="dpo",
    summary="DPO (sigmoid, ipo, hinge, robust via align.loss_type; RPO with align.rpo_alpha>0) on preference "
            "pairs.",
    data="preference",
    objective=lambda a, ref: DPOObjective(beta=a.beta, loss_type=a.loss_type, label_smoothing=a.label_smoothing,
                                          rpo_alpha=a.rpo_alpha, chunk_size=a.chunk_size, reference=ref,
                                          share_prefix=a.share_prefix),
    reference=True,
))
register_method(AlignMethod(
    name="orpo",
    summary="ORPO: single-stage NLL + odds-ratio preference optimization, no reference model.",
    data="preference",
    objective=lambda a, ref: ORPOObjective(lam=a.orpo_lambda, mask_prompt=a.orpo_mask_prompt,
                                           chunk_size=a.chunk_size, share_prefix=a.share_prefix),
    reward_beta=lambda a: a.orpo_lambda,
))
register_method(AlignMethod(
    name="simpo",
    summary="SimPO: reference-free, length-normalized preference optimization.",
    data="preference",
    objective=lambda a, ref: SimPOObjective(beta=a.beta, gamma=a.simpo_gamma, label_smoothing=a.label_smoothing,
                                            chunk_size=a.chunk_size, share_prefix=a.share_prefix),
))
register_method(AlignMethod(
    name="kto",
    summary="KTO on unpaired desirable/undesirable examples (or preference pairs, unpaired).",
    data="unpaired",
    objective=lambda a, ref: KTOObjective(beta=a.beta, desirable_weight=a.kto_desirable_weight,
                                          undesirable_weight=a.kto_undesirable_weight, kl=a.kto_kl,
                                          chunk_size=a.chunk_size, reference=ref),
    reference=True,
))
