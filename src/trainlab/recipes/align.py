"""Alignment recipe: a model folder + records -> SFT, DPO, ORPO, SimPO or KTO -> a Hugging Face folder.

``run_alignment(method, cfg, model_path, out_dir)`` is what ``trainlab sft|dpo|orpo|simpo|kto``
and the labs 1.7/1.8 run. What differs between methods is one `trainlab.recipes.methods.AlignMethod`
entry (data kind, collate, objective, reference, evaluations); the run itself is one pipeline:

1. load the policy (our decoder or any local transformers causal LM) and its tokenizer; dropout
   off unless ``align.disable_dropout=false`` (TRL's ``disable_dropout``);
2. build the data (`build_alignment_data`): the embedded task data, or the user's records,
   validated (malformed records skipped and counted, or fatal with ``strict``) and tokenized
   with the prompt/completion boundary in token space; evaluation pairs from
   ``align_data.eval_source`` or a seeded hold-out; every count (truncated, dropped, held out)
   in ``summary["data"]`` and on the console (`describe_data`);
3. for methods with a reference (DPO, KTO): π_ref is the starting policy or ``align.ref_model``;
   its log-probs computed once and cached (``align.reference: cached``, the default), or a frozen
   model scoring every batch (``frozen``);
4. train through `trainlab.train.Trainer` with the method's objective and the optimizer of
   `trainlab.optim.build_optimizer`; evaluation pairs (implicit-reward accuracy, KL to the
   reference) every ``train.eval_every`` steps and at the end;
5. save ``out_dir/model`` (HF format + tokenizer) in the input model's dtype unless
   ``align.save_dtype`` says otherwise, and ``out_dir/summary.json`` (times, peak memory, curves,
   oracle accuracy on held-out task prompts for the embedded data).

`run_or_reuse` wraps it with a cache keyed by (method, config, input model) so that labs sharing
a stage (lab 1.8 reuses lab 1.7's SFT and DPO models within one suite run) train it once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlab.align.config import AlignRunConfig, defaults_profile
from trainlab.align.datasets import PreferenceDataset, SFTDataset
from trainlab.align.evaluate import (
    completion_kl,
    oracle_accuracy,
    pair_logps,
    reward_accuracy,
    task_completions,
    win_rate_from_completions,
)
from trainlab.align.reference import FrozenReference
from trainlab.config import dump_config
from trainlab.data.datasets import collate_padded
from trainlab.errors import UserError
from trainlab.memory.measure import PeakMemory, training_memory
from trainlab.model.protocol import apply_checkpointing, disable_dropout
from trainlab.model.saving import resolve_save_dtype, save_model
from trainlab.peft.run import apply_run_peft, peft_train_extras
from trainlab.recipes.align_data import AlignmentData, build_alignment_data, check_vocab, describe_data
from trainlab.recipes.align_model import (
    ReferenceSetup,
    check_same_tokenizer,
    load_policy,
    max_positions,
    prepare_reference,
    save_policy,
)
from trainlab.recipes.methods import AlignMethod, get_method
from trainlab.train.amp import autocast_context
from trainlab.train.checkpoint import ResumeMode, folder_fingerprint
from trainlab.train.data import StepBatcher
from trainlab.train.device import resolve_device
from trainlab.train.loop import Trainer
from trainlab.train.objectives import CausalLMObjective, Objective
from trainlab.utils import read_json, seed_everything, write_json

# re-exported: the labs, notebooks and benchmarks import them from here
__all__ = ["AlignRun", "AlignmentData", "build_alignment_data", "build_objective", "collate_for", "describe_data",
           "load_policy", "run_alignment", "run_eval", "run_or_reuse", "save_model", "shared_stage",
           "stage_config"]


def build_objective(method: str, cfg: AlignRunConfig, reference: FrozenReference | None = None) -> Objective:
    """The objective of ``method`` with ``cfg.align``'s settings (`AlignMethod.objective`)."""
    return get_method(method).objective(cfg.align, reference)


def collate_for(method: str, pad_id: int) -> Any:
    """The batch collate of ``method``'s data (`AlignMethod.collate`)."""
    return get_method(method).collate(pad_id)


@torch.no_grad()
def completion_loss(model: nn.Module, dataset: SFTDataset, pad_id: int, batch_size: int = 64
                    ) -> dict[str, float]:
    """Mean next-token loss over the completion tokens of ``dataset`` (TRL's SFT ``eval_loss``)."""
    objective = CausalLMObjective(token_accuracy=False)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = collate_padded([dataset[i] for i in range(start, min(len(dataset), start + batch_size))], pad_id)
        out = objective(model, {k: v.to(device) for k, v in batch.items()})
        total, count = total + float(out.loss_sum), count + int(out.count)
    return {"eval_loss": total / max(count, 1)}


