"""Reward model: a scalar head on a causal LM, trained with the Bradley-Terry loss.

The model (Ouyang et al. 2022, "Training language models to follow instructions", §3.5; Stiennon
et al. 2020) is the language model's final-normed hidden state ``h_t`` and one linear map
``w ∈ R^D`` (no bias), read at the sequence's last token:

    v_t(x)  = w · h_t(x)                        (a score at every position: `RewardModel.values`)
    r(x)    = v_T(x),  T = the last non-pad token (`RewardModel.forward`)

"Last non-pad token" is transformers' own rule for ``*ForSequenceClassification``: the rightmost
position whose id is not ``config.pad_token_id`` (left or right padding alike). A tokenizer whose
pad is its eos (GPT-2) therefore scores the token *before* a trailing eos, exactly as
``AutoModelForSequenceClassification`` and TRL do.

Loss on a pair (chosen ``c``, rejected ``r``), TRL 1.16 ``RewardTrainer.compute_loss``:

    ℓ = −log σ(r_c − r_r − m) + c_center · (r_c + r_r)²

``m`` is a margin (per pair from the batch's ``margin`` column, else a constant; Llama 2, Touvron
et al. 2023, §3.2.2) and ``c_center`` TRL's ``center_rewards_coefficient`` (Eisenstein et al.
2023, "Helping or herding?"): it pulls rewards toward mean zero, which a Bradley-Terry model leaves
undetermined (any constant added to every reward gives the same loss). `RewardObjective` returns
``Σ ℓ`` over pairs and ``count`` = pairs, so the loop's ``loss_sum / count`` is TRL's mean.

Saved layout (`save_reward_model`): transformers' sequence classification, ``num_labels = 1`` and a
``score`` linear head, ``pad_token_id`` set, so the folder loads with
``AutoModelForSequenceClassification`` and gives the same scores. Our
`~trainlab.model.decoder.Decoder` is written as ``LlamaForSequenceClassification`` (its weights
under `trainlab.model.hf_export`'s Llama names, the LM head dropped: a reward model has none); any
other transformers model is its own ``*ForSequenceClassification`` (built from the causal LM folder
as TRL builds it: ``from_pretrained(..., num_labels=1)``, the head freshly initialised).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainlab.errors import UserError
from trainlab.train.objectives import Batch, ObjectiveOutput

SEQCLS_SUFFIX = "ForSequenceClassification"
SCORE_NAME = "score.weight"


def last_token_index(input_ids: Tensor, pad_token_id: int | None) -> Tensor:
    """``[B]`` index of each row's rightmost token that is not ``pad_token_id`` (transformers' rule).

    None (a model without pad token) means the last column. A row of pads only gives 0.
    """
    b, t = input_ids.shape
    if pad_token_id is None:
        return torch.full((b,), t - 1, dtype=torch.long, device=input_ids.device)
    positions = torch.arange(t, device=input_ids.device)
    return ((input_ids != pad_token_id).long() * positions).argmax(-1)


def _positions(attention_mask: Tensor | None, position_ids: Tensor | None) -> Tensor | None:
    if position_ids is None and attention_mask is not None:
        from trainlab.model.decoder import positions_from_mask

        return positions_from_mask(attention_mask)
    return position_ids


class RewardModel(nn.Module):
    """A causal LM's body with a scalar ``score`` head (see the module docstring).

    ``kind == "trainlab"``: ``backbone`` is our `Decoder` (its LM head removed);
    ``kind == "hf"``: ``seqcls`` is a transformers ``*ForSequenceClassification`` model and
    ``backbone`` its base model. ``pad_token_id`` locates the last token, as in transformers.
    """

    def __init__(self, backbone: nn.Module, score: nn.Linear, pad_token_id: int | None, *,
                 seqcls: nn.Module | None = None) -> None:
        super().__init__()
        if score.out_features != 1 or score.bias is not None:
            raise ValueError("the score head must be Linear(D, 1, bias=False)")
        self.kind = "hf" if seqcls is not None else "trainlab"
        if seqcls is not None:
            if seqcls.base_model is not backbone or seqcls.score is not score:
                raise ValueError("backbone and score must be the sequence classification model's own")
            self.seqcls = seqcls  # owns backbone and score (one copy of each parameter)
        else:
            self.backbone = backbone
            self.score = score
        self.pad_token_id = pad_token_id
        self.source: Any = None  # the folder it came from (`trainlab.model.protocol.ModelSource`)
        self.dropout_disabled: dict[str, float] = {}

    @property
    def config(self) -> Any:
        """The backbone's config (`ModelConfig` for our decoder, the HF config otherwise)."""
        return self.seqcls.config if self.kind == "hf" else self.backbone.config

    @property
    def body(self) -> nn.Module:
        """The network under the head: our decoder, or the transformers base model."""
        return self.seqcls.base_model if self.kind == "hf" else self.backbone

    @property
    def head(self) -> nn.Linear:
        """The ``score`` head, ``Linear(D, 1, bias=False)``."""
        return self.seqcls.score if self.kind == "hf" else self.score

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding: every token id fed to the model must be below it."""
        if self.kind == "hf":
            return int(self.body.get_input_embeddings().weight.shape[0])
        return int(self.backbone.embed.weight.shape[0])

    def custom_mask_max_length(self) -> int:
        """Rows up to this length take a custom ``[B, 1, T, T]`` mask (0: none), as the body allows
        (`trainlab.align.prefix_sharing`)."""
        if self.kind == "hf":
            from trainlab.model.hf import custom_mask_limit_of

            return custom_mask_limit_of(self.seqcls.config)
        from trainlab.align.prefix_sharing import custom_mask_limit

        return custom_mask_limit(self.backbone)

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                      position_ids: Tensor | None = None) -> Tensor:
        """Final-normed hidden states ``[B, T, D]`` (positions ``cumsum(mask) - 1``, as the policy's);
        a boolean ``[B, 1, T, T]`` mask with ``position_ids`` where `custom_mask_max_length` allows it."""
        if attention_mask is not None and attention_mask.dim() == 4 and position_ids is None:
            raise ValueError("a [B, 1, T, T] attention mask needs position_ids")
        position_ids = _positions(attention_mask, position_ids)
        if self.kind == "hf":
            from trainlab.model.hf import mask_argument

            out = self.body(input_ids=input_ids, attention_mask=mask_argument(self.seqcls, attention_mask),
                            position_ids=position_ids, use_cache=False)
            return out.last_hidden_state
        return self.body.hidden_states(input_ids, attention_mask, position_ids)

    def _apply_score(self, h: Tensor) -> Tensor:
        # fp32 at least, as the loss heads of `trainlab.train.objectives`: rewards are compared by
        # their differences, which bf16 (3 significant digits) would round away
        dtype = torch.promote_types(h.dtype, torch.float32)
        with torch.autocast(device_type=h.device.type, enabled=False):
            return F.linear(h.to(dtype), self.head.weight.to(dtype)).sum(-1)  # [.., 1] -> [..] not as a view (FSDP)

    def values(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               position_ids: Tensor | None = None) -> Tensor:
        """``[B, T]`` score at every position (a value model's per-token output)."""
        return self._apply_score(self.hidden_states(input_ids, attention_mask, position_ids))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> Tensor:
        """``[B]`` rewards: the score at each row's last non-pad token."""
        h = self.hidden_states(input_ids, attention_mask, position_ids)
        idx = last_token_index(input_ids, self.pad_token_id)
        return self._apply_score(h[torch.arange(h.shape[0], device=h.device), idx])


# ------------------------------------------------------------------------------------------
# Building, loading, saving
# ------------------------------------------------------------------------------------------


def _pad_id(tokenizer: Any) -> int | None:
    """TRL's choice: the tokenizer's pad token, else its eos."""
    if tokenizer is None:
        return None
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else getattr(tokenizer, "eos_token_id", None)


def reward_model_from_decoder(decoder: nn.Module, pad_token_id: int | None, *,
                              generator: torch.Generator | None = None) -> RewardModel:
    """Our decoder as a reward model: its LM head dropped, a new ``score`` ~ N(0, init_std²)
    (the ``initializer_range`` transformers' ``_init_weights`` would use)."""
    decoder.lm_head = None  # a reward model has no LM head; a tied one is the embedding, kept
    p = next(decoder.parameters())
    score = nn.Linear(decoder.config.dim, 1, bias=False, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        score.weight.normal_(0.0, decoder.config.init_std, generator=generator)
    rm = RewardModel(decoder, score, pad_token_id)
    rm.source = getattr(decoder, "source", None)
    return rm


def _is_seqcls_config(config: dict[str, Any]) -> bool:
    return any(str(a).endswith(SEQCLS_SUFFIX) for a in config.get("architectures") or [])


def _decoder_folder(path: Path, config: dict[str, Any] | None) -> bool:
    """Would `trainlab.model.load_model` load this folder as our decoder?"""
    from trainlab.model.hf_export import TRAINLAB_JSON, model_config_from_hf

    if (path / TRAINLAB_JSON).is_file():
        return True
    if config is None:
        return False
    try:
        model_config_from_hf(config)
    except (UserError, KeyError, TypeError, ValueError):
        return False
    return True


def _hf_dtype_kwargs() -> dict[str, Any]:
    import transformers

    new_name = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)
    return {("dtype" if new_name else "torch_dtype"): torch.float32}


def _load_seqcls(path: Path, *, from_causal: bool, pad_token_id: int | None) -> nn.Module:
    """``AutoModelForSequenceClassification.from_pretrained`` (local, quiet, fp32); only the score
    head may be missing, and only when starting from a causal LM (TRL's way of making a reward model)."""
    from transformers import AutoModelForSequenceClassification

    from trainlab.model.hf import _one_line, quiet_transformers

    extra: dict[str, Any] = {"num_labels": 1} if from_causal else {}
    if from_causal and pad_token_id is not None:
        extra["pad_token_id"] = pad_token_id
    try:
        with quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(path), local_files_only=True, output_loading_info=True, **_hf_dtype_kwargs(), **extra)
    except Exception as exc:  # OSError, ValueError, RuntimeError: all mean "this folder"
        raise UserError(f"cannot load as a sequence classification model: {_one_line(exc)}", path=path) from None
    allowed = {SCORE_NAME} if from_causal else set()
    missing = sorted(set(info.get("missing_keys") or []) - allowed)
    if missing:
        raise UserError(f"{type(model).__name__}: {len(missing)} weight(s) missing from the checkpoint "
                        f"({', '.join(missing[:3])})", path=path)
    if int(getattr(model.config, "num_labels", 1)) != 1:
        raise UserError(f"a reward model has one output (num_labels=1); this one has {model.config.num_labels}",
                        path=path)
    if pad_token_id is not None:
        model.config.get_text_config().pad_token_id = pad_token_id
    return model


def _rm_from_seqcls(seqcls: nn.Module) -> RewardModel:
    score = seqcls.score
    if not isinstance(score, nn.Linear) or score.bias is not None or score.out_features != 1:
        raise UserError(f"{type(seqcls).__name__}: the score head is not Linear(D, 1) without bias")
    return RewardModel(seqcls.base_model, score, seqcls.config.get_text_config().pad_token_id, seqcls=seqcls)


def _load_decoder_rm(path: Path, config: dict[str, Any]) -> RewardModel:
    """A folder `save_reward_model` wrote from our decoder (LlamaForSequenceClassification)."""
    from safetensors import safe_open

    from trainlab.model.decoder import Decoder
    from trainlab.model.hf_export import _weight_files, from_hf_name, read_model_config

    cfg = read_model_config(path)
    state: dict[str, Tensor] = {}
    score: Tensor | None = None
    unexpected: list[str] = []
    for file in _weight_files(path):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name == SCORE_NAME:
                    score = f.get_tensor(name).float()
                    continue
                ours = from_hf_name(name)
                if ours is None or ours == "lm_head.weight":
                    unexpected.append(name)
                    continue
                state[ours] = f.get_tensor(name).float()
    if unexpected:
        raise UserError(f"unexpected weights in a reward model {unexpected[:4]}", path=path)
    if score is None or tuple(score.shape) != (1, cfg.dim):
        raise UserError(f"no {SCORE_NAME} of shape (1, {cfg.dim})", path=path)
    with torch.device("meta"):
        decoder = Decoder(cfg)
    decoder.lm_head = None
    try:
        decoder.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise UserError(f"weights do not match the config: {str(exc).splitlines()[0]}", path=path) from None
    head = nn.Linear(cfg.dim, 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(score)
    return RewardModel(decoder, head, config.get("pad_token_id"))


def load_reward_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[RewardModel, Any]:
    """(reward model, tokenizer) from a folder.

    A sequence classification folder (a saved reward model, ours or any transformers one) is loaded
    as it is. A causal LM folder becomes a reward model with a new score head: our decoder's body,
    or ``AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)`` as TRL does.
    ``pad_token_id`` is the tokenizer's pad, else its eos (TRL's rule), and is written in the config.
    """
    from trainlab.data.tokenizer import load_tokenizer
    from trainlab.model.checks import check_safetensors, not_a_model_folder, read_json, weight_files
    from trainlab.model.protocol import load_model, read_source

    p = Path(path)
    if not p.is_dir():
        raise UserError("model folder not found", path=p)
    config = read_json(p / "config.json") if (p / "config.json").is_file() else None
    if config is not None and _is_seqcls_config(config):
        check_safetensors(weight_files(p))
        tokenizer = load_tokenizer(p)
        pad = _pad_id(tokenizer)
        rm = _load_decoder_rm(p, config) if _decoder_folder(p, config) else \
            _rm_from_seqcls(_load_seqcls(p, from_causal=False, pad_token_id=config.get("pad_token_id")))
        if rm.pad_token_id is None:
            rm.pad_token_id = pad
    else:
        if config is None and not _decoder_folder(p, None):
            raise not_a_model_folder(p)
        if _decoder_folder(p, config):
            decoder = load_model(p)
            tokenizer = load_tokenizer(p)
            rm = reward_model_from_decoder(decoder, _pad_id(tokenizer))
        else:
            from trainlab.model.checks import check_causal_lm

            check_causal_lm(config or {}, path=p)
            check_safetensors(weight_files(p))
            tokenizer = load_tokenizer(p)
            rm = _rm_from_seqcls(_load_seqcls(p, from_causal=True, pad_token_id=_pad_id(tokenizer)))
            from trainlab.model.checks import check_tokenizer, model_special_ids

            check_tokenizer(tokenizer, embedding_rows=rm.vocab_size, special_ids=model_special_ids(config or {}),
                            path=p)
    rm.source = read_source(p)
    return rm.to(device), tokenizer


def is_reward_model_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a saved sequence classification model (a reward model)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return False
    try:
        return _is_seqcls_config(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


def _seqcls_config_dict(rm: RewardModel, dtype: torch.dtype, tokenizer: Any) -> dict[str, Any]:
    from trainlab.model.hf_export import hf_config_dict

    config = hf_config_dict(rm.config, dtype=dtype, tokenizer=tokenizer)
    config["architectures"] = ["LlamaForSequenceClassification"]
    config["id2label"] = {"0": "LABEL_0"}
    config["label2id"] = {"LABEL_0": 0}
    config["pad_token_id"] = rm.pad_token_id
    config["tie_word_embeddings"] = False  # no LM head to tie
    return config


def save_reward_model(rm: RewardModel, out_dir: str | Path, tokenizer: Any = None, *,
                      save_dtype: torch.dtype | str | None = None) -> Path:
    """Write ``rm`` as a transformers sequence classification folder (see the module docstring).

    The weights are in the source folder's dtype unless ``save_dtype`` says otherwise; the folder
    replaces ``out_dir`` atomically.
    """
    from safetensors.torch import save_file

    from trainlab.model.hf_export import TRAINLAB_JSON, WEIGHTS_NAME, hf_state_dict, publish_folder, save_tokenizer
    from trainlab.model.saving import _save_hf, resolve_save_dtype

    dtype = resolve_save_dtype(rm, save_dtype)
    out = Path(out_dir)
    if rm.kind == "hf":
        rm.seqcls.config.get_text_config().pad_token_id = rm.pad_token_id
        shim = SimpleNamespace(model=rm.seqcls, source=rm.source, dropout_disabled=rm.dropout_disabled)
        return _save_hf(shim, tokenizer, out, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        weights = {n: t.to(dtype).contiguous().cpu() for n, t in hf_state_dict(rm.backbone).items()}
        weights[SCORE_NAME] = rm.head.weight.detach().to(dtype).contiguous().cpu()
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        config = _seqcls_config_dict(rm, dtype, tokenizer)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / TRAINLAB_JSON).write_text(json.dumps(rm.config.model_dump(mode="json"), indent=2) + "\n",
                                         encoding="utf-8")
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, rm.source.path if rm.source is not None else None)
        publish_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------
# The loss, and evaluation on held-out pairs
# ------------------------------------------------------------------------------------------


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, margin: Tensor | float = 0.0,
                       center_coefficient: float | None = None) -> Tensor:
    """Per-pair ``−log σ(r_c − r_r − m) + c·(r_c + r_r)²`` (``[B]``; see the module docstring)."""
    loss = -F.logsigmoid(chosen - rejected - margin)
    if center_coefficient:
        loss = loss + center_coefficient * (chosen + rejected) ** 2
    return loss


class RewardObjective:
    """Bradley-Terry reward modelling as an `Objective` (``count`` = pairs).

    Batches are `trainlab.align.datasets.collate_preference`'s: rows ``0..B-1`` chosen, ``B..2B-1``
    rejected, scored in one forward pass; an optional ``margin [B]`` column overrides ``margin``.
    Metrics are TRL's names: ``accuracy`` (r_c > r_r), ``margin`` (mean r_c − r_r), ``mean_reward``.
    """

    def __init__(self, *, margin: float = 0.0, center_rewards_coefficient: float | None = None,
                 share_prefix: bool = False) -> None:
        self.margin = margin
        self.center = center_rewards_coefficient
        self.share_prefix = share_prefix  # each pair's prompt computed once (`pair_rewards_packed`)

    def count(self, batch: Batch) -> int:
        return int(batch["input_ids"].shape[0]) // 2

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        rewards = pair_rewards_packed(model, batch["input_ids"], batch.get("attention_mask")) if self.share_prefix \
            else None
        if rewards is None:
            rewards = model(batch["input_ids"], batch.get("attention_mask"))  # [2B]
        chosen, rejected = rewards.chunk(2)
        margin = batch["margin"].to(rewards.dtype) if "margin" in batch else self.margin
        loss = bradley_terry_loss(chosen, rejected, margin, self.center)
        with torch.no_grad():
            diff = chosen - rejected
            metrics = {"accuracy": float((diff > 0).float().mean()), "margin": float(diff.mean()),
                       "mean_reward": float(rewards.mean())}
        return ObjectiveOutput(loss_sum=loss.sum(), count=int(chosen.numel()), metrics=metrics)


def pair_rewards_packed(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor | None:
    """``[2B]`` rewards of a preference batch with each pair packed as one row ``[prompt, chosen, rejected]``
    (`trainlab.align.prefix_sharing`): each row's score is read at its last non-pad token's packed
    position, which sees what it sees in its own row. None where packing does not apply."""
    from trainlab.align.prefix_sharing import MAX_MASK_ELEMENTS, custom_mask_limit, pack_pairs

    if not isinstance(model, RewardModel) or input_ids.shape[0] % 2:
        return None
    limit = custom_mask_limit(model)
    packed = pack_pairs(input_ids, attention_mask) if limit > 0 else None
    if packed is None or packed.input_ids.shape[1] > limit or packed.allowed.numel() > MAX_MASK_ELEMENTS:
        return None
    h = model.hidden_states(packed.input_ids, packed.allowed, packed.position_ids)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    pair, at = packed.packed_position(rows, last_token_index(input_ids, model.pad_token_id))
    return model._apply_score(h[pair, at])


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def pair_rewards(model: RewardModel, dataset: Any, *, pad_id: int, batch_size: int = 64) -> Tensor:
    """``[n, 2]`` rewards (chosen, rejected) of every pair of a `PreferenceDataset`."""
    from trainlab.align.datasets import collate_preference

    device = _device(model)
    out: list[Tensor] = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        batch = collate_preference(items, pad_id)
        r = model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()
        out.append(torch.stack(r.chunk(2), dim=1))
    return torch.cat(out) if out else torch.zeros(0, 2)


def reward_metrics(model: RewardModel, dataset: Any, *, pad_id: int, margin: float = 0.0,
                   center_rewards_coefficient: float | None = None, batch_size: int = 64) -> dict[str, float]:
    """Held-out pairs: ``accuracy`` (r_c > r_r), mean ``margin``, ``loss`` (Bradley-Terry), mean rewards."""
    r = pair_rewards(model, dataset, pad_id=pad_id, batch_size=batch_size)
    if r.numel() == 0:
        return {}
    diff = r[:, 0] - r[:, 1]
    loss = bradley_terry_loss(r[:, 0], r[:, 1], margin, center_rewards_coefficient)
    return {"accuracy": float((diff > 0).float().mean()), "margin": float(diff.mean()), "loss": float(loss.mean()),
            "chosen_reward": float(r[:, 0].mean()), "rejected_reward": float(r[:, 1].mean()),
            "reward_std": float(r.flatten().std()) if r.numel() > 1 else 0.0}


@torch.no_grad()
def score_sequences(model: RewardModel, sequences: Sequence[Sequence[int]], *, pad_id: int,
                    batch_size: int = 64) -> Tensor:
    """``[n]`` rewards of token sequences (right-padded in batches)."""
    device = _device(model)
    out: list[Tensor] = []
    for start in range(0, len(sequences), batch_size):
        rows = [list(s) for s in sequences[start:start + batch_size]]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        out.append(model(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def load_reward_scorer(path: str | Path, device: torch.device | str = "cpu", *, batch_size: int = 64
                       ) -> Any:
    """``score(prompts, completions) -> Tensor [N]``: a saved reward model judging texts.

    Each (prompt, completion) is tokenized as the reward model's training pairs were
    (`trainlab.align.datasets.tokenize_completions`: the tokenizer's special tokens, the completion
    split from the prompt in token space, eos ending a plain completion), then scored at its last token.
    """
    from trainlab.align.datasets import eos_id, tokenize_completions

    p = Path(path)
    if p.is_dir() and not is_reward_model_folder(p):
        # a causal LM would get a random score head: its "rewards" would be noise
        raise UserError("not a reward model (config.json names no *ForSequenceClassification); train one with "
                        "trainlab rm", path=p)
    rm, tokenizer = load_reward_model(p, device)
    rm.eval()
    pad = rm.pad_token_id if rm.pad_token_id is not None else _pad_id(tokenizer)
    eos = eos_id(tokenizer)

    def score(prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows = tokenize_completions(tokenizer, list(prompts), [(c,) for c in completions], [False] * len(prompts))
        seqs = []
        for p, comps, _ in rows:
            c = list(comps[0])
            if not c or c[-1] != eos:
                c.append(eos)
            seqs.append(list(p) + c)
        return score_sequences(rm, seqs, pad_id=int(pad), batch_size=batch_size)

    score.model = rm  # type: ignore[attr-defined]
    score.tokenizer = tokenizer  # type: ignore[attr-defined]
    return score
