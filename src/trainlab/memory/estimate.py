"""Training memory from formulas: parameters, gradients, optimizer states, activations, logits.

**Model states**, per trainable parameter, as trainlab trains (fp32 master weights in every
precision; bf16/fp16 are autocast *compute* types, Micikevicius et al. 2018):

    parameters 4 B · gradients 4 B · optimizer states: AdamW 8 B (m, v), Lion 4 B (m),
    SGD with momentum 4 B, 8-bit AdamW 2 B + 2·4/2048 B (two uint8 states plus one fp32 absmax per
    block of 2048 values; Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization")

Under autocast the matmul weights are also cast to 16 bits once per forward and the copies are
saved for backward: 2 B per block weight (counted with the activations, where they live).

**Activations.** Two counts:

* Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. 1-2:
  a GPT-3-style layer with 16-bit activations and dropout stores ``s·b·h·(34 + 5·a·s/h)`` bytes
  (``s`` sequence, ``b`` batch, ``h`` hidden size, ``a`` heads); with selective recomputation
  ``34·s·b·h``; with full recomputation ``2·s·b·h`` (only the layer input). Published, but for a
  different block (LayerNorm, GeLU MLP, dropout, materialized attention).
* Our decoder's exact count (`decoder_activations`): for each tensor autograd saves in one
  block (RMSNorm, RoPE, fused attention, SwiGLU; no dropout), its bytes per token. Per token and
  layer, with ``D`` the width, ``Dkv`` the key/value width, ``F`` the MLP width, ``H`` heads,
  ``d`` head size:

      fp32, no checkpointing     32·D + 8·Dkv + 16·F + 4·H + 8
          (input, 2 RMSNorms x (1/rms, normalized, output), q, k, v after RoPE, attention output
           and log-sum-exp, residual, gate, SiLU(gate), up, product)
      bf16/fp16 autocast         30·D + 4·Dkv + 8·F + 8·d + 4·H + 8
          (the fp32 residual stream and norms stay 4 B; autocast saves its own 2-B cast of the
           norm output for each of q/k/v and gate/up, and of cos/sin for q and k)
      full checkpointing         4·D                 (the block input; the rest is recomputed)
      selective checkpointing    4·D + A·(2·Dq + 2·Dkv + 2·D + 2·F) + 4·H   (A = 2 or 4 B)
          (input + matmul and attention outputs; norms, RoPE, SiLU are recomputed)

  plus, once per model: input ids (8 B/token), fp32 cos/sin tables (8·d B/token, when saved),
  the final RMSNorm (8·D + 4 B/token). The test checks this against exact CPU accounting.

**Logits.** The loss head (`trainlab.train.objectives.CausalLMObjective`) computes fp32 logits at
the ``N`` supervised positions only and saves their log-softmax: ``N·(4·V + 4·D + 8)`` bytes plus
the position mask. During backward two more ``N·V`` fp32 buffers exist for a moment (the
gradients of log-probabilities and logits), which the peak estimate adds.

**ZeRO** (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", Fig. 1), model states per GPU with ``Ψ`` parameters, ``N`` GPUs, fp16 parameters and
gradients and ``K`` bytes of optimizer state per parameter (12 for mixed-precision Adam: fp32
master copy, m, v):

    stage 0 (DDP)   (2 + 2 + K)·Ψ          stage 1 (P_os)   4·Ψ + K·Ψ/N
    stage 2 (P_os+g) 2·Ψ + (2 + K)·Ψ/N     stage 3 (P_os+g+p) (2 + 2 + K)·Ψ/N
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainlab.errors import UserError

Precision = Literal["fp32", "fp16", "bf16"]
Optim = Literal["adamw", "lion", "sgd", "adamw8bit"]
Policy = Literal["none", "full", "every_n", "selective"]

PRECISIONS = ("fp32", "fp16", "bf16")
OPTIMS = ("adamw", "lion", "sgd", "adamw8bit")
POLICIES = ("none", "full", "every_n", "selective")

#: Bytes of optimizer state per trainable fp32 parameter (see the module docstring).
ADAM8BIT_BLOCK = 2048
OPTIMIZER_STATE_BYTES: dict[str, float] = {
    "adamw": 8.0,
    "lion": 4.0,
    "sgd": 4.0,  # the momentum buffer; plain SGD (momentum 0) keeps none
    "adamw8bit": 2.0 + 2 * 4.0 / ADAM8BIT_BLOCK,
}

#: ZeRO's K: optimizer bytes per parameter in mixed precision (fp32 master copy + states).
ZERO_K: dict[str, float] = {"adamw": 12.0, "lion": 8.0, "sgd": 8.0, "adamw8bit": 4.0 + 2.0 + 2 * 4.0 / ADAM8BIT_BLOCK}

#: The vocabulary assumed when only a parameter count is given (Llama-2's).
DEFAULT_VOCAB = 32000


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


def parse_count(text: str | int | float) -> int:
    """``7B``, ``1.3b``, ``125M``, ``350k``, ``7e9`` or ``7000000000`` -> an int."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        raw = str(text).strip().lower().replace("_", "").replace(",", "")
        mult = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
        factor = 1.0
        if raw and raw[-1] in mult:
            factor = mult[raw[-1]]
            raw = raw[:-1]
        try:
            value = float(raw) * factor
        except ValueError:
            raise UserError(f"cannot read a count from {text!r}; write e.g. 7B, 125M, 350k or 7e9") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"the count must be a positive number, got {text!r}")
    return round(value)


