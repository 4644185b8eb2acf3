"""Hugging Face Llama format: export a :class:`Decoder`, and load one back.

A folder written by :func:`save_pretrained` loads with
``transformers.LlamaForCausalLM.from_pretrained(folder)`` (or ``AutoModelForCausalLM``) and
computes the same logits, because :class:`~trainlab.model.decoder.Decoder` *is* Llama: same RMSNorm
arithmetic, same rotate-half RoPE, same SwiGLU, no biases. It contains:

* ``config.json``: a ``LlamaConfig`` (``model_type: llama``, ``architectures: [LlamaForCausalLM]``);
  ``rope_theta`` is written both top-level (transformers 4.x) and in ``rope_parameters`` (5.x);
* ``model.safetensors``: weights under HF names (``model.embed_tokens.weight``,
  ``model.layers.{i}.self_attn.q_proj.weight``, ..., ``model.norm.weight``, and
  ``lm_head.weight`` only when embeddings are untied);
* ``trainlab.json``: our :class:`~trainlab.config.ModelConfig`, so knobs HF has no field for
  (attention backend, checkpointing, init std) survive a round trip;
* the tokenizer's files when one is given.

The folder is written into a temporary sibling and renamed into place, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from trainlab.config import ModelConfig
from trainlab.errors import UserError
from trainlab.model.decoder import Decoder

TRAINLAB_JSON = "trainlab.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

# our parameter name pattern -> HF Llama's
_TO_HF: list[tuple[str, str]] = [
    (r"^embed\.weight$", "model.embed_tokens.weight"),
    (r"^layers\.(\d+)\.attn_norm\.weight$", r"model.layers.\1.input_layernorm.weight"),
    (r"^layers\.(\d+)\.attn\.([qkvo])_proj\.weight$", r"model.layers.\1.self_attn.\2_proj.weight"),
    (r"^layers\.(\d+)\.mlp_norm\.weight$", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"^layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$", r"model.layers.\1.mlp.\2_proj.weight"),
    (r"^norm\.weight$", "model.norm.weight"),
    (r"^lm_head\.weight$", "lm_head.weight"),
]
_FROM_HF: list[tuple[str, str]] = [
    (r"^model\.embed_tokens\.weight$", "embed.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"layers.\1.attn_norm.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight$", r"layers.\1.attn.\2_proj.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"layers.\1.mlp_norm.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$", r"layers.\1.mlp.\2_proj.weight"),
    (r"^model\.norm\.weight$", "norm.weight"),
    (r"^lm_head\.weight$", "lm_head.weight"),
]
# Buffers some older exports contain; recomputed, never loaded.
_IGNORED_HF = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def _rename(name: str, table: list[tuple[str, str]]) -> str | None:
    for pattern, repl in table:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def to_hf_name(name: str) -> str:
    """Our parameter name -> HF Llama's.

    E.g. ``layers.0.attn.q_proj.weight`` -> ``model.layers.0.self_attn.q_proj.weight``.
    """
    out = _rename(name, _TO_HF)
    if out is None:
        raise KeyError(f"no HF Llama name for parameter {name!r}")
    return out


def from_hf_name(name: str) -> str | None:
    """HF Llama parameter name -> ours, or None if it is not a Llama weight we know."""
    return _rename(name, _FROM_HF)


def hf_state_dict(model: Decoder) -> dict[str, Tensor]:
    """The model's weights under HF Llama names (tied LM head omitted, as HF does)."""
    return {to_hf_name(n): p.detach() for n, p in model.named_parameters()}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _transformers_version() -> str | None:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def hf_config_dict(cfg: ModelConfig, *, dtype: torch.dtype = torch.float32, tokenizer: Any = None) -> dict[str, Any]:
    """``config.json`` content for a ``LlamaForCausalLM`` with ``cfg``'s shape. The rotary base is written both
    as transformers 5 reads it (``rope_parameters``) and as older readers do (top-level ``rope_theta``:
    transformers 4.x, converters); ``transformers_version`` as ``save_pretrained`` writes it."""
    special = {name: getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    version = _transformers_version()
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "dtype": _dtype_name(dtype),
        **special,
        **({"transformers_version": version} if version else {}),
    }


