"""Convert a multi-head (or grouped-query) attention checkpoint to fewer key/value heads.

Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
Checkpoints" (arXiv 2305.13245), section 2.1: to go from ``H`` key/value heads to ``N`` groups, the
key and value projection matrices of the heads in each group are **mean-pooled** into one head; the
converted model is then uptrained (they use 5% of the pre-training steps). Their ablation (figure 4)
ranks the initializations mean-pooling > keeping the first head of each group > random init.

With ``W_k`` of shape ``[Hkv·D, hidden]`` viewed as ``[N, g, D, hidden]`` (``g = Hkv / N``, heads of
a group adjacent), the new key head ``j`` is::

    mean:   W_k'[j] = (1/g) Σ_{i<g} W_k[j·g + i]
    first:  W_k'[j] = W_k[j·g]
    random: W_k'[j] ~ Normal(0, initializer_range)

and the same for ``W_v`` and for the k/v biases (Qwen2). Adjacent heads form a group because
transformers' ``repeat_kv`` (and our decoder) give query head ``h`` the key/value head
``h // (H / Hkv)``: old kv heads ``j·g .. j·g + g - 1`` served query heads
``j·H/N .. (j+1)·H/N - 1``, exactly the query heads new kv head ``j`` serves. Hence ``N = Hkv``
(``g = 1``) copies the weights and the logits are unchanged, and pooling a GQA model to fewer heads
works whenever ``N`` divides its current ``Hkv``.

Supported: Hugging Face folders of the Llama family (``model_type`` llama, mistral, qwen2, qwen3)
in safetensors, which includes our :class:`~trainlab.model.decoder.Decoder`'s folders (the Llama
layout plus ``trainlab.json``, whose ``n_kv_heads`` is updated too). Every other file (tokenizer,
generation config) is copied; the output is written beside and renamed into place.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from trainlab.errors import UserError
from trainlab.paths import check_out_outside_inputs

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
INITS = ("mean", "first", "random")
Init = Literal["mean", "first", "random"]
_KV_SUFFIXES = (".self_attn.k_proj.weight", ".self_attn.v_proj.weight", ".self_attn.k_proj.bias",
                ".self_attn.v_proj.bias")


def pool_kv_heads(w: Tensor, old_heads: int, new_heads: int, init: Init = "mean", *, std: float = 0.02,
                  generator: torch.Generator | None = None) -> Tensor:
    """``w`` (``[old_heads·D, ...]``, a k/v projection weight or bias) pooled to ``[new_heads·D, ...]``."""
    if init not in INITS:
        raise UserError(f"unknown --init {init!r}; expected one of {', '.join(INITS)}")
    if old_heads % new_heads:
        raise UserError(f"{new_heads} KV heads do not divide the current {old_heads}")
    g = old_heads // new_heads
    d = w.shape[0] // old_heads
    grouped = w.reshape(new_heads, g, d, *w.shape[1:])
    if init == "random":
        out = torch.randn(grouped[:, 0].shape, generator=generator, dtype=torch.float32) * std
        return out.to(w.dtype).reshape(new_heads * d, *w.shape[1:])
    if init == "first" or g == 1:
        return grouped[:, 0].reshape(new_heads * d, *w.shape[1:]).clone()
    return grouped.float().mean(dim=1).to(w.dtype).reshape(new_heads * d, *w.shape[1:])


def _weight_files(path: Path) -> tuple[list[str], str | None]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return shards, index.name
    if (path / "model.safetensors").is_file():
        return ["model.safetensors"], None
    raise UserError("no model.safetensors or model.safetensors.index.json (only safetensors weights are converted)",
                    path=path)


def _check_paths(model_dir: Path, out_dir: Path) -> None:
    if not model_dir.is_dir():
        raise UserError("model folder not found", path=model_dir)
    check_out_outside_inputs(out_dir, {"--model": model_dir}, action="the conversion")


def read_attention_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` of a supported folder; UserError naming the supported architectures otherwise."""
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        raise UserError("no config.json", path=model_dir)
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON: {exc.msg}", path=cfg_file, line=exc.lineno) from None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        arch = (config.get("architectures") or [model_type])[0]
        raise UserError(f"cannot convert a {arch} (model_type {model_type!r}): supported architectures are the "
                        f"Llama family with q/k/v projections, model_type {', '.join(SUPPORTED_MODEL_TYPES)} "
                        "(LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM; our Decoder)",
                        path=cfg_file)
    return config