# --------------------------------------------------------------------------------------------
# Model shape
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the formulas need to know about a Llama-style decoder."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    head_dim: int
    tie_embeddings: bool = True
    n_params: int = 0  # 0: computed from the shape
    source: str = "shape"

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def block_matmul_params(self) -> int:
        """Linear weights of one block (q, k, v, o, gate, up, down)."""
        d = self.dim
        return 2 * d * self.q_dim + 2 * d * self.kv_dim + 3 * d * self.ffn_dim

    @property
    def params_from_shape(self) -> int:
        per_layer = self.block_matmul_params + 2 * self.dim
        embed = self.vocab_size * self.dim
        return embed * (1 if self.tie_embeddings else 2) + self.n_layers * per_layer + self.dim

    @property
    def params(self) -> int:
        return self.n_params or self.params_from_shape

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"params": self.params}

    @classmethod
    def from_model_config(cls, cfg: Any, vocab_size: int | None = None) -> ModelShape:
        """From a `trainlab.config.ModelConfig` (``vocab_size`` 0 means: take it from ``vocab_size``)."""
        vocab = cfg.vocab_size or vocab_size
        if not vocab:
            raise UserError("the model config has vocab_size 0 (from the tokenizer); give the vocabulary size")
        return cls(vocab_size=int(vocab), dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                   n_kv_heads=cfg.kv_heads, ffn_dim=cfg.hidden_dim, head_dim=cfg.head_dim,
                   tie_embeddings=cfg.tie_embeddings, source="trainlab config")

    @classmethod
    def from_hf_config(cls, data: dict[str, Any], source: str = "config.json") -> ModelShape:
        """From a Hugging Face ``config.json`` (Llama/Mistral/Qwen keys, or GPT-2's ``n_embd``...)."""
        def pick(*keys: str) -> Any:
            for k in keys:
                if data.get(k) is not None:
                    return data[k]
            return None

        dim = pick("hidden_size", "n_embd", "d_model")
        layers = pick("num_hidden_layers", "n_layer", "num_layers")
        heads = pick("num_attention_heads", "n_head", "num_heads")
        vocab = pick("vocab_size")
        if not all(isinstance(v, int) and v > 0 for v in (dim, layers, heads, vocab)):
            raise UserError(f"{source}: need hidden_size, num_hidden_layers, num_attention_heads and vocab_size")
        kv = pick("num_key_value_heads") or heads
        ffn = pick("intermediate_size", "n_inner", "ffn_dim") or 4 * dim
        head_dim = pick("head_dim") or dim // heads
        tie = bool(data.get("tie_word_embeddings", False))
        return cls(vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv, ffn_dim=ffn,
                   head_dim=head_dim, tie_embeddings=tie, source=source)

    @classmethod
    def guess(cls, params: int, vocab_size: int = DEFAULT_VOCAB) -> ModelShape:
        """A Llama-like shape with about ``params`` parameters, for activation estimates.

        Width/depth ratio 128 (GPT-3's and Llama's models sit near it; Kaplan et al. 2020 found the
        loss insensitive to it), head size 128 (64 below width 1024), MLP width 8/3·D rounded up to
        256, untied embeddings. Solves ``12·D³/128 + 2·V·D = params`` for ``D``.
        """
        lo, hi = 1.0, 1e6
        for _ in range(200):
            mid = (lo + hi) / 2
            if 12 * mid**3 / 128 + 2 * vocab_size * mid < params:
                lo = mid
            else:
                hi = mid
        head = 128 if lo >= 1024 else 64
        dim = max(head, round(lo / head) * head)
        layers = max(1, round(dim / 128))
        ffn = 256 * math.ceil(8 * dim / 3 / 256)
        return cls(vocab_size=vocab_size, dim=dim, n_layers=layers, n_heads=dim // head, n_kv_heads=dim // head,
                   ffn_dim=ffn, head_dim=head, tie_embeddings=False, n_params=params,
                   source=f"guessed from {params:,} parameters (width/depth 128)")


