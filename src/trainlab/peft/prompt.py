"""Prompt tuning, and the virtual-token machinery prompt tuning, P-tuning and prefix tuning share.

Prompt tuning (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"): ``n``
learned embeddings ``P ∈ R^{n×D}`` are prepended to the input embeddings of every sequence; the model
is frozen and only ``P`` trains (``n·D`` parameters)::

    h = Transformer([P; E(x)])[n:]          attention mask [1…1 (n); m],  positions 0…n-1, n, n+1, …

``P`` starts from random vectors (PEFT's ``RANDOM``: ``N(0, 1)``), from the embeddings of a text
(``TEXT``: the tokenizer's ids of ``peft.prompt_init_text``, repeated or cut to ``n``) or of random
vocabulary tokens (``SAMPLE_VOCAB``). Hugging Face PEFT's format: ``peft_type: PROMPT_TUNING``,
one tensor ``prompt_embeddings [n, D]``.

The virtual-token models (`VirtualTokensLM`): applying one of the three methods swaps the model's class
for a subclass that prepends the virtual tokens in ``hidden_states``, ``forward`` and the decoding hooks
``init_cache``/``decode_step`` (so ``generate`` sees them too), and returns hidden states and logits for
the real tokens only: ``[B, T, ·]`` as before, aligned with the labels. The encoder is the submodule
``prompt_encoder`` (a `VirtualTokens`); it produces either embeddings to prepend (``kind = "embeds"``:
prompt tuning, P-tuning) or per-layer key/value prefixes (``"prefix"``: prefix tuning, written into
the KV cache before the real tokens, as PEFT passes them as ``past_key_values``). Real tokens get
positions ``n, n+1, …`` as in PEFT (which lets transformers count positions from the virtual tokens).
``adapter_enabled = False`` on the encoder gives back the base model (`trainlab.peft.adapters_disabled`).
"""

from __future__ import annotations

import abc
import math
from typing import Any

import torch
from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.model.decoder import Decoder, positions_from_mask
from trainlab.peft.config import PeftConfig
from trainlab.peft.hf_format import base_model_name
from trainlab.peft.registry import PeftInfo, PeftMethodSpec, register_peft_method
from trainlab.peft.targets import count_parameters, freeze

ENCODER = "prompt_encoder"  # the attribute the encoder lives under (PEFT's name)


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------


class VirtualTokens(nn.Module, abc.ABC):
    """A prompt encoder: ``forward() -> [n, width]`` (embeddings, or flattened key/value prefixes). Each method's
    encoder (prompt, P-tuning, prefix) defines `load_embeddings`."""

    kind = "embeds"
    peft_type = ""

    def __init__(self, num_virtual_tokens: int) -> None:
        super().__init__()
        self.num_virtual_tokens = num_virtual_tokens
        self.adapter_enabled = True

    def saved_embeddings(self) -> Tensor:
        """What PEFT saves as ``prompt_embeddings``: the encoder's output (the plain form)."""
        with torch.no_grad():
            return self().detach()

    @abc.abstractmethod
    def load_embeddings(self, value: Tensor) -> None:
        """Load PEFT's ``prompt_embeddings``; an encoder with a reparameterization becomes plain (as
        PEFT's inference mode: the saved output is the prompt, the MLP is gone)."""


class PromptEmbedding(VirtualTokens):
    """Prompt tuning's encoder: the embeddings themselves, ``[n, D]``."""

    peft_type = "PROMPT_TUNING"

    def __init__(self, num_virtual_tokens: int, dim: int, init: Tensor | None = None) -> None:
        super().__init__(num_virtual_tokens)
        self.embedding = nn.Embedding(num_virtual_tokens, dim)
        if init is not None:
            with torch.no_grad():
                self.embedding.weight.copy_(init)

    def forward(self) -> Tensor:
        return self.embedding.weight

    def load_embeddings(self, value: Tensor) -> None:
        _check_shape("prompt_embeddings", value, self.embedding.weight)
        with torch.no_grad():
            self.embedding.weight.copy_(value)


def _check_shape(name: str, value: Tensor, target: Tensor) -> None:
    if tuple(value.shape) != tuple(target.shape):
        raise UserError(f"adapter tensor {name}: shape {tuple(value.shape)}, this model needs {tuple(target.shape)}")


# --------------------------------------------------------------------------------------------
# The model with virtual tokens
# --------------------------------------------------------------------------------------------