def evaluation_fn(spec: AlignMethod, cfg: AlignRunConfig, data: AlignmentData, ref: ReferenceSetup) -> Any:
    """The trainer's ``eval_fn``: the method's evaluations on the evaluation data."""
    beta, pad = spec.reward_beta(cfg.align), data.pad_id

    def eval_fn(m: nn.Module) -> dict[str, float]:
        values: dict[str, float] = {}
        if data.eval_examples is not None:
            values.update(completion_loss(m, data.eval_examples, pad))
        if data.eval_pairs is None:
            return values
        if "reward_accuracy" in spec.evaluations:
            values.update(reward_accuracy(m, data.eval_pairs, beta=beta, reference_logps=ref.eval_logps, pad_id=pad))
        if ref.model is not None:
            values.update(completion_kl(m, ref.model, data.eval_pairs, pad_id=pad))
        return values

    return eval_fn


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


def _prefix_sharing(spec: Any, cfg: AlignRunConfig, model: Any) -> dict[str, Any] | None:
    """Whether the pair objective computed each prompt once (`trainlab.align.prefix_sharing`), and why."""
    if spec.data != "preference":
        return None
    from trainlab.align.prefix_sharing import shares_prefix

    enabled, detail = shares_prefix(model, cfg.align.share_prefix)
    return {"enabled": enabled, "detail": detail}