def model_config_from_hf(config: dict[str, Any], *, where: str | Path | None = None) -> ModelConfig:
    """A :class:`ModelConfig` for an HF Llama ``config.json`` dict; UserError if we cannot represent it.

    Anything that changes the computation and that :class:`Decoder` does not implement (biases,
    RoPE scaling, a non-SiLU activation, a decoupled head_dim, tensor-parallel pretraining_tp) is
    refused rather than silently ignored.
    """

    def refuse(why: str) -> UserError:
        return UserError(f"not representable as a trainlab Decoder: {why}", path=where)

    if config.get("model_type") != "llama":
        raise refuse(f"model_type is {config.get('model_type')!r}, not 'llama'")
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    # transformers 5 writes rope_parameters, 4.x wrote rope_scaling: any non-default type is refused
    for spec in (rope, scaling):
        rope_type = spec.get("rope_type", spec.get("type")) or "default"
        if rope_type != "default":
            raise refuse(f"rope type {rope_type!r}")
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    if config.get("hidden_act", "silu") != "silu":
        raise refuse(f"hidden_act {config.get('hidden_act')!r}")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise refuse("attention or MLP biases")
    if (config.get("pretraining_tp") or 1) != 1:
        raise refuse(f"pretraining_tp={config.get('pretraining_tp')}")
    dim, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = config.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != dim:
        raise refuse(f"head_dim={head_dim} with {heads} heads != hidden_size={dim}")
    try:
        return ModelConfig(
            vocab_size=int(config["vocab_size"]),
            dim=dim,
            n_layers=int(config["num_hidden_layers"]),
            n_heads=heads,
            n_kv_heads=int(config.get("num_key_value_heads") or heads),
            ffn_dim=int(config["intermediate_size"]),
            max_seq_len=int(config.get("max_position_embeddings", 2048)),
            rope_theta=float(theta),
            norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            init_std=float(config.get("initializer_range", 0.02)) or 0.02,
        )
    except (KeyError, ValueError) as exc:
        raise refuse(f"{type(exc).__name__}: {exc}") from None


# what transformers 5 writes into any re-saved tokenizer_config.json: how the tokenizer was loaded, not what it is
_LOAD_ARGUMENTS = ("is_local", "local_files_only")


def save_tokenizer(tokenizer: Any, out: Path, source: Path | None = None) -> None:
    """Save ``tokenizer`` into the folder ``out`` with the config it was loaded with.

    transformers' ``save_pretrained`` adds its load arguments (``is_local``, ``local_files_only``) to
    ``tokenizer_config.json``; they are removed again unless the ``source`` folder's config has them.
    """
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out))
        config_file, source_file = out / "tokenizer_config.json", (source or out) / "tokenizer_config.json"
        if not config_file.is_file():
            return
        config = json.loads(config_file.read_text(encoding="utf-8"))
        keep = json.loads(source_file.read_text(encoding="utf-8")) if source is not None and source_file.is_file() \
            else {}
        drop = [k for k in _LOAD_ARGUMENTS if k in config and k not in keep]
        if drop:
            for k in drop:
                del config[k]
            config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    elif hasattr(tokenizer, "save"):  # a bare `tokenizers.Tokenizer`
        tokenizer.save(str(out / "tokenizer.json"))
    else:
        raise TypeError(f"cannot save tokenizer of type {type(tokenizer).__name__}")