def _encoder(model: nn.Module) -> VirtualTokens | None:
    enc = model._modules.get(ENCODER)
    return enc if isinstance(enc, VirtualTokens) else None


def _active(model: nn.Module) -> VirtualTokens | None:
    enc = _encoder(model)
    return enc if enc is not None and enc.adapter_enabled else None


def model_dims(model: nn.Module) -> dict[str, int]:
    """``layers, dim, heads, kv_heads, head_dim`` of our decoder or a transformers model's config."""
    cfg = model.config
    if isinstance(model, Decoder):
        return {"layers": cfg.n_layers, "dim": cfg.dim, "heads": cfg.n_heads, "kv_heads": cfg.kv_heads,
                "head_dim": cfg.head_dim}
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    def first(*names: str) -> Any:
        for name in names:
            value = getattr(text, name, None)
            if value is not None:
                return value
        return None

    dim = first("hidden_size", "n_embd", "d_model")
    heads = first("num_attention_heads", "n_head", "num_heads")
    layers = first("num_hidden_layers", "n_layer", "num_layers")
    if dim is None or heads is None or layers is None:
        raise UserError(f"{type(model).__name__}: cannot read hidden size, heads and layers from its config")
    kv = first("num_key_value_heads") or heads
    head_dim = first("head_dim") or dim // heads
    return {"layers": int(layers), "dim": int(dim), "heads": int(heads), "kv_heads": int(kv),
            "head_dim": int(head_dim)}


def _input_embeddings(model: nn.Module) -> nn.Module:
    return model.embed if isinstance(model, Decoder) else model.model.get_input_embeddings()


def _prefix_pairs(enc: VirtualTokens, batch: int, dims: dict[str, int], dtype: torch.dtype
                  ) -> list[tuple[Tensor, Tensor]]:
    """Per-layer ``(keys, values) [B, Hkv, n, Dh]`` from the flat prefix ``[n, L·2·Hkv·Dh]`` (PEFT's layout:
    ``view(n, 2L, Hkv, Dh)``, then layer ``i`` takes rows ``2i`` (keys) and ``2i + 1`` (values))."""
    n, layers, kv, hd = enc.num_virtual_tokens, dims["layers"], dims["kv_heads"], dims["head_dim"]
    flat = enc().to(dtype).view(n, 2 * layers, kv, hd).permute(1, 2, 0, 3)  # [2L, Hkv, n, Dh]
    flat = flat.unsqueeze(1).expand(2 * layers, batch, kv, n, hd)
    return [(flat[2 * i], flat[2 * i + 1]) for i in range(layers)]


def _hf_prefix_cache(model: nn.Module, enc: VirtualTokens, batch: int, dtype: torch.dtype) -> Any:
    from transformers import DynamicCache

    pairs = _prefix_pairs(enc, batch, model_dims(model), dtype)
    return DynamicCache(pairs, config=model.model.config)


def _decoder_prefix_cache(model: Decoder, enc: VirtualTokens, batch: int, dtype: torch.dtype,
                          max_len: int | None = None) -> Any:
    from trainlab.model.cache import KVCache

    cache = KVCache(model.config.n_layers, max_len=max_len)
    for i, (k, v) in enumerate(_prefix_pairs(enc, batch, model_dims(model), dtype)):
        cache.update(i, k, v)
    return cache


def _extend(mask: Tensor | None, batch: int, t: int, n: int, device: torch.device) -> Tensor:
    m = torch.ones(batch, t, dtype=torch.long, device=device) if mask is None else mask.long()
    return torch.cat([m.new_ones(batch, n), m], dim=1)


