"""Configuration: pydantic models are the single source of truth.

A run's configuration is built in three layers, each overriding the one before:

1. a preset (``quick``, ``full``, ``tiny``: YAML files shipped in ``trainlab/presets``),
2. a YAML file given with ``--config FILE``,
3. ``section.key=value`` overrides from the command line (values parsed as YAML scalars).

Unknown keys are errors, never silently ignored: a typo such as ``train.lr_rate=1e-3`` stops
the run with one line naming the file (and line) or the override, the key, and what was expected.
"""

from __future__ import annotations

import contextlib
import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainlab.errors import UserError
from trainlab.peft.config import PeftConfig

Precision = Literal["fp32", "bf16", "fp16"]
CheckpointPolicy = Literal["none", "full", "every_n", "selective"]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated, numbers are finite
    (``train.lr=inf`` would train a NaN model)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(StrictModel):
    """The decoder's shape (Llama-compatible). ``n_kv_heads`` < ``n_heads`` gives GQA, 1 gives MQA."""

    vocab_size: int = Field(0, ge=0, description="0: take it from the tokenizer")
    dim: int = Field(128, gt=0)
    n_layers: int = Field(4, gt=0)
    n_heads: int = Field(4, gt=0)
    n_kv_heads: int | None = Field(None, gt=0, description="None: same as n_heads (MHA)")
    ffn_dim: int | None = Field(None, gt=0, description="None: Llama's rule, ~8/3·dim rounded up to 32")
    max_seq_len: int = Field(256, gt=0)
    rope_theta: float = Field(10000.0, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    tie_embeddings: bool = True
    attention: str = Field("auto", description="attention backend: auto, naive, sdpa, ...")
    checkpointing: CheckpointPolicy = "none"
    checkpoint_every: int = Field(2, gt=0, description="with checkpointing=every_n: every n-th block")
    init_std: float = Field(0.02, gt=0)

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} must be divisible by n_heads={self.n_heads}")
        kv = self.kv_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={kv}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        hidden = int(8 * self.dim / 3)
        return 32 * ((hidden + 31) // 32)


class DataConfig(StrictModel):
    """Where training text comes from. ``source: embedded`` is the procedurally generated default."""

    source: str = Field("embedded", description="'embedded', or a text file, a JSONL file or a folder")
    tokenizer: str | None = Field(None, description="tokenizer.json or a folder; None: the embedded one")
    text_key: str = Field("text", description="JSONL key holding the text")
    seq_len: int = Field(128, gt=1)
    n_documents: int = Field(24000, gt=0, description="embedded corpus: number of documents")
    task_fraction: float = Field(0.5, ge=0, le=1, description="embedded corpus: share of task records")
    vocab_size: int = Field(2048, ge=300, description="embedded tokenizer: BPE vocabulary size")
    val_fraction: float = Field(0.05, gt=0, lt=1)
    seed: int = 1234


class TrainConfig(StrictModel):
    """The optimizer step and everything around it."""

    max_steps: int = Field(300, gt=0)
    batch_size: int = Field(16, gt=0, description="sequences per micro-batch")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 disables clipping")
    optim: Literal["adamw", "sgd", "lion"] = "adamw"
    fused: bool | None = Field(None, description="AdamW: the fused kernel (one pass over parameters and "
                               "states); None: fused where torch has one for the parameters' device "
                               "and dtypes; true: required; false: the foreach kernel")
    precision: Precision = "fp32"
    init_loss_scale: float = Field(2.0**16, gt=0)
    eval_every: int = Field(50, ge=0, description="0: only at the end")
    eval_batches: int = Field(8, gt=0)
    epochs: float | None = Field(None, gt=0, description="train for this many passes over the training data "
                                 "instead of max_steps (TRL's num_train_epochs): max_steps = ceil(epochs · examples "
                                 "/ (batch_size · grad_accum))")
    save_every: int = Field(100, ge=0, description="checkpoint every this many steps; 0: by time only")
    save_every_minutes: float = Field(5.0, ge=0, description="also checkpoint when this many minutes passed since "
                                      "the last one (whichever comes first); 0: by steps only")
    keep_checkpoint: bool = Field(False, description="keep the last checkpoint after a successful run (an "
                                  "interrupted or diverged run always keeps it)")
    report_to: Literal["jsonl", "tensorboard", "none"] = Field(
        "jsonl", description="where metrics go besides the console: metrics.jsonl is always written (the run's "
        "own log, like TRL's trainer_state.json); tensorboard also writes tb/ (needs the tensorboard package); "
        "none: no integration")
    log_every: int = Field(10, gt=0)
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    deterministic: bool = False
    max_skipped_steps: int = Field(20, gt=0, description="consecutive fp16 overflow skips before giving up")


DistStrategy = Literal["auto", "none", "ddp", "fsdp", "zero1", "zero2", "zero3", "tp", "pp"]


class DistConfig(StrictModel):
    """Distributed training (`trainlab.distributed`): used when the run has more than one process
    (``--nproc N`` or torchrun). The mesh is ``pp × dp × tp`` = world size (``dp`` = data parallel)."""

    strategy: DistStrategy = Field("auto", description="ddp, fsdp (= zero3: FSDP2 fully_shard), zero2 (FSDP2 "
                                   "without resharding after forward), zero1, tp, pp; auto: from the mesh sizes "
                                   "(tp > 1: tp, pp > 1: pp, dp_shard > 1: fsdp, else ddp); none: refuse to run "
                                   "on more than one process")
    engine: Literal["torch", "deepspeed"] = Field("torch", description="zero1/2/3 through torch (FSDP2, "
                                                  "ZeroRedundancyOptimizer) or DeepSpeed (pip install "
                                                  "trainlab[deepspeed])")
    dp_shard: int = Field(-1, ge=-1, description="ranks a parameter is sharded over (FSDP); -1: all data-parallel "
                          "ranks (with strategy auto: 1, i.e. DDP)")
    tp: int = Field(1, ge=1, description="tensor-parallel degree")
    pp: int = Field(1, ge=1, description="pipeline-parallel degree (stages)")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on CUDA, gloo on CPU")
    timeout_minutes: float = Field(10.0, gt=0, description="a collective waiting longer than this fails the run")
    pp_schedule: Literal["1f1b", "gpipe"] = Field("1f1b", description="pipeline schedule (dist.strategy=pp): 1f1b "
                                                  "(one forward, one backward; at most pp micro-batches of "
                                                  "activations per stage) or gpipe (all forwards, then all "
                                                  "backwards); micro-batches = train.grad_accum")


class RunConfig(StrictModel):
    """A whole run: model shape, data, optimization."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    peft: PeftConfig = PeftConfig()
    dist: DistConfig = DistConfig()


# --------------------------------------------------------------------------------------------
# Loading: presets, YAML files and key=value overrides, with errors that name file, line, key.
# --------------------------------------------------------------------------------------------

PRESETS = ("tiny", "quick", "full")


def _yaml_lines(text: str) -> dict[str, int]:
    """Map each dotted key path in a YAML mapping to its 1-based line number."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = f"{prefix}{key_node.value}"
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key + ".")

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML mapping; return it and a map of dotted keys to line numbers."""
    p = Path(path)
    if p.is_dir():
        raise UserError("is a folder; expected a YAML config file", path=p)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (some editors write one) is not content
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserError(f"not valid UTF-8 text (byte {exc.start})", path=p, line=line) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"invalid YAML: {problem}", path=p, line=line) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"expected a mapping of sections, got {type(data).__name__}", path=p, line=1)
    return data, _yaml_lines(text)


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    text = resources.files("trainlab.presets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """All dotted keys a config model accepts (for error suggestions)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(known_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.lr=1e-3`` -> (["train", "lr"], 0.001). Values are YAML scalars."""
    if "=" not in item:
        raise UserError(f"override {item!r}: expected section.key=value, e.g. train.lr=1e-3")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise UserError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        # YAML 1.1 reads "1e-3" as a string; a user writing lr=1e-3 means a number.
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in ".eE") else int(value)
    return key.split("."), value


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[path[-1]] = value


# TRL / transformers TrainingArguments names a user coming from TRL types, and trainlab's key (README "Coming from TRL")
TRL_NAMES: dict[str, str] = {
    "learning_rate": "train.lr", "num_train_epochs": "train.epochs", "max_steps": "train.max_steps",
    "per_device_train_batch_size": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
    "adam_beta1": "train.beta1", "adam_beta2": "train.beta2", "adam_epsilon": "train.eps",
    "weight_decay": "train.weight_decay", "max_grad_norm": "train.grad_clip", "warmup_steps": "train.warmup_steps",
    "seed": "train.seed", "logging_steps": "train.log_every", "eval_steps": "train.eval_every",
    "save_steps": "train.save_every", "report_to": "train.report_to", "bf16": "train.precision=bf16",
    "fp16": "train.precision=fp16", "gradient_checkpointing": "model.checkpointing=full",
    "beta": "align.beta", "loss_type": "align.loss_type", "label_smoothing": "align.label_smoothing",
    "rpo_alpha": "align.rpo_alpha", "simpo_gamma": "align.simpo_gamma", "max_length": "align.max_length",
    "max_prompt_length": "align.max_prompt_length", "max_completion_length": "align.max_completion_length",
    "truncation_mode": "align.truncation_mode", "desirable_weight": "align.kto_desirable_weight",
    "undesirable_weight": "align.kto_undesirable_weight", "disable_dropout": "align.disable_dropout",
    "precompute_ref_log_probs": "align.reference=cached", "completion_only_loss": "align_data.completion_only_loss",
    "assistant_only_loss": "align_data.assistant_only_loss",
}


def _suggest(key: str, model: type[BaseModel]) -> str:
    trl = TRL_NAMES.get(key.rsplit(".", 1)[-1])
    if trl is not None and trl.split("=")[0] in known_keys(model) and trl.split("=")[0] != key:
        return f" (TRL's {key.rsplit('.', 1)[-1]} is {trl} in trainlab)"
    depth = key.count(".") + 1  # a section is compared with sections (`trainn` -> `train`), a key with keys
    keys = list(dict.fromkeys(".".join(k.split(".")[:depth]) for k in known_keys(model)))
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:1]
    return f" (did you mean {close[0]}?)" if close else ""


def validate_config(
    data: dict[str, Any],
    model: type[StrictModel] = RunConfig,
    *,
    sources: dict[str, str] | None = None,
    lines: dict[str, dict[str, int]] | None = None,
) -> Any:
    """Validate a merged dict; turn the first pydantic error into a one-line `UserError`.

    ``sources`` maps a dotted key to where it came from (a file or "override k=v"), ``lines``
    maps a file to its key->line map, so the message can say exactly where the bad value is.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        origin = (sources or {}).get(loc)
        path = line = None
        if origin is not None and not origin.startswith("override"):
            path = origin
            line = (lines or {}).get(origin, {}).get(loc)
        if err["type"] == "extra_forbidden":
            msg = f"unknown key{_suggest(loc, model)}"
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            msg = f"invalid value{shown}: {err['msg']}"
        if origin is not None and origin.startswith("override"):
            msg += f" (from {origin})"
        raise UserError(msg, path=path, line=line, key=loc or None) from None


def _record_sources(data: dict[str, Any], origin: str, sources: dict[str, str], prefix: str = "") -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        sources[dotted] = origin
        if isinstance(value, dict):
            _record_sources(value, origin, sources, dotted + ".")


def load_config(
    config_file: str | Path | None = None,
    *,
    preset: str | None = "quick",
    overrides: list[str] | None = None,
    model: type[StrictModel] = RunConfig,
    base: dict[str, Any] | None = None,
) -> Any:
    """Build a validated config from preset < base < file < overrides."""
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    lines: dict[str, dict[str, int]] = {}
    if preset:
        pd = preset_dict(preset)
        data = deep_merge(data, pd)
        _record_sources(pd, f"preset {preset}", sources)
    if base:
        data = deep_merge(data, base)
    if config_file is not None:
        fd, fl = read_yaml(config_file)
        data = deep_merge(data, fd)
        _record_sources(fd, str(config_file), sources)
        lines[str(config_file)] = fl
    for item in overrides or []:
        path, value = parse_override(item)
        _set_path(data, path, value)
        sources[".".join(path)] = f"override {item}"
    return validate_config(data, model, sources=sources, lines=lines)


def dump_config(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