def publish_folder(tmp: Path, out: Path) -> Path:
    """Make the complete folder ``tmp`` (a sibling of ``out``) durable and rename it to ``out``.

    An existing ``out`` is replaced; only between the two renames (old folder aside, new one in) is
    there no folder at the name, and a crash never leaves a half-written folder under it.
    """
    for f in tmp.rglob("*"):  # durable before the rename makes the folder visible
        if not f.is_file():
            continue
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        old.rmdir()
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def save_pretrained(model: Decoder, out_dir: str | Path, tokenizer: Any = None, *, dtype: torch.dtype | None = None,
                    generation_config: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and ``tokenizer``) to ``out_dir`` in HF Llama format; returns ``out_dir``.

    ``dtype``: the dtype of the saved weights (and of ``config.json``'s ``dtype``); None keeps the
    parameters' own. ``generation_config``: written as ``generation_config.json`` when given.
    An existing ``out_dir`` is replaced (see :func:`publish_folder`).
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        weights = {name: t.to(dtype or t.dtype).contiguous().cpu() for name, t in hf_state_dict(model).items()}
        saved_dtype = next(iter(weights.values())).dtype
        # metadata format=pt: transformers refuses safetensors files without it
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        config = hf_config_dict(model.config, dtype=saved_dtype, tokenizer=tokenizer)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / TRAINLAB_JSON).write_text(
            json.dumps(model.config.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
        )
        if generation_config is not None:
            (tmp / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n",
                                                         encoding="utf-8")
        if tokenizer is not None:
            source = getattr(model, "source", None)
            save_tokenizer(tokenizer, tmp, source.path if source is not None else None)
        publish_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _weight_files(path: Path) -> list[Path]:
    index = path / WEIGHTS_INDEX_NAME
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [path / s for s in shards]
    single = path / WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise UserError(f"no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} (only safetensors weights are read)", path=path)


def read_model_config(path: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` of a folder: ``trainlab.json`` if present, else from ``config.json``."""
    p = Path(path)
    if (p / TRAINLAB_JSON).is_file():
        try:
            return ModelConfig.model_validate(json.loads((p / TRAINLAB_JSON).read_text(encoding="utf-8")))
        except ValueError as exc:
            raise UserError(f"invalid {TRAINLAB_JSON}: {exc}".splitlines()[0], path=p / TRAINLAB_JSON) from None
    if not (p / "config.json").is_file():
        raise UserError("no config.json or trainlab.json", path=p)
    return model_config_from_hf(json.loads((p / "config.json").read_text(encoding="utf-8")), where=p / "config.json")


def load_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str | None = None,
    attention: str | None = None,
) -> Decoder:
    """Load an HF Llama folder (ours or any representable one) into a :class:`Decoder`.

    ``dtype`` None keeps each tensor's stored dtype; the float32 default gives master weights
    for training (bf16/fp16 checkpoints upcast exactly). ``attention`` overrides the backend.
    Every model weight must be present and every stored tensor must be used (a leftover means the
    checkpoint has something we would otherwise silently drop).
    """
    p = Path(path)
    if not p.is_dir():
        raise UserError("model folder not found", path=p)
    cfg = read_model_config(p)
    if attention is not None:
        cfg = cfg.model_copy(update={"attention": attention})

    state: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for file in _weight_files(p):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for hf_name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if _IGNORED_HF.search(hf_name):
                    continue
                ours = from_hf_name(hf_name)
                if ours is None:
                    unexpected.append(hf_name)
                    continue
                if ours == "lm_head.weight" and cfg.tie_embeddings:
                    continue  # a redundant copy of the tied embedding
                tensor = f.get_tensor(hf_name)
                state[ours] = tensor if dtype is None else tensor.to(dtype)
    if unexpected:
        raise UserError(f"unexpected weights {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}", path=p)

    # Build on the meta device and adopt the loaded tensors: no wasted random init, no copy.
    with torch.device("meta"):
        model = Decoder(cfg)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    extra = sorted(set(state) - expected)
    if missing or extra:
        shown = [to_hf_name(n) for n in missing[:4]] + extra[:4]
        raise UserError(f"weights do not match the config: missing/extra {shown}", path=p)
    for name, tensor in state.items():
        want = model.get_parameter(name).shape
        if tensor.shape != want:
            raise UserError(f"{to_hf_name(name)} has shape {tuple(tensor.shape)}, config implies {tuple(want)}", path=p)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device) if device is not None else model