def read_model_config(spec: str | Path) -> tuple[Path, dict[str, Any] | None]:
    """(the file, its JSON object or None for a trainlab YAML) of an HF folder, its ``config.json`` or a YAML.

    The one reader behind every ``--model`` of the calculators (memory, kv-cache): a folder means its
    ``config.json``; a ``.json`` file is parsed here; anything else is a trainlab YAML config for
    `trainlab.config.load_config`. Problems are one-line `UserError`s naming the file.
    """
    p = Path(spec).expanduser()
    if p.is_dir():
        p = p / "config.json"
        if not p.is_file():
            raise UserError(f"{spec}: no config.json in this folder")
    if not p.is_file():
        raise UserError(f"model config not found: {spec}")
    if p.suffix != ".json":
        return p, None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON: {exc.msg}", path=p, line=exc.lineno) from None
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", path=p)
    return p, data


def load_shape(spec: str | Path) -> ModelShape:
    """A shape from a trainlab YAML config, a Hugging Face model folder, or its ``config.json``."""
    return load_model_spec(spec)[0]


def load_model_spec(spec: str | Path) -> tuple[ModelShape, dict[str, Any]]:
    """(shape, training settings) from a trainlab YAML config, an HF model folder or ``config.json``.

    A trainlab config also gives its batch, sequence length, precision, optimizer, checkpointing
    and accumulation (the defaults of ``trainlab calc memory --model``); an HF config gives none.
    """
    p, data = read_model_config(spec)
    if data is not None:
        return ModelShape.from_hf_config(data, source=str(p)), {}
    from trainlab.config import load_config

    cfg = load_config(p, preset="quick")
    shape = ModelShape.from_model_config(cfg.model, vocab_size=cfg.data.vocab_size)
    settings = {"batch": cfg.train.batch_size, "seq": cfg.data.seq_len, "precision": cfg.train.precision,
                "optim": cfg.train.optim, "checkpointing": cfg.model.checkpointing, "grad_accum": cfg.train.grad_accum,
                "checkpoint_every": cfg.model.checkpoint_every}
    return ModelShape(**{**asdict(shape), "source": str(p)}), settings


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


def parameter_bytes(params: int) -> int:
    """fp32 master weights: 4 B each, in every precision (autocast computes in 16 bits)."""
    return 4 * params


def gradient_bytes(trainable: int) -> int:
    """fp32 gradients of the trainable parameters."""
    return 4 * trainable


def optimizer_state_bytes(trainable: int, optim: str, *, momentum: float = 0.9) -> int:
    """Optimizer state for ``trainable`` fp32 parameters (see `OPTIMIZER_STATE_BYTES`)."""
    _check("optimizer", optim, OPTIMS)
    if optim == "sgd" and momentum == 0:
        return 0
    return round(OPTIMIZER_STATE_BYTES[optim] * trainable)


def korthikanti_layer_bytes(seq: int, batch: int, hidden: int, heads: int, policy: str = "none") -> int:
    """Korthikanti et al. 2022: bytes of activations one GPT-3-style layer stores (16-bit, dropout).

    ``none``: ``sbh(34 + 5as/h)``; ``selective``: ``34·sbh``; ``full``: ``2·sbh`` (the input).
    """
    sbh = seq * batch * hidden
    if policy == "full":
        return 2 * sbh
    if policy == "selective":
        return 34 * sbh
    return 34 * sbh + 5 * heads * seq * seq * batch


@dataclass
class ActivationCount:
    """Our decoder's activation bytes (saved for backward), by part."""

    per_layer: list[int]  # per block, as checkpointed
    weight_copies: int  # autocast's 16-bit weight copies saved by non-checkpointed blocks
    embedding: int  # input ids (+ the fp32 cos/sin tables when they are saved)
    final_norm: int
    logits: int  # the loss head: log-softmax at supervised positions, gathered hidden, targets
    logits_transient: int  # extra fp32 N·V buffers alive for a moment in backward
    recompute: int = 0  # extra bytes while a checkpointed block is recomputed and differentiated
    freed_before_recompute: int = 0  # activations of the blocks after the last checkpointed one
    first_block_backward: int = 0  # live besides model states while block 0 is differentiated

    @property
    def body(self) -> int:
        return sum(self.per_layer) + self.weight_copies + self.embedding + self.final_norm

    @property
    def total(self) -> int:
        return self.body + self.logits


