"""``trainlab generate``: load a model folder (ours or any local transformers causal LM) and continue prompts.

Prompts are tokenized as the model's tokenizer does and generation stops at the model's eos ids
(:mod:`trainlab.model.text`), so greedy output is token for token what transformers'
``model.generate(do_sample=False)`` gives on the same folder.
"""

from __future__ import annotations

from pathlib import Path

from trainlab.data.tokenizer import load_tokenizer
from trainlab.model.generate import SamplingParams
from trainlab.model.protocol import load_model, read_source
from trainlab.model.text import complete_prompts
from trainlab.train.device import resolve_device


def generate_texts(model_path: Path | None, prompts: list[str], *, max_new_tokens: int, temperature: float,
                   top_k: int, top_p: float, seed: int, device: str, cache: str = "auto") -> list[str]:
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    if model_path is None:
        from trainlab.recipes.base_model import embedded_base_model

        model_path = embedded_base_model()
    # in the folder's dtype, as transformers loads it (a bf16 model generates in bf16; training keeps fp32 masters)
    model = load_model(model_path, dtype=read_source(Path(model_path)).dtype)
    tokenizer = getattr(model, "tokenizer", None) or load_tokenizer(model_path)
    model.to(resolve_device(device))
    return complete_prompts(model, tokenizer, prompts, params, seed=seed, cache=cache)