def run_alignment(method: str, cfg: AlignRunConfig, model_path: str | Path, out_dir: str | Path, *,
                  resume: ResumeMode = False, quiet: bool = False, data: AlignmentData | None = None,
                  evaluate_oracle: bool = True, save: bool = True, callbacks: list[Any] | None = None,
                  force: bool = False) -> AlignRun:
    """Train ``method`` from the model in ``model_path`` into ``out_dir`` (see the module docstring).

    ``resume``/``force`` as `Trainer.fit`: a checkpoint of another input model, reference model or
    training set is refused unless ``force``. The checkpoint is released once the model is saved.
    Under torchrun (``--nproc N``, ``cfg.dist``) every rank trains its share of each step; rank 0
    saves, judges and writes the summary, which every rank returns.
    """
    from trainlab.distributed import env as dist_env

    ctx = dist_env.init(cfg.dist, cfg.train.device)
    spec = get_method(method)
    t_start = time.perf_counter()
    out = Path(out_dir)
    device = ctx.device if ctx is not None else resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    model, tokenizer = load_policy(model_path, device)
    apply_checkpointing(model, cfg.model.checkpointing, cfg.model.checkpoint_every)
    dropouts = disable_dropout(model) if cfg.align.disable_dropout else {}
    # after disable_dropout: an adapter dropout the user asked for (peft.dropout) stays on
    peft_info = apply_run_peft(model, cfg)
    if data is None:
        data = build_alignment_data(method, cfg, tokenizer, max_positions=max_positions(model))
    check_vocab(model, data)
    pad = data.pad_id
    # a coarse sampling interval: the sampler thread must not compete with small training steps
    with PeakMemory(device, interval_s=0.02) as mem:
        ref = prepare_reference(spec, cfg, model, tokenizer, data, device)
        out.mkdir(parents=True, exist_ok=True)  # only once model, data and reference are known good: bad input
        # writes nothing
        objective = spec.objective(cfg.align, ref.frozen)
        objective, peft_callbacks = peft_train_extras(model, cfg, objective)  # AdaLoRA: regularizer, allocator
        batcher = StepBatcher(data.train, cfg.train.batch_size, cfg.train.grad_accum, spec.collate(pad),
                              cfg.train.seed)
        first = spec.collate(pad)([data.train[i] for i in range(min(len(data.train), cfg.train.batch_size))])
        first = {k: v.to(device) for k, v in first.items()}
        model.train()
        with autocast_context(device, cfg.train.precision):
            memory = training_memory(model, lambda: objective(model, first),
                                     frozen_copies=[ref.frozen.model] if ref.frozen is not None else [])
        run_config = dump_config(cfg) | {"method": method, "model_in": str(model_path), "data_info": data.info}
        identity = {"method": method, "model": folder_fingerprint(model_path), "data": data.train.fingerprint()}
        if cfg.align.ref_model:
            identity["ref_model"] = folder_fingerprint(cfg.align.ref_model)
        if peft_info is not None:  # a LoRA checkpoint does not resume as a full fine-tune (or another rank)
            identity["peft"] = cfg.peft.model_dump(mode="json", exclude={"merge"})
        trainer = Trainer(model, objective, batcher, cfg.train, out, eval_fn=evaluation_fn(spec, cfg, data, ref),
                          run_config=run_config, quiet=quiet, callbacks=[*(callbacks or []), *peft_callbacks],
                          identity=identity)
        result = trainer.fit(resume=resume, force=force)
    policy = trainer.final_model()  # distributed: rank 0 alone saves, judges and writes
    if policy is None:
        trainer.release_checkpoint()
        assert ctx is not None
        return AlignRun(summary=ctx.broadcast_object(None), model=trainer.model, tokenizer=tokenizer, data=data)
    model_dir, peft_summary = save_policy(policy, cfg, out, tokenizer, method=method, model_in=model_path,
                                          peft_info=peft_info, save=save)
    profile = defaults_profile(model_path)
    save_dtype = resolve_save_dtype(policy, cfg.align.save_dtype)
    trainer.release_checkpoint()  # the model is saved (or not wanted): no optimizer state left behind
    wall = time.perf_counter() - t_start  # the whole stage, judging on held-out prompts aside
    accuracy = None
    if evaluate_oracle and data.eval_records:
        accuracy = oracle_accuracy(policy, tokenizer, data.eval_records).to_dict()
    summary: dict[str, Any] = {
        "method": method,
        "model_in": str(model_path),
        "model_dir": str(model_dir) if model_dir else None,
        "defaults": profile,
        "save_dtype": str(save_dtype).removeprefix("torch."),
        "dropout_disabled": dropouts,
        "prefix_sharing": _prefix_sharing(spec, cfg, policy),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "units_seen": result.count,
        "unit": spec.unit,
        "final_loss": result.final_loss,
        "train_time_s": result.train_time_s,
        "wall_time_s": wall,
        # the compute the method needs: optimizer steps plus the one-off reference pass
        "cost_s": result.train_time_s + float(ref.info.get("seconds", 0.0)),
        "reference": ref.info,
        "peak_memory": mem.result(),
        "memory": memory,
        "peft": peft_summary,
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
    if ctx is not None:
        ctx.broadcast_object(summary)
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
    if summary_path.is_file() and ((out / "model" / "config.json").is_file() or (out / "adapter").is_dir()):
        summary = read_json(summary_path)
        if summary.get("key") == key:
            if summary.get("peft"):  # a PEFT run: the input model with the saved adapter, as the run left it
                from trainlab.peft import load_adapter

                model, tokenizer = load_policy(model_path, resolve_device(cfg.train.device))
                load_adapter(model, out / "adapter")
            else:
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
    get_method(method)  # an unknown method is an error, not silently dpo
    if against is not None and data is not None:
        raise UserError("--against: the win rate compares answers on the embedded tasks' prompts, judged by their "
                        "oracle; it is not computed on --data (run it without --data)")
    device = resolve_device(cfg.train.device)
    model, tokenizer = load_policy(model_path, device)
    if data is not None:  # the user's pairs are all for judging: hold none out
        cfg = cfg.model_copy(update={"align_data": cfg.align_data.model_copy(update={"n_eval_pairs": 0})})
    # KTO's unpaired data (or pairs, unpaired as KTO reads them) with --method kto; pairs otherwise
    unpaired = data is not None and method == "kto"
    aligned = build_alignment_data("kto" if unpaired else "dpo", cfg, tokenizer, source=data)
    pairs = aligned.eval_pairs if data is None else aligned.train  # user data: judge every pair
    if unpaired:
        return _eval_unpaired(model, aligned, cfg, reference, device, tokenizer, str(model_path))
    assert isinstance(pairs, PreferenceDataset) or pairs is None
    out: dict[str, Any] = {"model": str(model_path), "data": aligned.info}
    if aligned.eval_records:
        out["accuracy"] = oracle_accuracy(model, tokenizer, aligned.eval_records).to_dict()
    ref_model = None
    if reference is not None:
        ref_model, ref_tokenizer = load_policy(reference, device)
        check_same_tokenizer(ref_tokenizer, tokenizer, reference, "--reference")
        check_vocab(ref_model, aligned)
    if pairs is not None and len(pairs):
        ref_logps = pair_logps(ref_model, pairs, pad_id=aligned.pad_id)[0] if ref_model is not None else None
        beta = get_method(method).reward_beta(cfg.align)
        out["pairs"] = reward_accuracy(model, pairs, beta=beta, reference_logps=ref_logps, pad_id=aligned.pad_id)
        if ref_model is not None:
            out["pairs"].update(completion_kl(model, ref_model, pairs, pad_id=aligned.pad_id))
    if against is not None and aligned.eval_records:
        other, other_tokenizer = load_policy(against, device)  # each model answers with its own tokenizer
        rate = win_rate_from_completions(aligned.eval_records, task_completions(model, tokenizer, aligned.eval_records),
                                         task_completions(other, other_tokenizer, aligned.eval_records))
        out["win_rate"] = rate.to_dict() | {"against": str(against)}
    return out


def _eval_unpaired(model: nn.Module, aligned: AlignmentData, cfg: AlignRunConfig, reference: str | Path | None,
                   device: torch.device, tokenizer: Any, name: str) -> dict[str, Any]:
    """``trainlab eval --method kto --data UNPAIRED``: implicit rewards of desirable vs undesirable completions
    (`unpaired_rewards`), against ``--reference`` when given (else the reference-free mean log-prob)."""
    from trainlab.align.evaluate import unpaired_logps, unpaired_rewards

    out: dict[str, Any] = {"model": name, "data": aligned.info}
    ref_logps = None
    if reference is not None:
        ref_model, ref_tokenizer = load_policy(reference, device)
        check_same_tokenizer(ref_tokenizer, tokenizer, reference, "--reference")
        check_vocab(ref_model, aligned)
        ref_logps = unpaired_logps(ref_model, aligned.train, pad_id=aligned.pad_id)[0]
    beta = get_method("kto").reward_beta(cfg.align)
    out["examples"] = unpaired_rewards(model, aligned.train, beta=beta, reference_logps=ref_logps,
                                       pad_id=aligned.pad_id)
    return out

