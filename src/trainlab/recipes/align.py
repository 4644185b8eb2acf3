"""Alignment recipe: a model folder + records -> SFT, DPO, ORPO, SimPO or KTO -> a Hugging Face folder.

``run_alignment(method, cfg, model_path, out_dir)`` is what ``trainlab sft|dpo|orpo|simpo|kto``
and the labs 1.7/1.8 run:

1. load the policy (our decoder or any local transformers causal LM) and its tokenizer;
2. build the data (`build_alignment_data`): the embedded task data, or the user's records,
   validated (malformed records skipped and counted, or fatal with ``strict``) and tokenized
   with the prompt/completion boundary in token space;
3. for DPO and KTO, the reference: log-probs computed once with the initial weights and cached
   (``align.reference: cached``, the default), or a frozen copy (``frozen``);
4. train through `trainlab.train.Trainer` with the method's objective (`trainlab.align.objectives`);
   evaluation on held-out pairs (implicit-reward accuracy, KL to the initial model) every
   ``train.eval_every`` steps and at the end;
5. save ``out_dir/model`` (HF format + tokenizer) and ``out_dir/summary.json`` (times, peak
   memory, curves, oracle accuracy on held-out task prompts for the embedded data).

`run_or_reuse` wraps it with a cache keyed by (method, config, input model) so that labs sharing
a stage (lab 1.8 reuses lab 1.7's SFT and DPO models within one suite run) train it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlab.align.config import AlignRunConfig
from trainlab.align.data import (
    CompletionDataset,
    CompletionRecord,
    LengthPolicy,
    LoadReport,
    PreferenceDataset,
    PreferenceRecord,
    collate_preference,
    collate_unpaired,
    embedded_alignment_data,
    load_records,
)
from trainlab.align.evaluate import completion_kl, oracle_accuracy, pair_logps, reward_accuracy, win_rate
from trainlab.memory.measure import PeakMemory, training_memory
from trainlab.align.objectives import DPOObjective, KTOObjective, ORPOObjective, SimPOObjective
from trainlab.align.reference import FrozenReference, reference_logps
from trainlab.config import dump_config
from trainlab.data.datasets import collate_padded
from trainlab.data.tasks import TaskRecord
from trainlab.data.tokenizer import load_tokenizer
from trainlab.errors import UserError
from trainlab.model.protocol import apply_checkpointing, load_model
from trainlab.optim import build_optimizer
from trainlab.train.amp import autocast_context
from trainlab.train.data import StepBatcher
from trainlab.train.device import resolve_device
from trainlab.train.loop import Trainer
from trainlab.train.objectives import CausalLMObjective, Objective
from trainlab.utils import read_json, seed_everything, write_json

log = logging.getLogger(__name__)

PREFERENCE_METHODS = ("dpo", "orpo", "simpo")


# --------------------------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------------------------


def load_policy(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a model folder: ours, or any local transformers causal LM."""
    p = Path(path)
    model = load_model(p)
    try:
        tokenizer = load_tokenizer(p)
    except UserError:
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None or getattr(tokenizer, "eos_token_id", None) is None:
            raise
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer  # type: ignore[attr-defined]


@dataclass
class AlignmentData:
    """The tokenized training set, held-out pairs and task prompts, and what loading found."""

    method: str
    tokenizer: Any
    train: PreferenceDataset | CompletionDataset
    eval_pairs: PreferenceDataset | None
    eval_records: list[TaskRecord]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)


def _kind(method: str) -> str:
    return "sft" if method == "sft" else "unpaired" if method == "kto" else "preference"


def _unpair(pairs: list[PreferenceRecord]) -> list[CompletionRecord]:
    out: list[CompletionRecord] = []
    for p in pairs:
        out += [CompletionRecord(p.prompt, p.chosen, True, p.where), CompletionRecord(p.prompt, p.rejected, False,
                                                                                      p.where)]
    return out


