"""trainlab.model: our Llama-style decoder, HF interop, KV cache and generation.

* :class:`Decoder` (``decoder.py``): the model trainlab trains; HF-Llama-exact.
* :class:`HFCausalLM` (``hf.py``): any local ``transformers`` causal LM behind the same protocol.
* :class:`CausalLM`, :func:`load_model` (``protocol.py``): the contract and a loader for folders.
* :func:`save_pretrained`, :func:`load_pretrained` (``hf_export.py``): HF Llama format.
* :class:`KVCache` (``cache.py``), :func:`generate` (``generate.py``).
"""

from __future__ import annotations

from trainlab.model.cache import KVCache
from trainlab.model.decoder import Decoder, positions_from_mask
from trainlab.model.generate import generate, sample_next_token
from trainlab.model.hf import HFCausalLM, load_hf
from trainlab.model.hf_export import load_pretrained, save_pretrained
from trainlab.model.protocol import CausalLM, load_model

__all__ = [
    "CausalLM",
    "Decoder",
    "HFCausalLM",
    "KVCache",
    "generate",
    "load_hf",
    "load_model",
    "load_pretrained",
    "positions_from_mask",
    "sample_next_token",
    "save_pretrained",
]
