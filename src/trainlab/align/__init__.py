"""trainlab.align: preference optimization through the one training loop.

* ``records.py``: every TRL dataset format (language modeling, prompt/completion, messages,
  preference with explicit or implicit prompt, UltraFeedback, unpaired), read from JSONL or
  ``datasets``, validated with ``file:line`` reasons, rendered with the chat template; the
  embedded task data.
* ``datasets.py``: records tokenized exactly as TRL 1.16 tokenizes them, the length policy
  (TRL's truncation, counted), the preference / unpaired / SFT datasets and their collates.
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
from trainlab.align.datasets import (
    LengthPolicy,
    PreferenceDataset,
    SFTDataset,
    UnpairedDataset,
    collate_preference,
    collate_unpaired,
)
from trainlab.align.logprobs import SequenceLogps, chunked_token_logprobs, sequence_logps, token_logprobs
from trainlab.align.losses import LossOutput, dpo_losses, kto_losses, log1mexp, orpo_losses, simpo_losses
from trainlab.align.objectives import DPOObjective, KTOObjective, ORPOObjective, SimPOObjective
from trainlab.align.records import (
    CompletionRecord,
    EmbeddedAlignmentData,
    Issue,
    LoadReport,
    PreferenceRecord,
    TextRecord,
    embedded_alignment_data,
    load_records,
    render_conversation,
    unpair,
    use_chat_template,
)
from trainlab.align.reference import FrozenReference, model_fingerprint, reference_logps

__all__ = [
    "DPO_LOSS_TYPES",
    "METHODS",
    "AlignConfig",
    "AlignDataConfig",
    "AlignRunConfig",
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
    "SFTDataset",
    "SequenceLogps",
    "SimPOObjective",
    "TextRecord",
    "UnpairedDataset",
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
    "unpair",
    "use_chat_template",
]