def layer_checkpointed(i: int, policy: str, every: int) -> bool:
    """Whether block ``i`` is checkpointed under ``policy`` (as `trainlab.model.decoder.Decoder`)."""
    if policy == "none":
        return False
    if policy == "every_n":
        return i % every == 0
    return True


def decoder_activations(shape: ModelShape, batch: int, seq: int, precision: str = "fp32", policy: str = "none",
                        *, checkpoint_every: int = 2, supervised: int | None = None) -> ActivationCount:
    """Exact bytes our decoder saves for backward (see the module docstring for the terms).

    ``supervised``: the number of positions the loss covers (default ``batch·(seq − 1)``, packed
    pre-training data). Assumes a fused attention kernel (SDPA/FlashAttention: saves q, k, v, the
    output and the log-sum-exp) and no padding mask.
    """
    _check("precision", precision, PRECISIONS)
    _check("checkpointing policy", policy, POLICIES)
    tokens = batch * seq
    d, dq, dkv, f, h, hd = shape.dim, shape.q_dim, shape.kv_dim, shape.ffn_dim, shape.n_heads, shape.head_dim
    a = 4 if precision == "fp32" else 2
    if precision == "fp32":
        # x, h_norm1, y1, x1, h_norm2, y2 (6 x D), q_rope and attention output (2 x Dq), k_rope and
        # v (2 x Dkv), gate, SiLU(gate), up, product (4 x F), lse (H), two 1/rms (2); all 4 B.
        none_per_token = 4 * (6 * d + 2 * dq + 2 * dkv + 4 * f + h + 2)
    else:
        # x, h_norm1, x1, h_norm2 in fp32 (16·D), 5 autocast casts of norm outputs (10·D),
        # q_rope, out (2·Dq each), k_rope, v (2·Dkv each), cos/sin casts (4 x 2·d), MLP (4 x 2·F),
        # lse (4·H), two 1/rms (8).
        none_per_token = 16 * d + 10 * d + 4 * dq + 4 * dkv + 8 * hd + 8 * f + 4 * h + 8
    full_per_token = 4 * d
    selective_per_token = 4 * d + a * (2 * dq + 2 * dkv + 2 * d + 2 * f) + 4 * h
    per_layer: list[int] = []
    copies = 0
    any_ckpt = False
    for i in range(shape.n_layers):
        if layer_checkpointed(i, policy, checkpoint_every):
            any_ckpt = True
            per_layer.append(tokens * (selective_per_token if policy == "selective" else full_per_token))
        else:
            per_layer.append(tokens * none_per_token)
            if precision != "fp32":
                copies += 2 * shape.block_matmul_params
    copies_block = 2 * shape.block_matmul_params if a == 2 else 0
    working = tokens * (4 * d + 3 * a * f)  # gradient into a block + SwiGLU's F-wide gradient buffers
    recompute = freed = 0
    if any_ckpt:
        last = max(i for i in range(shape.n_layers) if layer_checkpointed(i, policy, checkpoint_every))
        # By the time the last checkpointed block is recomputed, the blocks after it and the final
        # norm have been differentiated: their activations are freed, their weight gradients exist.
        later = shape.n_layers - 1 - last
        freed = (sum(per_layer[last + 1:]) + later * (2 * shape.block_matmul_params if a == 2 else 0)
                 + tokens * (8 * d + 4) - later * 4 * (shape.block_matmul_params + 2 * d))
        # Backward of a checkpointed block holds its recomputed activations (and autocast weight
        # copies) beside what the block kept, plus the gradient flowing in (4·D per token) and the
        # SwiGLU's three F-wide gradient buffers.
        kept = selective_per_token if policy == "selective" else full_per_token
        recompute = tokens * (none_per_token - kept) + copies_block + working
    cos_sin = 8 * hd * tokens if (precision == "fp32" or any_ckpt) else 0
    embedding = 8 * tokens + cos_sin
    final_norm = tokens * (8 * d + 4)
    # The last block differentiated (block 0): every weight gradient exists by then; the block is
    # fully materialized (recomputed if checkpointed) with its working gradients.
    first_block = embedding + tokens * none_per_token + copies_block + working
    n = batch * (seq - 1) if supervised is None else supervised
    logits = n * (4 * shape.vocab_size + 4 * d + 8) + batch * (seq - 1) + 4
    return ActivationCount(per_layer=per_layer, weight_copies=copies, embedding=embedding, final_norm=final_norm,
                           logits=logits, logits_transient=2 * 4 * n * shape.vocab_size, recompute=recompute,
                           freed_before_recompute=freed, first_block_backward=first_block)


