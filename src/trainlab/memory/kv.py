"""The KV cache calculator behind ``trainlab calc kv-cache``.

Decoding keeps every past token's keys and values, per layer and per key/value head::

    bytes = 2 · layers · kv_heads · head_dim · bytes_per_element · tokens · batch

(2: one tensor of keys and one of values; Pope et al. 2022, "Efficiently Scaling Transformer
Inference", section 2; Ainslie et al. 2023, "GQA", arXiv 2305.13245). Multi-head attention (MHA)
has ``kv_heads = heads``, grouped-query attention (GQA) ``1 < kv_heads < heads`` and multi-query
attention (MQA, Shazeer 2019) ``kv_heads = 1``, so GQA/MQA divide the cache by ``heads / kv_heads``.
Llama-2-70B (80 layers, 8 KV heads of 128, fp16): 2·80·8·128·2 = 327,680 B = 320 KiB per token,
1.25 GiB for 4,096 tokens; with MHA's 64 KV heads it would be 10 GiB.

Sliding windows: a layer that attends to the last ``W`` tokens only (Mistral 7B, Jiang et al. 2023,
"rolling buffer cache") needs at most ``W`` cached tokens, so its ``tokens`` is ``min(seq, W)``.
That is what transformers' static sliding-window layer allocates (``min(max_cache_len, W)``); its
dynamic one keeps ``W - 1`` between steps and ``W`` while a step attends (the new token joins the
``W - 1``). Configs with ``layer_types`` (some layers sliding, some full) are counted per layer.
Our :class:`~trainlab.model.decoder.Decoder` has no sliding-window attention: its cache keeps every
token (see :mod:`trainlab.model.cache`).

Fitting beside the weights (``--gpu-mem`` in GB = 1e9 bytes, as ``trainlab plan``): the free memory
``gpu_mem - weights`` divided by the cache bytes per token of the whole batch is the longest
context, and divided by one sequence's cache bytes the largest batch. Activations, the CUDA context
and fragmentation are not counted, so these are upper bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainlab.errors import UserError

#: bytes per element of the cached keys/values
KV_DTYPE_BYTES: dict[str, float] = {
    "fp32": 4, "float32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1, "int4": 0.5,
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype`` (fp32, fp16, bf16, fp8, int8, int4; torch names too)."""
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in KV_DTYPE_BYTES:
        raise UserError(f"unknown dtype {dtype!r}; expected one of fp32, fp16, bf16, fp8, int8, int4")
    return KV_DTYPE_BYTES[key]


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, batch: int = 1,
                   bytes_per_element: float = 2) -> int:
    """``2 · layers · kv_heads · head_dim · bytes_per_element · tokens · batch``."""
    return round(2 * layers * kv_heads * head_dim * bytes_per_element * tokens * batch)


@dataclass
class KVSpec:
    """What the formula needs: the attention shape, the cache dtype, windows and the weights' size."""

    layers: int
    kv_heads: int
    head_dim: int
    heads: int | None = None
    dtype: str = "fp16"
    sliding_window: int | None = None
    sliding_layers: int = 0  # layers limited to sliding_window tokens (the others keep every token)
    params: int | None = None
    max_positions: int | None = None
    source: str = "flags"
    notes: list[str] = field(default_factory=list)

    def check(self) -> KVSpec:
        for name in ("layers", "kv_heads", "head_dim"):
            _positive(f"--{name.replace('_', '-')}", getattr(self, name))
        if self.heads is not None:
            _positive("--heads", self.heads)
            if self.heads % self.kv_heads:
                raise UserError(f"--heads {self.heads} is not divisible by --kv-heads {self.kv_heads}")
        if self.sliding_window is not None:
            _positive("sliding_window", self.sliding_window)
        dtype_bytes(self.dtype)
        return self

    def cached_tokens(self, seq: int) -> tuple[int, int]:
        """(tokens held by a full-attention layer, by a sliding layer) for a ``seq``-token sequence."""
        window = self.sliding_window if self.sliding_window is not None and self.sliding_layers else None
        return seq, (seq if window is None else min(seq, window))

    def bytes_for(self, seq: int, batch: int = 1, kv_heads: int | None = None) -> int:
        """The cache bytes of ``batch`` sequences of ``seq`` tokens (``kv_heads`` overrides, for MHA)."""
        full_tokens, window_tokens = self.cached_tokens(seq)
        h, e = kv_heads or self.kv_heads, dtype_bytes(self.dtype)
        full_layers = self.layers - self.sliding_layers
        return (kv_cache_bytes(full_layers, h, self.head_dim, full_tokens, batch, e)
                + kv_cache_bytes(self.sliding_layers, h, self.head_dim, window_tokens, batch, e))