def build_alignment_data(method: str, cfg: AlignRunConfig, tokenizer: Any, *, source: Any = None
                         ) -> AlignmentData:
    """Records for ``method`` from ``source`` (default ``cfg.align_data.source``), tokenized.

    Embedded: SFT gets the task data with ``sft_wrong_share`` wrong answers, DPO/ORPO/SimPO get
    (correct, plausible wrong) pairs, KTO the same pairs unpaired; held-out pairs and task
    prompts come from the eval side of the task split. User data: ``n_eval_pairs`` preference
    records (seeded choice, at most a tenth) are held out for evaluation.
    """
    dc = cfg.align_data
    a = cfg.align
    policy = LengthPolicy(a.max_prompt_len, a.max_completion_len, a.max_len)
    kind = _kind(method)
    src = dc.source if source is None else source
    eval_pairs_records: list[PreferenceRecord] = []
    eval_records: list[TaskRecord] = []
    info: dict[str, Any] = {"source": str(src) if isinstance(src, (str, Path)) else type(src).__name__}
    if isinstance(src, str) and src == "embedded":
        emb = embedded_alignment_data(dc)
        records: list[Any] = emb.sft if kind == "sft" else _unpair(emb.pairs) if kind == "unpaired" else emb.pairs
        eval_pairs_records, eval_records = emb.eval_pairs, emb.eval_records
        info.update(n_train_problems=dc.n_train, sft_wrong_share=dc.sft_wrong_share, n_wrong_sft=emb.n_wrong_sft,
                    difficulty=dc.difficulty, tasks=dc.tasks or "all")
    else:
        report: LoadReport = load_records(src, kind, tokenizer=tokenizer, strict=dc.strict, split=dc.split)  # type: ignore[arg-type]
        info["load"] = report.summary()
        if report.skipped:
            log.warning("skipped %d malformed record(s) of %d in %s; first: %s", report.skipped, report.n_read,
                        report.source, report.issues[0])
        records = list(report.records)
        if kind == "preference" and dc.n_eval_pairs:
            n_hold = min(dc.n_eval_pairs, len(records) // 10)
            if n_hold:
                held = set(random.Random(dc.seed).sample(range(len(records)), n_hold))
                eval_pairs_records = [r for i, r in enumerate(records) if i in held]
                records = [r for i, r in enumerate(records) if i not in held]
    if kind == "preference":
        train: PreferenceDataset | CompletionDataset = PreferenceDataset(tokenizer, records, policy)
    else:
        train = CompletionDataset(tokenizer, records, policy, kind="sft" if kind == "sft" else "unpaired",
                                  kl_block=cfg.train.batch_size)
    if len(train) == 0:
        raise UserError(f"no training examples left after truncation ({train.dropped} dropped): raise "
                        "align.max_completion_len / align.max_len")
    eval_pairs = PreferenceDataset(tokenizer, eval_pairs_records, policy) if eval_pairs_records else None
    if eval_pairs is not None and len(eval_pairs) == 0:
        eval_pairs = None
    info["train"] = train.stats()
    info["eval_pairs"] = len(eval_pairs) if eval_pairs is not None else 0
    info["eval_prompts"] = len(eval_records)
    return AlignmentData(method=method, tokenizer=tokenizer, train=train, eval_pairs=eval_pairs,
                         eval_records=eval_records, info=info)


def build_objective(method: str, cfg: AlignRunConfig, reference: FrozenReference | None = None) -> Objective:
    """The objective of ``method`` with ``cfg.align``'s settings."""
    a = cfg.align
    if method == "sft":
        return CausalLMObjective(token_accuracy=True)
    if method == "dpo":
        return DPOObjective(beta=a.beta, loss_type=a.loss_type, label_smoothing=a.label_smoothing,
                            rpo_alpha=a.rpo_alpha, chunk_size=a.chunk_size, reference=reference)
    if method == "orpo":
        return ORPOObjective(lam=a.orpo_lambda, mask_prompt=a.orpo_mask_prompt, chunk_size=a.chunk_size)
    if method == "simpo":
        return SimPOObjective(beta=a.beta, gamma=a.simpo_gamma, label_smoothing=a.label_smoothing,
                              chunk_size=a.chunk_size)
    if method == "kto":
        return KTOObjective(beta=a.beta, desirable_weight=a.kto_desirable_weight,
                            undesirable_weight=a.kto_undesirable_weight, kl=a.kto_kl, chunk_size=a.chunk_size,
                            reference=reference)
    raise UserError(f"unknown alignment method {method!r}")


def collate_for(method: str, pad_id: int) -> Any:
    if method == "sft":
        return partial(collate_padded, pad_id=pad_id)
    if method == "kto":
        return partial(collate_unpaired, pad_id=pad_id)
    return partial(collate_preference, pad_id=pad_id)


def _reward_beta(method: str, cfg: AlignRunConfig) -> float:
    return {"orpo": cfg.align.orpo_lambda, "sft": 1.0}.get(method, cfg.align.beta)


def alignment_optimizer(model: nn.Module, cfg: AlignRunConfig) -> torch.optim.Optimizer:
    """`trainlab.optim.build_optimizer`'s optimizer, as the fused AdamW kernel where torch has one.

    Fine-tuning updates every weight each step, and the unfused AdamW makes about a dozen passes
    over parameters, gradients and both moments (with temporaries as large as the parameters);
    the fused kernel makes one (CPU since torch 2.4, CUDA). Same update rule, same param groups
    (no decay on norms and biases); results differ from the unfused path only by rounding.
    """
    opt = build_optimizer(model, cfg.train)
    if not isinstance(opt, torch.optim.AdamW):
        return opt
    device = next(model.parameters()).device
    if device.type not in ("cpu", "cuda"):
        return opt
    groups = [{k: v for k, v in g.items() if k in ("params", "weight_decay", "param_names")}
              for g in opt.param_groups]
    try:
        return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2),
                                 eps=cfg.train.eps, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or an unsupported dtype/device
        return opt