class VirtualTokensLM:
    """Mixin put in front of `Decoder` / `HFCausalLM` (module docstring): virtual tokens everywhere."""

    def _virtual_forward(self, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None,
                         *, logits: bool) -> Tensor:
        enc = _active(self)  # type: ignore[arg-type]
        assert enc is not None
        b, t = input_ids.shape
        n = enc.num_virtual_tokens
        ext = _extend(attention_mask, b, t, n, input_ids.device)
        real_pos = positions_from_mask(ext)[:, n:] if position_ids is None else position_ids + n
        emb_layer = _input_embeddings(self)  # type: ignore[arg-type]
        dtype = emb_layer.weight.dtype if torch.is_floating_point(emb_layer.weight) else torch.float32
        if enc.kind == "embeds":
            virt = enc().to(dtype).unsqueeze(0).expand(b, n, -1)
            embeds = torch.cat([virt, emb_layer(input_ids)], dim=1)
            pos = torch.cat([torch.arange(n, device=input_ids.device).expand(b, n), real_pos], dim=1)
            if isinstance(self, Decoder):
                h = Decoder.hidden_states(self, None, ext, pos, None, inputs_embeds=embeds)[:, n:]
                return self.logits(h) if logits else h
            inner = self.model  # type: ignore[attr-defined]
            if logits:
                return inner(inputs_embeds=embeds, attention_mask=ext, position_ids=pos, use_cache=False).logits[:, n:]
            return inner.base_model(inputs_embeds=embeds, attention_mask=ext, position_ids=pos,
                                    use_cache=False).last_hidden_state[:, n:]
        if isinstance(self, Decoder):
            cache = _decoder_prefix_cache(self, enc, b, dtype, max_len=n + t)
            h = Decoder.hidden_states(self, input_ids, ext, real_pos, cache)
            return self.logits(h) if logits else h
        inner = self.model  # type: ignore[attr-defined]
        cache = _hf_prefix_cache(self, enc, b, dtype)  # type: ignore[arg-type]
        kw = {self._cache_arg: cache, "attention_mask": ext, "position_ids": real_pos, "use_cache": True}  # type: ignore[attr-defined]
        if logits:
            return inner(input_ids=input_ids, **kw).logits
        return inner.base_model(input_ids=input_ids, **kw).last_hidden_state

    def custom_mask_max_length(self) -> int:
        """0 while virtual tokens are active: they extend a 2D mask, a packed 4D one has no room for them."""
        if _active(self) is not None:  # type: ignore[arg-type]
            return 0
        parent = getattr(super(), "custom_mask_max_length", None)
        return int(parent()) if callable(parent) else 0

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                      position_ids: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        if _active(self) is None or args or kwargs.get("cache") is not None or kwargs.get("inputs_embeds") is not None:  # type: ignore[arg-type]
            return super().hidden_states(input_ids, attention_mask, position_ids, *args, **kwargs)  # type: ignore[misc]
        return self._virtual_forward(input_ids, attention_mask, position_ids, logits=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                *args: Any, **kwargs: Any) -> Tensor:
        if _active(self) is None or args or kwargs.get("cache") is not None:  # type: ignore[arg-type]
            return super().forward(input_ids, attention_mask, position_ids, *args, **kwargs)  # type: ignore[misc]
        return self._virtual_forward(input_ids, attention_mask, position_ids, logits=True)

    # ---- incremental decoding: the virtual tokens enter the cache on the first step ------------

    def init_cache(self, batch_size: int, max_len: int) -> Any:
        enc = _active(self)  # type: ignore[arg-type]
        if enc is None:
            return super().init_cache(batch_size, max_len)  # type: ignore[misc]
        n = enc.num_virtual_tokens
        if isinstance(self, Decoder):
            from trainlab.model.cache import KVCache

            if enc.kind == "prefix":
                dtype = self.embed.weight.dtype
                return _decoder_prefix_cache(self, enc, batch_size, dtype, max_len=max_len + n)
            return KVCache(self.config.n_layers, max_len=max_len + n)
        return None

    def decode_step(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any
                    ) -> tuple[Tensor, Any]:
        enc = _active(self)  # type: ignore[arg-type]
        if enc is None:
            return super().decode_step(input_ids, attention_mask, position_ids, cache)  # type: ignore[misc]
        b = input_ids.shape[0]
        n = enc.num_virtual_tokens
        ext = torch.cat([attention_mask.new_ones(b, n), attention_mask], dim=1)
        pos = position_ids + n
        emb_layer = _input_embeddings(self)  # type: ignore[arg-type]
        dtype = emb_layer.weight.dtype
        # the first step of a prompt holds no real token in the cache yet (a prefix is already there)
        first = cache is None if not isinstance(self, Decoder) else cache.seq_len == 0
        if isinstance(self, Decoder):
            if first and enc.kind == "embeds":
                virt = enc().to(dtype).unsqueeze(0).expand(b, n, -1)
                embeds = torch.cat([virt, emb_layer(input_ids)], dim=1)
                full = torch.cat([torch.arange(n, device=pos.device).expand(b, n), pos], dim=1)
                h = Decoder.hidden_states(self, None, ext, full, cache, inputs_embeds=embeds)
            else:
                h = Decoder.hidden_states(self, input_ids, ext, pos, cache)
            return self.logits(h[:, -1]), cache
        kwargs: dict[str, Any] = {"attention_mask": ext, "use_cache": True}
        if getattr(self, "_keep_arg", None) is not None:
            kwargs[self._keep_arg] = 1  # type: ignore[attr-defined]
        if first and enc.kind == "prefix":
            cache = _hf_prefix_cache(self, enc, b, dtype)  # type: ignore[arg-type]
        if first and enc.kind == "embeds":
            virt = enc().to(dtype).unsqueeze(0).expand(b, n, -1)
            kwargs["inputs_embeds"] = torch.cat([virt, emb_layer(input_ids)], dim=1)
            kwargs["position_ids"] = torch.cat([torch.arange(n, device=pos.device).expand(b, n), pos], dim=1)
        else:
            kwargs["input_ids"], kwargs["position_ids"] = input_ids, pos
        kwargs[self._cache_arg] = cache  # type: ignore[attr-defined]
        out = self.model(**kwargs)  # type: ignore[attr-defined]
        return out.logits[:, -1], getattr(out, self._cache_arg, None)  # type: ignore[attr-defined]