# --------------------------------------------------------------------------------------------
# A whole configuration
# --------------------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Bytes of one training configuration, by component; ``peak`` models the step's high mark."""

    shape: ModelShape
    batch: int
    seq: int
    precision: str
    optim: str
    checkpointing: str
    params: int
    trainable: int
    parameters: int
    gradients: int
    optimizer_states: int
    activations: int  # the body: blocks, autocast weight copies, embedding, final norm
    logits: int
    activation_detail: ActivationCount
    korthikanti_per_layer: int
    korthikanti_total: int
    optimizer_temporaries: int
    grad_accum: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """The classic sum: model states + activations + logits (an upper bound on the peak)."""
        return self.parameters + self.gradients + self.optimizer_states + self.activations + self.logits

    @property
    def peak(self) -> int:
        """The step's high mark (steady state, gradients freed between steps).

        The largest of: the start of backward (weights, optimizer states, every saved activation,
        the head's transient fp32 ``N·V`` buffers and the head's weight gradient, or every
        gradient when accumulating over micro-batches); with
        checkpointing, the backward of the last checkpointed block (its recomputed activations
        instead of the head's buffers); the end of backward (every weight gradient, block 0
        materialized); the optimizer step (weights, gradients, states and the optimizer's
        temporaries). Smaller per-op buffers are not modelled (a few percent).
        """
        det = self.activation_detail
        states = self.parameters + self.optimizer_states
        head_grad = 4 * self.shape.vocab_size * self.shape.dim
        # With accumulation, micro-batches after the first run while the gradients already exist.
        held = self.gradients if self.grad_accum > 1 else head_grad
        backward = states + self.activations + self.logits + det.logits_transient + held
        recompute = (states + self.activations - det.freed_before_recompute + det.recompute + held
                     if det.recompute else 0)
        block0_grads = 4 * (self.shape.block_matmul_params + 2 * self.shape.dim) if self.trainable == self.params else 0
        end_of_backward = (self.parameters + self.gradients - block0_grads + self.optimizer_states
                           + det.first_block_backward)
        step = self.parameters + self.gradients + self.optimizer_states + self.optimizer_temporaries
        return max(backward, recompute, end_of_backward, step)

    def components(self) -> dict[str, int]:
        return {"parameters": self.parameters, "gradients": self.gradients,
                "optimizer_states": self.optimizer_states, "activations": self.activations,
                "logits": self.logits}

    def to_dict(self) -> dict[str, Any]:
        det = self.activation_detail
        return {
            "config": {"params": self.params, "trainable": self.trainable, "batch": self.batch,
                       "grad_accum": self.grad_accum, "seq": self.seq,
                       "precision": self.precision, "optim": self.optim, "checkpointing": self.checkpointing},
            "shape": self.shape.to_dict(),
            "bytes": self.components() | {"total": self.total, "peak": self.peak},
            "activations_detail": {"per_layer": det.per_layer, "autocast_weight_copies": det.weight_copies,
                                   "embedding_and_rope": det.embedding, "final_norm": det.final_norm,
                                   "logits_transient": det.logits_transient, "recompute": det.recompute},
            "korthikanti": {"per_layer": self.korthikanti_per_layer, "total": self.korthikanti_total,
                            "note": "GPT-3-style layer, 16-bit activations with dropout (Korthikanti et al. 2022)"},
            "notes": self.notes,
        }


def optimizer_temporaries(trainable: int, optim: str) -> int:
    """Scratch memory of one optimizer step. torch's foreach AdamW builds ``sqrt(v)`` for every
    parameter at once (4 B/param); Lion and SGD update one tensor at a time (negligible)."""
    return 4 * trainable if optim in ("adamw", "adamw8bit") else 0