def save_model(model: nn.Module, tokenizer: Any, out: Path) -> Path:
    """The model in the Hugging Face format with its tokenizer (our decoder: the Llama layout)."""
    from trainlab.model.decoder import Decoder
    from trainlab.model.hf import HFCausalLM

    if isinstance(model, Decoder):
        return model.save_pretrained(out, tokenizer=tokenizer)
    if isinstance(model, HFCausalLM):
        if out.exists():
            shutil.rmtree(out)
        model.model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        return out
    raise TypeError(f"cannot save a {type(model).__name__}")


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class AlignRun:
    """A finished run: its summary (also in ``summary.json``), and the trained model in memory."""

    summary: dict[str, Any]
    model: nn.Module
    tokenizer: Any
    data: AlignmentData | None = None


def _check_vocab(model: nn.Module, data: AlignmentData) -> None:
    vocab = int(model.output_embedding().shape[0])  # type: ignore[operator]
    ds = data.train
    seqs = ds.prompts + (ds.chosen + ds.rejected if isinstance(ds, PreferenceDataset) else ds.completions)
    top = max((max(s) for s in seqs if s), default=0)
    if top >= vocab:
        raise UserError(f"the tokenizer produces id {top}, but the model's vocabulary has {vocab} entries: "
                        "use the tokenizer saved with the model")