_CLASSES: dict[type, type] = {}


def attach_encoder(model: nn.Module, encoder: VirtualTokens) -> None:
    """Freeze ``model``, give it ``encoder`` as ``prompt_encoder`` and the virtual-token class."""
    from trainlab.model.hf import HFCausalLM

    if not isinstance(model, Decoder | HFCausalLM):
        raise UserError(f"virtual-token methods apply to trainlab's decoder and transformers models, not "
                        f"{type(model).__name__}")
    if _encoder(model) is not None:
        raise UserError("the model already has virtual tokens (one prompt method at a time)")
    freeze(model)
    cls = type(model)
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"{cls.__name__}WithVirtualTokens", (VirtualTokensLM, cls), {"__module__": __name__})
    ref = next(model.parameters())
    setattr(model, ENCODER, encoder.to(device=ref.device))
    model.__class__ = _CLASSES[cls]


def detach_encoder(model: nn.Module) -> VirtualTokens | None:
    """Remove the virtual tokens: the base model's class and function back (returns the encoder)."""
    enc = _encoder(model)
    if enc is None:
        return None
    del model._modules[ENCODER]
    model.__class__ = next(c for c in type(model).__mro__[1:] if not issubclass(c, VirtualTokensLM))
    return enc


def get_encoder(model: nn.Module) -> VirtualTokens:
    enc = _encoder(model)
    if enc is None:
        raise UserError("the model has no virtual tokens (prompt, P-tuning or prefix tuning)")
    return enc


def _info(model: nn.Module, method: str, note: str) -> PeftInfo:
    trainable, total = count_parameters(model)
    return PeftInfo(method=method, trainable=trainable, total=total, modules=[ENCODER], notes=[note])


def prompt_learning_config(model: nn.Module, cfg_values: dict[str, Any], peft_type: str, enc: VirtualTokens
                           ) -> dict[str, Any]:
    """The fields every PEFT prompt-learning ``adapter_config.json`` has."""
    d = model_dims(model)
    token_dim, heads = d["dim"], d["heads"]
    if peft_type == "PREFIX_TUNING":  # PEFT's GQA rule: the prefix holds key/value heads
        token_dim, heads = d["kv_heads"] * d["head_dim"], d["kv_heads"]
    return {"peft_type": peft_type, "task_type": "CAUSAL_LM", "auto_mapping": None,
            "base_model_name_or_path": base_model_name(model), "revision": None, "inference_mode": True,
            "num_virtual_tokens": enc.num_virtual_tokens, "token_dim": token_dim,
            "num_transformer_submodules": 1, "num_attention_heads": heads, "num_layers": d["layers"],
            "modules_to_save": None} | cfg_values


def prompt_state(model: nn.Module) -> dict[str, Tensor]:
    """``{"prompt_embeddings": the encoder's output}`` (PEFT's key for every prompt-learning method)."""
    return {"prompt_embeddings": get_encoder(model).saved_embeddings()}


