"""A Llama-compatible decoder-only Transformer, written to be read.

Architecture (Touvron et al., 2023, "LLaMA"; the same as HF ``LlamaForCausalLM`` so that export is
exact)::

    x = embed(input_ids)
    for each of n_layers blocks:
        x = x + o_proj(Attention(RoPE(q_proj(RMSNorm(x))), RoPE(k_proj(·)), v_proj(·)))
        x = x + down_proj(SiLU(gate_proj(RMSNorm(x))) ⊙ up_proj(RMSNorm(x)))
    h = RMSNorm(x);  logits = h Wᵀ   (W = the embedding when tied, else lm_head)

* RMSNorm (Zhang & Sennrich, 2019): ``y = w ⊙ x / sqrt(mean(x²) + eps)``, computed in float32.
* Rotary position embeddings (Su et al., 2021, "RoFormer"), in Llama's "rotate_half" layout: the
  head dimension is split in two halves ``(x₁, x₂)`` rotated by angle ``p·θ_k`` with
  ``θ_k = base^(-2k/D)``: ``RoPE(x) = x ⊙ cos + rotate_half(x) ⊙ sin``,
  ``rotate_half(x) = (-x₂, x₁)``.
* SwiGLU feed-forward (Shazeer, 2020, "GLU Variants Improve Transformer").
* Grouped-query attention with ``n_kv_heads`` key/value heads (Ainslie et al., 2023).
* No biases anywhere.

Padding: ``attention_mask`` (1 = real token) becomes a key padding mask, and position ids default
to ``cumsum(mask) - 1`` so that a left-padded prompt gets positions 0, 1, ... for its real tokens
and computes exactly what it would without padding. Outputs at padding positions are unspecified.

Activation checkpointing (Chen et al., 2016, "Training Deep Nets with Sublinear Memory Cost") is
chosen by ``ModelConfig.checkpointing``; see :class:`Decoder`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from trainlab.attention import attention, check_backend_name
from trainlab.config import ModelConfig
from trainlab.errors import UserError
from trainlab.model.cache import KVCache
from trainlab.model.generate import GenerateMixin

# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``y = w ⊙ x / sqrt(mean(x²) + eps)`` (Zhang & Sennrich, 2019).

    The statistics are computed in float32 and the normalized value is cast back to the input dtype
    *before* the weight multiply, exactly as HF Llama does, so fp32 outputs match it bit for bit.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def rope_cos_sin(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``cos, sin [B, T, D]`` for rotary embeddings at ``position_ids [B, T]``.

    ``θ_k = theta^(-2k/D)`` for ``k < D/2``; the angles ``p·θ_k`` are duplicated over both halves
    (Llama's layout). Computed in float32 on the fly from the positions, not from a cached table:
    it costs ``B·T·D`` flops once per forward (shared by all layers), works for any position, and
    cannot be degraded by a ``model.to(bfloat16)`` the way a buffer would.
    """
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim)
    )
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """``(x₁, x₂) -> (-x₂, x₁)`` over the last dimension's halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [B, H, T, D]`` by the angles in ``cos, sin [B, T, D]``.

    ``cos, sin`` are cast to x's dtype: under autocast the projections are bf16/fp16 while the
    tables follow the fp32 residual stream, and mixing them would promote q and k back to fp32,
    doubling attention's memory and hiding half-precision-only kernels from the dispatcher.
    """
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Multi-head self-attention with RoPE and ``n_kv_heads`` key/value heads (GQA/MQA)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.backend = cfg.attention
        self.q_proj = nn.Linear(cfg.dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        key_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)
        if key_padding_mask is not None and key_padding_mask.dim() == 4:
            # a custom [B, 1, T, T] mask (True: attend; packed preference pairs): SDPA takes it as is
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding_mask,
                                                 enable_gqa=self.n_heads != self.n_kv_heads)
        else:
            # Causal is bottom-right aligned, so with a cache the t new queries are the last t positions.
            out = attention(q, k, v, causal=True, key_padding_mask=key_padding_mask, backend=self.backend)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    """``down(SiLU(gate(x)) ⊙ up(x))`` (Shazeer, 2020)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.hidden_dim)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        key_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, key_padding_mask, cache, layer_idx)
        return x + self.mlp(self.mlp_norm(x))


# --------------------------------------------------------------------------------------------
# Selective activation checkpointing policy
# --------------------------------------------------------------------------------------------


def _save_list() -> frozenset[Any]:
    """Ops whose outputs selective checkpointing keeps: matmuls and fused attention kernels.

    Matmuls are the expensive part of a block to recompute (``O(T·D²)``), while norms, SiLU,
    RoPE, the elementwise product and a materialized softmax are cheap and memory-bound, so they are
    recomputed (Korthikanti et al., 2022, "Reducing Activation Recomputation in Large Transformer
    Models"). A fused attention kernel returns only its output and log-sum-exp, which its backward
    needs anyway, so keeping them costs little and avoids re-running attention (as torchtitan does).
    """
    aten = torch.ops.aten
    names = [
        ("mm", "default"),
        ("addmm", "default"),
        ("bmm", "default"),
        ("_scaled_dot_product_flash_attention", "default"),
        ("_scaled_dot_product_efficient_attention", "default"),
        ("_scaled_dot_product_cudnn_attention", "default"),
        ("_scaled_dot_product_flash_attention_for_cpu", "default"),
    ]
    ops = []
    for op, overload in names:
        packet = getattr(aten, op, None)
        if packet is not None and hasattr(packet, overload):
            ops.append(getattr(packet, overload))
    return frozenset(ops)


_SAVE_OPS = _save_list()


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context() -> Any:
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_selective_policy)


# --------------------------------------------------------------------------------------------
# The decoder
# --------------------------------------------------------------------------------------------


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids ``cumsum(mask) - 1`` (clamped at 0): real tokens count 0, 1, ... from the first one.

    Left padding therefore does not shift the positions of the real tokens; padding positions get 0
    (before the first real token) or repeat the last position (after it); they are don't-cares.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


class Decoder(GenerateMixin, nn.Module):
    """Llama-style causal LM implementing :class:`trainlab.model.protocol.CausalLM`.

    Activation checkpointing (``cfg.checkpointing``), applied per block and only while training
    with gradients enabled:

    * ``none``: keep every activation;
    * ``full``: keep only each block's input and recompute the block in backward;
    * ``every_n``: like ``full`` for blocks ``0, n, 2n, ...`` (``n = cfg.checkpoint_every``),
      trading memory for compute in between;
    * ``selective``: every block, but matmul and fused-attention outputs are saved and only cheap
      pointwise ops (norms, SiLU, RoPE, softmax) are recomputed (see :func:`_save_list`).

    All use ``torch.utils.checkpoint`` with ``use_reentrant=False``, which supports keyword
    arguments, inputs that do not require grad and nested autograd, unlike the reentrant variant.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise UserError(
                "model.vocab_size is 0 ('take it from the tokenizer'): set it before building the model",
                key="model.vocab_size",
            )
        check_backend_name(cfg.attention)
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head: nn.Linear | None = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Decoder:
        """Build (and initialize) a model directly on ``device`` in ``dtype``."""
        with torch.device(device or "cpu"):
            model = cls(cfg)
        return model.to(dtype=dtype) if dtype is not None else model

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> Decoder:
        """Load an HF Llama folder (see :func:`trainlab.model.hf_export.load_pretrained`)."""
        from trainlab.model.hf_export import load_pretrained

        return load_pretrained(path, **kwargs)

    def save_pretrained(self, out_dir: str | Path, tokenizer: Any = None) -> Path:
        """Write an HF Llama folder (see :func:`trainlab.model.hf_export.save_pretrained`)."""
        from trainlab.model.hf_export import save_pretrained

        return save_pretrained(self, out_dir, tokenizer=tokenizer)

    def set_attention_backend(self, name: str) -> None:
        """Switch every layer to attention backend ``name`` (e.g. to benchmark backends on one model)."""
        check_backend_name(name)
        self.config = self.config.model_copy(update={"attention": name})
        for layer in self.layers:
            layer.attn.backend = name

    # ---- initialization -----------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by ``1/sqrt(2·n_layers)``.

        Each block adds two residual branches, so without the scaling the residual stream's variance
        grows with depth (GPT-2, Radford et al., 2019; nanoGPT). Norm weights start at 1.
        """
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual else std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    # ---- protocol -----------------------------------------------------------------------------

    def output_embedding(self) -> Tensor:
        """The LM-head weight ``[V, D]``: the embedding when tied. ``logits = hidden @ W.T``."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def custom_mask_max_length(self) -> int:
        """Rows up to ``max_seq_len`` take a custom ``[B, 1, T, T]`` mask (`hidden_states`), with the
        automatic or SDPA attention backend; 0 with a backend chosen by name (it runs as chosen)."""
        return self.config.max_seq_len if self.config.attention in ("auto", "sdpa") else 0

    def _key_padding_mask(self, attention_mask: Tensor | None, has_past: bool) -> Tensor | None:
        """The boolean key mask for attention, or None when masking cannot change real tokens.

        All-ones masks need none. Without a cache, a right-padded mask needs none either: under
        causal attention a real token never sees keys to its right. Dropping the mask lets SDPA use
        its mask-free fused kernels (one host sync per forward to find out).
        """
        if attention_mask is None:
            return None
        keep = attention_mask.bool()
        if has_past:
            return None if bool(keep.all()) else keep
        non_increasing = keep[:, 1:] <= keep[:, :-1]
        return None if bool(non_increasing.all()) else keep

    def _checkpointed(self, i: int) -> bool:
        policy = self.config.checkpointing
        if policy == "none" or not (self.training and torch.is_grad_enabled()):
            return False
        if policy == "every_n":
            return i % self.config.checkpoint_every == 0
        return True  # full, selective

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """Final-normed hidden states ``[B, T, D]``.

        ``attention_mask`` is ``[B, T]``, or ``[B, past + T]`` with a ``cache`` holding ``past``
        tokens (the HF convention). ``position_ids`` default to ``cumsum(mask) - 1`` (last ``T``
        columns), or ``past + arange(T)`` without a mask. ``inputs_embeds [B, T, D]``, when given,
        replaces ``embed(input_ids)`` (``input_ids`` may then be None): prompt tuning and P-tuning
        prepend learned virtual-token embeddings this way (`trainlab.peft.prompt`). A boolean
        ``[B, 1, T, T]`` mask (True: attend; with ``position_ids``) replaces causal masking (packed
        preference pairs, `trainlab.align.prefix_sharing`).
        """
        b, t = (inputs_embeds if inputs_embeds is not None else input_ids).shape[:2]
        device = (inputs_embeds if inputs_embeds is not None else input_ids).device
        past = cache.seq_len if cache is not None else 0
        if attention_mask is not None and attention_mask.dim() == 4:  # packed pairs (`trainlab.align.prefix_sharing`)
            key_padding_mask = self._custom_mask(attention_mask, (b, t), position_ids, cache, inputs_embeds)
        else:
            if attention_mask is not None and tuple(attention_mask.shape) != (b, past + t):
                raise ValueError(f"attention_mask must be [B, past+T] = {(b, past + t)}, got "
                                 f"{tuple(attention_mask.shape)}")
            key_padding_mask = self._key_padding_mask(attention_mask, has_past=past > 0)
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)[:, past:]
            else:
                position_ids = torch.arange(past, past + t, device=device).expand(b, t)

        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            if cache is None and self._checkpointed(i):
                extra: dict[str, Any] = {}
                if self.config.checkpointing == "selective":
                    extra["context_fn"] = _selective_context
                x = checkpoint(layer, x, cos, sin, key_padding_mask, None, i, use_reentrant=False, **extra)
            else:
                x = layer(x, cos, sin, key_padding_mask, cache, i)
        return self.norm(x)

    @staticmethod
    def _custom_mask(mask: Tensor, shape: tuple[int, int], position_ids: Tensor | None, cache: KVCache | None,
                     inputs_embeds: Tensor | None) -> Tensor:
        """A custom boolean ``[B, 1, T, T]`` mask (True: attend), checked; it needs explicit positions."""
        b, t = shape
        if cache is not None or inputs_embeds is not None or position_ids is None:
            raise ValueError("a [B, 1, T, T] attention mask needs position_ids, and takes no cache or inputs_embeds")
        if tuple(mask.shape) != (b, 1, t, t) or mask.dtype != torch.bool:
            raise ValueError(f"a custom attention mask must be bool [B, 1, T, T] = {(b, 1, t, t)}, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        return mask

    def logits(self, hidden: Tensor) -> Tensor:
        """``hidden @ Wᵀ`` with W the output embedding."""
        return F.linear(hidden, self.output_embedding())

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Logits ``[B, T, V]`` (see :meth:`hidden_states` for the arguments)."""
        return self.logits(self.hidden_states(input_ids, attention_mask, position_ids, cache))

    # ---- incremental decoding (used by trainlab.model.generate) -------------------------------

    def init_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty cache sized for ``max_len`` tokens (it grows if more come)."""
        del batch_size  # buffers are allocated on first write, from the keys' shape
        return KVCache(self.config.n_layers, max_len=max_len)

    def decode_step(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: KVCache
    ) -> tuple[Tensor, KVCache]:
        """Run ``input_ids`` through the model appending to ``cache``; return last-position logits."""
        hidden = self.hidden_states(input_ids, attention_mask, position_ids, cache=cache)
        return self.logits(hidden[:, -1]), cache

    # ---- accounting ---------------------------------------------------------------------------

    def num_parameters(self, *, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count, tied weights counted once (the same numbers as HF's ``num_parameters``)."""
        skip = {id(self.embed.weight)} if exclude_embeddings else set()
        return sum(
            p.numel() for p in self.parameters() if id(p) not in skip and (p.requires_grad or not only_trainable)
        )

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token, ``6·N + 12·L·T·D`` (Kaplan et al., 2020; PaLM appendix B).

        ``N`` excludes the input embedding (a lookup, not a matmul) but includes the LM head. The
        second term is attention's ``QKᵀ`` and ``PV`` at sequence length ``T`` (forward + backward).
        """
        cfg = self.config
        t = seq_len or cfg.max_seq_len
        n = self.num_parameters(exclude_embeddings=True)
        if self.lm_head is None:
            n += self.embed.weight.numel()
        return 6 * n + 12 * cfg.n_layers * t * cfg.dim


__all__ = [
    "Attention",
    "Block",
    "Decoder",
    "RMSNorm",
    "SwiGLU",
    "apply_rope",
    "positions_from_mask",
    "rope_cos_sin",
    "rotate_half",
]