def _hf_dtype(data: dict[str, Any]) -> str | None:
    raw = data.get("dtype") or data.get("torch_dtype")
    return str(raw).removeprefix("torch.") if raw else None


def spec_from_hf_config(data: dict[str, Any], source: str = "config.json") -> KVSpec:
    """A :class:`KVSpec` from a Hugging Face ``config.json`` (Llama, Mistral, Qwen2, Gemma ... keys)."""
    layers = data.get("num_hidden_layers")
    heads = data.get("num_attention_heads")
    if not (isinstance(layers, int) and isinstance(heads, int)):
        raise UserError(f"{source}: need num_hidden_layers and num_attention_heads")
    kv = data.get("num_key_value_heads") or heads
    head_dim = data.get("head_dim")
    if not head_dim:
        hidden = data.get("hidden_size")
        if not isinstance(hidden, int) or not heads or hidden % heads:
            raise UserError(f"{source}: need head_dim, or hidden_size divisible by num_attention_heads")
        head_dim = hidden // heads
    notes: list[str] = []
    window = data.get("sliding_window")
    sliding_layers = 0
    layer_types = data.get("layer_types")
    if window and isinstance(layer_types, list) and len(layer_types) == layers:
        sliding_layers = sum(1 for t in layer_types if t == "sliding_attention")
    elif window and data.get("use_sliding_window", True) is not False:
        sliding_layers = layers
    if sliding_layers:
        notes.append(f"sliding window of {window} tokens on {sliding_layers} of {layers} layers caps their cache")
    else:
        window = None
    params = None
    try:
        from trainlab.memory.estimate import ModelShape

        params = ModelShape.from_hf_config(data, source=source).params
    except UserError:
        notes.append("weights' size unknown (give --params)")
    return KVSpec(layers=layers, kv_heads=int(kv), head_dim=int(head_dim), heads=heads,
                  dtype=_hf_dtype(data) or "fp16", sliding_window=window, sliding_layers=sliding_layers,
                  params=params, max_positions=data.get("max_position_embeddings"), source=source, notes=notes)


def spec_from_model(spec: str | Path) -> tuple[KVSpec, int | None]:
    """(spec, default sequence length) from a trainlab YAML config, an HF model folder or its ``config.json``."""
    from trainlab.memory.estimate import ModelShape, read_model_config

    p, data = read_model_config(spec)
    if data is not None:
        kv = spec_from_hf_config(data, source=str(p))
        return kv, kv.max_positions
    from trainlab.config import load_config

    cfg = load_config(p, preset="quick")
    m = cfg.model
    shape = ModelShape.from_model_config(m, vocab_size=cfg.data.vocab_size)
    dtype = {"bf16": "bf16", "fp16": "fp16"}.get(str(cfg.train.precision), "fp32")
    return KVSpec(layers=m.n_layers, kv_heads=m.kv_heads, head_dim=m.head_dim, heads=m.n_heads, dtype=dtype,
                  params=shape.params, max_positions=m.max_seq_len, source=str(p),
                  notes=["trainlab decoder: every token is cached (no sliding window)"]), cfg.data.seq_len


def kv_cache_result(*, model: str | Path | None = None, layers: int | None = None, kv_heads: int | None = None,
                    head_dim: int | None = None, heads: int | None = None, seq: int | None = None,
                    batch: int | None = None, dtype: str | None = None, gpu_mem: float | None = None,
                    params: str | None = None, sliding_window: int | None = None) -> dict[str, Any]:
    """The JSON document of ``trainlab calc kv-cache``: flags override what ``model`` says."""
    default_seq: int | None = None
    if model is not None:
        spec, default_seq = spec_from_model(model)
    else:
        missing = [f"--{n}" for n, v in (("layers", layers), ("kv-heads", kv_heads), ("head-dim", head_dim))
                   if v is None]
        if missing:
            raise UserError(f"give --model, or {', '.join(missing)}")
        spec = KVSpec(layers=layers or 0, kv_heads=kv_heads or 0, head_dim=head_dim or 0)
    for name, value in (("layers", layers), ("kv_heads", kv_heads), ("head_dim", head_dim), ("heads", heads),
                        ("dtype", dtype)):
        if value is not None:
            setattr(spec, name, value)
    if sliding_window is not None:
        spec.sliding_window, spec.sliding_layers = sliding_window, spec.layers
    if params is not None:
        from trainlab.memory.estimate import parse_count

        spec.params = parse_count(params)
    spec.check()
    if spec.heads is None:
        spec.heads = spec.kv_heads
        spec.notes.append("--heads not given: the MHA comparison uses --kv-heads")
    seq = seq if seq is not None else default_seq
    if seq is None:
        raise UserError("give --seq (tokens per sequence)")
    seq, batch = _positive("--seq", seq), _positive("--batch", 1 if batch is None else batch)

    e = dtype_bytes(spec.dtype)
    per_token = kv_cache_bytes(spec.layers, spec.kv_heads, spec.head_dim, 1, 1, e)  # before any window cap
    per_sequence = spec.bytes_for(seq)
    total = spec.bytes_for(seq, batch)
    mha_total = spec.bytes_for(seq, batch, kv_heads=spec.heads)
    full_tokens, window_tokens = spec.cached_tokens(seq)
    doc: dict[str, Any] = {
        "inputs": {"layers": spec.layers, "heads": spec.heads, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim,
                   "seq": seq, "batch": batch, "dtype": spec.dtype, "bytes_per_element": e,
                   "sliding_window": spec.sliding_window, "sliding_layers": spec.sliding_layers,
                   "source": spec.source},
        "formula": "2 * layers * kv_heads * head_dim * bytes_per_element * tokens * batch",
        "cached_tokens": {"full_layers": full_tokens, "sliding_layers": window_tokens},
        "per_token_bytes": per_token,
        "per_sequence_bytes": per_sequence,
        "total_bytes": total,
        "mha_total_bytes": mha_total,
        "ratio_mha_over_this": mha_total / total,
        "attention": "MHA" if spec.kv_heads == spec.heads else "MQA" if spec.kv_heads == 1 else "GQA",
        "notes": list(spec.notes),
    }
    if gpu_mem is not None:
        doc["fit"] = _fit(spec, gpu_mem, seq, batch)
    return doc