def load_prompt_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    extra = sorted(set(state) - {"prompt_embeddings"})
    if "prompt_embeddings" not in state or extra:
        raise UserError("a prompt-learning adapter holds one tensor, prompt_embeddings; got "
                        f"{', '.join(sorted(state)) or 'none'}")
    get_encoder(model).load_embeddings(state["prompt_embeddings"])


# --------------------------------------------------------------------------------------------
# Prompt tuning
# --------------------------------------------------------------------------------------------


def _init_ids(model: nn.Module, cfg: PeftConfig, n: int) -> Tensor | None:
    init = getattr(cfg, "prompt_init", "random")
    if init == "random":
        return None
    vocab = int(_input_embeddings(model).weight.shape[0])
    if init == "vocab":
        g = torch.Generator().manual_seed(cfg.init_seed if cfg.init_seed is not None else 0)
        return torch.randint(0, vocab, (n,), generator=g)
    text = getattr(cfg, "prompt_init_text", "")
    tokenizer = getattr(model, "tokenizer", None)
    source = getattr(getattr(model, "source", None), "path", None)
    if tokenizer is None and source is not None:  # our decoder keeps no tokenizer: its folder has one
        from trainlab.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(source)
    if not text:
        raise UserError("peft.prompt_init=text needs peft.prompt_init_text", key="peft.prompt_init_text")
    if tokenizer is None:
        raise UserError("peft.prompt_init=text needs the model's tokenizer (a model loaded from a folder with one)",
                        key="peft.prompt_init")
    ids = list(tokenizer(text)["input_ids"])
    if not ids:
        raise UserError("peft.prompt_init_text tokenizes to nothing", key="peft.prompt_init_text")
    ids = (ids * math.ceil(n / len(ids)))[:n]  # repeated or cut to n, as PEFT's TEXT init
    return torch.tensor(ids, dtype=torch.long)


def apply_prompt(model: nn.Module, cfg: PeftConfig) -> PeftInfo:
    """Prompt tuning: ``peft.num_virtual_tokens`` trainable embeddings prepended to every input."""
    n = int(getattr(cfg, "num_virtual_tokens", 20))
    dim = model_dims(model)["dim"]
    ids = _init_ids(model, cfg, n)
    init = None
    if ids is not None:
        emb = _input_embeddings(model)
        with torch.no_grad():
            init = emb.weight[ids.to(emb.weight.device)].detach().float().cpu()
    enc = PromptEmbedding(n, dim, init)
    attach_encoder(model, enc)
    how = getattr(cfg, "prompt_init", "random")
    return _info(model, "prompt", f"{n} virtual tokens × {dim} (init: {how})")


def prompt_peft_config(cfg: PeftConfig, model: nn.Module) -> dict[str, Any]:
    init = {"random": "RANDOM", "text": "TEXT", "vocab": "SAMPLE_VOCAB"}[getattr(cfg, "prompt_init", "random")]
    tok_path = base_model_name(model) if init == "TEXT" else None
    return prompt_learning_config(model, {"prompt_tuning_init": init,
                                          "prompt_tuning_init_text": getattr(cfg, "prompt_init_text", "") or None,
                                          "tokenizer_name_or_path": tok_path, "tokenizer_kwargs": None},
                                  "PROMPT_TUNING", get_encoder(model))


def prompt_config_from_peft(adapter_config: dict[str, Any]) -> PeftConfig:
    _single_submodule(adapter_config)
    return PeftConfig(method="prompt", num_virtual_tokens=int(adapter_config["num_virtual_tokens"]))


def _single_submodule(adapter_config: dict[str, Any]) -> None:
    if int(adapter_config.get("num_transformer_submodules") or 1) != 1:
        raise UserError("prompt-learning adapter for an encoder-decoder model (num_transformer_submodules=2); "
                        "trainlab loads causal-LM adapters")


SPEC = register_peft_method(PeftMethodSpec(
    name="prompt", peft_type="PROMPT_TUNING", apply=apply_prompt, peft_config=prompt_peft_config,
    state_to_peft=prompt_state, state_from_peft=load_prompt_state, merge=None,
    config_from_peft=prompt_config_from_peft,
    description="prompt tuning: learned virtual-token embeddings prepended to the input (Lester et al., 2021)"))

__all__ = ["ENCODER", "PromptEmbedding", "VirtualTokens", "VirtualTokensLM", "apply_prompt", "attach_encoder",
           "detach_encoder", "get_encoder", "load_prompt_state", "model_dims", "prompt_learning_config",
           "prompt_state"]
