"""trainlab.model: our Llama-style decoder, HF interop, KV cache and generation.

* :class:`Decoder` (``decoder.py``): the model trainlab trains; HF-Llama-exact.
* :class:`HFCausalLM` (``hf.py``): any local ``transformers`` causal LM behind the same protocol.
* :class:`CausalLM`, :func:`load_model` (``protocol.py``): the contract and a loader for folders.
* :func:`save_pretrained`, :func:`load_pretrained` (``hf_export.py``): HF Llama format.
* :class:`KVCache` (``cache.py``), :func:`generate` and :class:`SamplingParams` (``generate.py``).
* :func:`complete_prompts`, :func:`generate_ids` (``text.py``): text in, text out, as transformers' generate.
* :mod:`~trainlab.model.checks`: what a model folder must pass to be loaded (one-line errors).
* :func:`save_model`, :func:`disable_dropout` (``saving.py``, ``protocol.py``): save in the source dtype; TRL's
  ``disable_dropout``.
"""

from __future__ import annotations

from trainlab.model.cache import KVCache
from trainlab.model.decoder import Decoder, positions_from_mask
from trainlab.model.generate import GenerateMixin, SamplingParams, generate, sample_next_token
from trainlab.model.hf import HFCausalLM, load_hf, quiet_transformers
from trainlab.model.hf_export import load_pretrained, save_pretrained
from trainlab.model.protocol import CausalLM, ModelSource, disable_dropout, load_model
from trainlab.model.saving import resolve_save_dtype, save_model
from trainlab.model.text import complete_prompts, encode_prompts, generate_ids, stop_token_ids

__all__ = [
    "CausalLM",
    "Decoder",
    "GenerateMixin",
    "HFCausalLM",
    "KVCache",
    "ModelSource",
    "SamplingParams",
    "complete_prompts",
    "disable_dropout",
    "encode_prompts",
    "generate",
    "generate_ids",
    "load_hf",
    "load_model",
    "load_pretrained",
    "positions_from_mask",
    "quiet_transformers",
    "resolve_save_dtype",
    "sample_next_token",
    "save_model",
    "save_pretrained",
    "stop_token_ids",
]