def _fit(spec: KVSpec, gpu_mem: float, seq: int, batch: int) -> dict[str, Any]:
    if not gpu_mem > 0:
        raise UserError(f"--gpu-mem must be positive (GB), got {gpu_mem}")
    if spec.params is None:
        raise UserError("--gpu-mem needs the weights' size: give --params (e.g. 7B) or --model")
    weights = round(spec.params * dtype_bytes(spec.dtype))
    free = gpu_mem * 1e9 - weights
    out: dict[str, Any] = {"gpu_mem_bytes": round(gpu_mem * 1e9), "params": spec.params, "weights_bytes": weights,
                           "free_bytes": max(0, round(free))}
    if free <= 0:
        out.update(max_context=0, max_batch=0, note="the weights alone do not fit")
        return out
    per_seq = spec.bytes_for(seq)
    out["max_batch"] = int(free // per_seq)
    window = spec.sliding_window
    if spec.sliding_layers == spec.layers and window is not None and spec.bytes_for(window, batch) <= free:
        out["max_context"] = None
        out["note"] = "every layer is windowed: the cache stops growing at the window, any context fits"
        return out
    # the largest n with bytes_for(n, batch) <= free (monotone in n): binary search
    lo, hi = 0, 1
    while spec.bytes_for(hi, batch) <= free and hi < 1 << 40:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if spec.bytes_for(mid, batch) <= free else (lo, mid)
    out["max_context"] = lo
    return out


def _human(n: float) -> str:
    from trainlab.memory.calc import human_bytes

    return human_bytes(n)


def kv_cache_tables(doc: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    i = doc["inputs"]
    title = (f"KV cache: {i['layers']} layers x {i['kv_heads']} KV heads x {i['head_dim']} ({doc['attention']}, "
             f"{i['heads']} query heads), {i['dtype']}, {i['seq']} tokens x batch {i['batch']}")
    rows = [["per token", f"{doc['per_token_bytes']:,}", _human(doc["per_token_bytes"])],
            ["per sequence", f"{doc['per_sequence_bytes']:,}", _human(doc["per_sequence_bytes"])],
            ["total", f"{doc['total_bytes']:,}", _human(doc["total_bytes"])],
            ["MHA equivalent", f"{doc['mha_total_bytes']:,}", _human(doc["mha_total_bytes"])],
            ["MHA / this", f"{doc['ratio_mha_over_this']:.2f}x", ""]]
    tables = [(title, ["", "bytes", ""], rows)]
    if "fit" in doc:
        f = doc["fit"]
        ctx = "any (windowed)" if f.get("max_context") is None else f"{f['max_context']:,} tokens"
        tables.append((f"beside the weights ({f['params']:,} parameters)", ["", ""], [
            ["GPU memory", _human(f["gpu_mem_bytes"])], ["weights", _human(f["weights_bytes"])],
            ["free for the cache", _human(f["free_bytes"])],
            [f"longest context at batch {i['batch']}", ctx],
            [f"largest batch at {i['seq']} tokens", f"{f['max_batch']:,}"]]))
    for note in doc["notes"]:
        tables.append((note, [""], []))
    return tables


__all__ = ["KVSpec", "dtype_bytes", "kv_cache_bytes", "kv_cache_result", "kv_cache_tables", "spec_from_hf_config",
           "spec_from_model"]