def convert_gqa(model_dir: str | Path, out_dir: str | Path, kv_heads: int, init: Init = "mean", *,
                seed: int = 0) -> dict[str, Any]:
    """Write ``model_dir`` with ``kv_heads`` key/value heads to ``out_dir``; returns a summary.

    See the module docstring for the pooling. ``seed`` drives ``init="random"``.
    """
    src, out = Path(model_dir), Path(out_dir)
    _check_paths(src, out)
    config = read_attention_config(src)
    heads = int(config["num_attention_heads"])
    old = int(config.get("num_key_value_heads") or heads)
    if isinstance(kv_heads, bool) or not isinstance(kv_heads, int) or kv_heads <= 0:
        raise UserError(f"--kv-heads must be a positive integer, got {kv_heads!r}")
    if heads % kv_heads:
        raise UserError(f"--kv-heads {kv_heads} does not divide the {heads} attention heads")
    if old % kv_heads:
        raise UserError(f"--kv-heads {kv_heads} does not divide the model's current {old} KV heads "
                        "(heads can be pooled, not split)")
    if init not in INITS:
        raise UserError(f"unknown --init {init!r}; expected one of {', '.join(INITS)}")
    std = float(config.get("initializer_range") or 0.02)
    generator = torch.Generator().manual_seed(seed)
    shards, index_name = _weight_files(src)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    converted: list[str] = []
    total_size = 0
    try:
        for shard in shards:
            tensors: dict[str, Tensor] = {}
            with safe_open(str(src / shard), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    t = f.get_tensor(name)
                    if name.endswith(_KV_SUFFIXES):
                        t = pool_kv_heads(t, old, kv_heads, init, std=std, generator=generator)
                        converted.append(name)
                    tensors[name] = t.contiguous()
            total_size += sum(t.numel() * t.element_size() for t in tensors.values())
            save_file(tensors, str(tmp / shard), metadata={**metadata, "format": "pt"})
        expected = int(config["num_hidden_layers"]) * 2
        if sum(1 for n in converted if n.endswith(".weight")) != expected:
            raise UserError(f"expected {expected} k/v projection weights named model.layers.N.self_attn.[kv]_proj, "
                            f"found {len(converted)}", path=src)
        config["num_key_value_heads"] = kv_heads
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if index_name is not None:
            index = json.loads((src / index_name).read_text(encoding="utf-8"))
            index.setdefault("metadata", {})["total_size"] = total_size
            (tmp / index_name).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        trainlab_json = src / "trainlab.json"
        if trainlab_json.is_file():
            ours = json.loads(trainlab_json.read_text(encoding="utf-8"))
            ours["n_kv_heads"] = kv_heads
            (tmp / "trainlab.json").write_text(json.dumps(ours, indent=2) + "\n", encoding="utf-8")
        written = {"config.json", "trainlab.json", *shards, *([index_name] if index_name else [])}
        copied = []
        for item in sorted(src.iterdir()):  # tokenizer, generation config, README ...
            if item.name in written or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
            copied.append(item.name)
        from trainlab.model.hf_export import publish_folder

        publish_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"model": str(src), "out": str(out), "model_type": config.get("model_type"), "heads": heads,
            "kv_heads_before": old, "kv_heads": kv_heads, "init": init, "seed": seed if init == "random" else None,
            "group_size": old // kv_heads, "converted_tensors": len(converted), "copied_files": copied,
            "kv_cache_reduction": old / kv_heads, "weights_bytes": total_size}


__all__ = ["INITS", "SUPPORTED_MODEL_TYPES", "convert_gqa", "pool_kv_heads", "read_attention_config"]