def run_alignment(method: str, cfg: AlignRunConfig, model_path: str | Path, out_dir: str | Path, *,
                  resume: bool = False, quiet: bool = False, data: AlignmentData | None = None,
                  evaluate_oracle: bool = True, save: bool = True, callbacks: list[Any] | None = None) -> AlignRun:
    """Train ``method`` from the model in ``model_path`` into ``out_dir`` (see the module docstring)."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    model, tokenizer = load_policy(model_path, device)
    apply_checkpointing(model, cfg.model.checkpointing, cfg.model.checkpoint_every)
    if data is None:
        data = build_alignment_data(method, cfg, tokenizer)
    _check_vocab(model, data)
    pad = data.pad_id
    a = cfg.align
    needs_ref = method in ("dpo", "kto")
    want_kl = a.eval_kl and data.eval_pairs is not None
    initial = FrozenReference(model, chunk_size=a.chunk_size) if (want_kl or (needs_ref and a.reference == "frozen")) \
        else None
    reference_info: dict[str, Any] = {"mode": a.reference if needs_ref else "none"}
    eval_ref_logps = None
    if needs_ref and a.reference == "frozen":
        data.train.ref_logps = None  # the frozen model scores every batch; never stale cached values
    # a coarse sampling interval: the sampler thread must not compete with small training steps
    with PeakMemory(device, interval_s=0.02) as mem:
        if needs_ref and a.reference == "cached":
            values, info = reference_logps(model, data.train, collate_for(method, pad),
                                           kind="unpaired" if method == "kto" else "preference",
                                           # no graph is kept: a wide batch is cheaper per pair
                                           batch_size=max(4 * cfg.train.batch_size, 64), chunk_size=a.chunk_size,
                                           precision=cfg.train.precision,
                                           device=device)
            data.train.set_reference_logps(values)
            reference_info.update(info)
        if data.eval_pairs is not None and method in ("dpo", "kto"):
            eval_ref_logps = pair_logps(model, data.eval_pairs, pad_id=pad)[0]
        objective = build_objective(method, cfg, initial if (needs_ref and a.reference == "frozen") else None)
        batcher = StepBatcher(data.train, cfg.train.batch_size, cfg.train.grad_accum, collate_for(method, pad),
                              cfg.train.seed)
        beta = _reward_beta(method, cfg)
        first = collate_for(method, pad)([data.train[i] for i in range(min(len(data.train), cfg.train.batch_size))])
        first = {k: v.to(device) for k, v in first.items()}
        model.train()
        with autocast_context(device, cfg.train.precision):
            memory = training_memory(model, lambda: objective(model, first),
                                     frozen_copies=[initial.model] if (needs_ref and a.reference == "frozen" and
                                                                       initial is not None) else [])

        def eval_fn(m: nn.Module) -> dict[str, float]:
            values: dict[str, float] = {}
            if data.eval_pairs is None:
                return values
            values.update(reward_accuracy(m, data.eval_pairs, beta=beta, reference_logps=eval_ref_logps, pad_id=pad))
            if want_kl and initial is not None:
                values.update(completion_kl(m, initial.model, data.eval_pairs, pad_id=pad))
            return values

        run_config = dump_config(cfg) | {"method": method, "model_in": str(model_path), "data_info": data.info}
        trainer = Trainer(model, objective, batcher, cfg.train, out, eval_fn=eval_fn, run_config=run_config,
                          quiet=quiet, callbacks=callbacks, optimizer=alignment_optimizer(model, cfg))
        result = trainer.fit(resume=resume)
    policy = trainer.model
    model_dir = save_model(policy, tokenizer, out / "model") if save else None
    wall = time.perf_counter() - t_start  # the whole stage, judging on held-out prompts aside
    accuracy = None
    if evaluate_oracle and data.eval_records:
        accuracy = oracle_accuracy(policy, tokenizer, data.eval_records).to_dict()
    units = result.count
    summary: dict[str, Any] = {
        "method": method,
        "model_in": str(model_path),
        "model_dir": str(model_dir) if model_dir else None,
        "steps": result.steps,
        "units_seen": units,
        "unit": "tokens" if method == "sft" else "examples" if method == "kto" else "pairs",
        "final_loss": result.final_loss,
        "train_time_s": result.train_time_s,
        "wall_time_s": wall,
        # the compute the method needs: optimizer steps plus the one-off reference pass
        "cost_s": result.train_time_s + float(reference_info.get("seconds", 0.0)),
        "reference": reference_info,
        "peak_memory": mem.result(),
        "memory": memory,
        "device": str(device),
        "history": result.history,
        "eval_history": result.eval_history,
        "final_eval": result.eval_history[-1] if result.eval_history else {},
        "accuracy": accuracy,
        "data": data.info,
        "config": dump_config(cfg),
        "metrics_path": str(result.metrics_path),
        "stopped_reason": result.stopped_reason,
    }
    write_json(out / "summary.json", summary)
    return AlignRun(summary=summary, model=policy, tokenizer=tokenizer, data=data)


# --------------------------------------------------------------------------------------------
# Reuse within a suite, and evaluation of saved models
# --------------------------------------------------------------------------------------------


def _folder_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_key(method: str, cfg: AlignRunConfig, model_path: str | Path) -> str:
    """What makes two runs the same: the method, the config, the device it runs on (its numbers and
    times depend on it: a stage trained elsewhere is not reused) and the input model."""
    from trainlab.align.reference import device_identity

    described = dump_config(cfg)
    described["train"]["device"] = device_identity(resolve_device(cfg.train.device))
    payload = json.dumps({"method": method, "config": described, "model": _folder_fingerprint(Path(model_path))},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_or_reuse(method: str, cfg: AlignRunConfig, model_path: str | Path, out_dir: str | Path, *,
                 quiet: bool = True, data: AlignmentData | None = None) -> AlignRun:
    """`run_alignment` unless ``out_dir`` already holds a finished run with the same `run_key`."""
    out = Path(out_dir)
    key = run_key(method, cfg, model_path)
    summary_path = out / "summary.json"
    if summary_path.is_file() and (out / "model" / "config.json").is_file():
        summary = read_json(summary_path)
        if summary.get("key") == key:
            model, tokenizer = load_policy(out / "model", resolve_device(cfg.train.device))
            summary["reused"] = True
            return AlignRun(summary=summary, model=model, tokenizer=tokenizer, data=data)
    if out.exists():
        shutil.rmtree(out)
    run = run_alignment(method, cfg, model_path, out, quiet=quiet, data=data)
    run.summary["key"] = key
    write_json(summary_path, run.summary)
    return run


def stage_config(method: str, preset: str, *, seed: int = 0, device: str = "auto",
                 overrides: list[str] | None = None) -> AlignRunConfig:
    """The config of a lab stage: the method's defaults for ``preset`` on this device and seed."""
    from trainlab.align.config import align_config

    return align_config(method, preset=preset, overrides=[f"train.device={device}", f"train.seed={seed}",
                                                          *(overrides or [])])