def estimate_memory(shape: ModelShape, *, batch: int, seq: int, precision: str = "fp32", optim: str = "adamw",
                    checkpointing: str = "none", checkpoint_every: int = 2, trainable: int | None = None,
                    supervised: int | None = None, grad_accum: int = 1) -> MemoryEstimate:
    """Every component for one training configuration of ``shape`` (see the module docstring).

    ``batch`` is the micro-batch (sequences per forward pass); ``grad_accum`` micro-batches make
    one optimizer step, which changes only the peak (gradients are held across micro-batches).
    """
    _check("precision", precision, PRECISIONS)
    _check("optimizer", optim, OPTIMS)
    _check("checkpointing policy", checkpointing, POLICIES)
    if batch < 1 or seq < 2 or grad_accum < 1:
        raise UserError(f"need batch >= 1, seq >= 2 and grad_accum >= 1, got batch={batch}, seq={seq}, "
                        f"grad_accum={grad_accum}")
    params = shape.params
    train = params if trainable is None else trainable
    act = decoder_activations(shape, batch, seq, precision, checkpointing, checkpoint_every=checkpoint_every,
                              supervised=supervised)
    k_policy = "full" if checkpointing == "full" else ("selective" if checkpointing == "selective" else "none")
    k_layer = korthikanti_layer_bytes(seq, batch, shape.dim, shape.n_heads, k_policy)
    if checkpointing == "every_n":
        n_ck = sum(layer_checkpointed(i, "every_n", checkpoint_every) for i in range(shape.n_layers))
        k_total = (n_ck * korthikanti_layer_bytes(seq, batch, shape.dim, shape.n_heads, "full")
                   + (shape.n_layers - n_ck) * k_layer)
    else:
        k_total = shape.n_layers * k_layer
    notes = []
    if shape.source.startswith("guessed"):
        notes.append(f"activations use a guessed shape ({shape.n_layers} layers, width {shape.dim}); "
                     "give --model for exact ones")
    if optim == "adamw8bit":
        notes.append("8-bit AdamW is estimated only (bitsandbytes keeps tensors under 4096 values in 32 bits)")
    return MemoryEstimate(
        shape=shape, batch=batch, seq=seq, precision=precision, optim=optim, checkpointing=checkpointing,
        params=params, trainable=train, parameters=parameter_bytes(params), gradients=gradient_bytes(train),
        optimizer_states=optimizer_state_bytes(train, optim), activations=act.body, logits=act.logits,
        activation_detail=act, korthikanti_per_layer=k_layer, korthikanti_total=k_total,
        optimizer_temporaries=optimizer_temporaries(train, optim), grad_accum=grad_accum, notes=notes)


# --------------------------------------------------------------------------------------------
# ZeRO
# --------------------------------------------------------------------------------------------


def zero_bytes_per_gpu(params: int, gpus: int, stage: int, *, k: float = 12.0) -> float:
    """Model-state bytes per GPU under ZeRO ``stage`` (0-3), Rajbhandari et al. 2020, Fig. 1."""
    if gpus < 1:
        raise UserError(f"need at least one GPU, got {gpus}")
    psi, n = float(params), float(gpus)
    if stage == 0:
        return (2 + 2 + k) * psi
    if stage == 1:
        return 2 * psi + 2 * psi + k * psi / n
    if stage == 2:
        return 2 * psi + (2 + k) * psi / n
    if stage == 3:
        return (2 + 2 + k) * psi / n
    raise UserError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")


def zero_table(params: int, gpus: int, *, optim: str = "adamw") -> list[dict[str, Any]]:
    """Every ZeRO stage for ``params`` on ``gpus``: bytes per GPU and the saving vs stage 0."""
    _check("optimizer", optim, OPTIMS)
    k = ZERO_K[optim]
    base = zero_bytes_per_gpu(params, gpus, 0, k=k)
    names = {0: "stage 0 (DDP: everything replicated)", 1: "stage 1 (optimizer states sharded)",
             2: "stage 2 (+ gradients sharded)", 3: "stage 3 (+ parameters sharded)"}
    rows = []
    for stage in range(4):
        b = zero_bytes_per_gpu(params, gpus, stage, k=k)
        rows.append({"stage": stage, "what": names[stage], "bytes_per_gpu": b, "gb_per_gpu": b / 1e9,
                     "reduction": base / b, "k": k})
    return rows


__all__ = [
    "OPTIMIZER_STATE_BYTES",
    "ActivationCount",
    "MemoryEstimate",
    "ModelShape",
    "decoder_activations",
    "estimate_memory",
    "gradient_bytes",
    "korthikanti_layer_bytes",
    "load_model_spec",
    "load_shape",
    "optimizer_state_bytes",
    "parameter_bytes",
    "parse_count",
    "zero_bytes_per_gpu",
    "zero_table",
]
