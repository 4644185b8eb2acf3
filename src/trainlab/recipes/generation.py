"""``trainlab generate``: load a model folder (ours or any local transformers causal LM) and sample."""

from __future__ import annotations

from pathlib import Path

from trainlab.data.tokenizer import load_tokenizer
from trainlab.evaluation import generate_completions
from trainlab.model.protocol import load_model
from trainlab.train.device import resolve_device


def generate_texts(model_path: Path | None, prompts: list[str], *, max_new_tokens: int, temperature: float,
                   top_k: int, top_p: float, seed: int, device: str) -> list[str]:
    if model_path is None:
        from trainlab.recipes.base_model import embedded_base_model

        model_path = embedded_base_model()
    model = load_model(model_path)
    tokenizer = load_tokenizer(model_path)
    model.to(resolve_device(device))
    return generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