def shared_stage(name: str, method: str, cfg: AlignRunConfig, model_path: str | Path, suite_dir: str | Path
                 ) -> AlignRun:
    """A stage several labs of one suite need (the SFT model, the DPO model): trained once per suite
    run into ``suite_dir/.align-cache/<name>`` and reused while its `run_key` matches."""
    return run_or_reuse(method, cfg, model_path, Path(suite_dir) / ".align-cache" / name)


def run_eval(model_path: str | Path, cfg: AlignRunConfig, *, reference: str | Path | None = None,
             against: str | Path | None = None, data: Any = None, method: str = "dpo") -> dict[str, Any]:
    """``trainlab eval``: oracle accuracy on held-out task prompts, and with pairs (embedded or
    ``data``) implicit-reward accuracy; with ``reference`` also KL(model ‖ reference); with
    ``against`` the oracle win rate of the model over that one."""
    device = resolve_device(cfg.train.device)
    model, tokenizer = load_policy(model_path, device)
    if data is not None:  # the user's pairs are all for judging: hold none out
        cfg = cfg.model_copy(update={"align_data": cfg.align_data.model_copy(update={"n_eval_pairs": 0})})
    aligned = build_alignment_data("dpo", cfg, tokenizer, source=data)
    pairs = aligned.eval_pairs if data is None else aligned.train  # user data: judge every pair
    assert isinstance(pairs, PreferenceDataset) or pairs is None
    out: dict[str, Any] = {"model": str(model_path), "data": aligned.info}
    if aligned.eval_records:
        out["accuracy"] = oracle_accuracy(model, tokenizer, aligned.eval_records).to_dict()
    ref_model = load_policy(reference, device)[0] if reference is not None else None
    if pairs is not None and len(pairs):
        ref_logps = pair_logps(ref_model, pairs, pad_id=aligned.pad_id)[0] if ref_model is not None else None
        beta = _reward_beta(method, cfg)
        out["pairs"] = reward_accuracy(model, pairs, beta=beta, reference_logps=ref_logps, pad_id=aligned.pad_id)
        if ref_model is not None:
            out["pairs"].update(completion_kl(model, ref_model, pairs, pad_id=aligned.pad_id))
    if against is not None and aligned.eval_records:
        other = load_policy(against, device)[0]
        out["win_rate"] = win_rate(model, other, tokenizer, aligned.eval_records).to_dict() | {"against": str(against)}
    return out
