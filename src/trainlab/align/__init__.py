"""trainlab.align: preference optimization through the one training loop.

* ``data.py``: preference / unpaired / SFT records (JSONL or ``datasets``, plain or
  conversational), validation with ``file:line`` reasons, tokenization with the prompt boundary in
  token space, truncation policy, collates, and the embedded task data.
* ``logprobs.py``: per-sequence completion log-probs from hidden states and the output embedding,
  optionally chunked so ``[batch, seq, vocab]`` logits never exist.
* ``losses.py``: DPO (sigmoid/cDPO, IPO, hinge, robust), ORPO, SimPO, KTO, one implementation each.
* ``objectives.py``: those losses as `trainlab.train.objectives.Objective` s.
* ``reference.py``: the reference policy, frozen or cached by fingerprint.
* ``evaluate.py``: oracle accuracy, win rate, implicit-reward accuracy, KL, sample tables.
* ``config.py``: the ``align`` / ``align_data`` config sections and per-method defaults.
"""

from trainlab.align.config import (
    DPO_LOSS_TYPES,
    METHODS,
    AlignConfig,
    AlignDataConfig,
    AlignRunConfig,
    align_config,
    method_defaults,
)
from trainlab.align.data import (
    CompletionDataset,
    CompletionRecord,
    EmbeddedAlignmentData,
    Issue,
    LengthPolicy,
    LoadReport,
    PreferenceDataset,
    PreferenceRecord,
    collate_preference,
    collate_unpaired,
    embedded_alignment_data,
    load_records,
    render_conversation,
)
from trainlab.align.logprobs import SequenceLogps, chunked_token_logprobs, sequence_logps, token_logprobs
from trainlab.align.losses import LossOutput, dpo_losses, kto_losses, log1mexp, orpo_losses, simpo_losses
from trainlab.align.objectives import DPOObjective, KTOObjective, ORPOObjective, SimPOObjective
from trainlab.align.reference import FrozenReference, model_fingerprint, reference_logps

__all__ = [
    "DPO_LOSS_TYPES",
    "METHODS",
    "AlignConfig",
    "AlignDataConfig",
    "AlignRunConfig",
    "CompletionDataset",
    "CompletionRecord",
    "DPOObjective",
    "EmbeddedAlignmentData",
    "FrozenReference",
    "Issue",
    "KTOObjective",
    "LengthPolicy",
    "LoadReport",
    "LossOutput",
    "ORPOObjective",
    "PreferenceDataset",
    "PreferenceRecord",
    "SequenceLogps",
    "SimPOObjective",
    "align_config",
    "chunked_token_logprobs",
    "collate_preference",
    "collate_unpaired",
    "dpo_losses",
    "embedded_alignment_data",
    "kto_losses",
    "load_records",
    "log1mexp",
    "method_defaults",
    "model_fingerprint",
    "orpo_losses",
    "reference_logps",
    "render_conversation",
    "sequence_logps",
    "simpo_losses",
    "token_logprobs",
]
