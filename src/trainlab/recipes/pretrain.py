"""Pre-training recipe: data -> decoder -> the one training loop -> a Hugging Face model folder.

``run_pretrain(cfg, out_dir)`` trains the decoder from scratch on the embedded corpus (or the
user's text), evaluating validation loss as it goes, and leaves in ``out_dir``:

- ``model/``: the trained model in the Hugging Face Llama format, with its tokenizer;
- ``metrics.jsonl`` and ``config.json`` written by the trainer (its resumable checkpoint is removed
  once the model is saved, unless ``train.keep_checkpoint``);
- ``summary.json``: what the run measured (final losses, unigram entropy, tokens/s, ...).

A checkpoint belongs to its run: its identity is the model shape and the tokenized training data,
and resuming with another shape or other data is refused unless ``force``.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from trainlab.config import RunConfig, dump_config
from trainlab.data.datasets import collate_padded
from trainlab.data.embedded import PretrainingData, build_pretraining_data
from trainlab.evaluation import validation_loss
from trainlab.model.decoder import Decoder
from trainlab.train.checkpoint import ResumeMode, check_run_dirs, fingerprint_json, fingerprint_tensor
from trainlab.train.data import StepBatcher
from trainlab.train.loop import Trainer, TrainResult
from trainlab.train.objectives import CausalLMObjective
from trainlab.utils import seed_everything, write_json

log = logging.getLogger(__name__)


def build_decoder(cfg: RunConfig, vocab_size: int) -> Decoder:
    """The decoder of ``cfg.model`` with the tokenizer's vocabulary, seeded by ``cfg.train.seed``."""
    mcfg = cfg.model if cfg.model.vocab_size else cfg.model.model_copy(update={"vocab_size": vocab_size})
    if mcfg.vocab_size < vocab_size:
        from trainlab.errors import UserError

        raise UserError(f"invalid value = {mcfg.vocab_size}: smaller than the tokenizer's vocabulary "
                        f"({vocab_size})", key="model.vocab_size")
    if mcfg.max_seq_len < cfg.data.seq_len:
        mcfg = mcfg.model_copy(update={"max_seq_len": cfg.data.seq_len})
    seed_everything(cfg.train.seed)
    return Decoder(mcfg)


def pretraining_trainer(cfg: RunConfig, out_dir: str | Path, data: PretrainingData | None = None, *,
                        quiet: bool = False, callbacks: list[Any] | None = None) -> tuple[Trainer, PretrainingData]:
    """Everything set up for pre-training, not yet run (labs use this to vary one thing)."""
    data = data if data is not None else build_pretraining_data(cfg.data)
    model = build_decoder(cfg, len(data.tokenizer))
    pad_id = data.tokenizer.pad_token_id
    batcher = StepBatcher(data.train, cfg.train.batch_size, cfg.train.grad_accum,
                          partial(collate_padded, pad_id=pad_id), cfg.train.seed)
    eval_fn = partial(_eval, data=data, cfg=cfg)
    run_config = dump_config(cfg) | {"model": model.config.model_dump(mode="json"), "data_info": data.info}
    identity = {"model": fingerprint_json(model.config.model_dump(mode="json")),
                "data": fingerprint_tensor(data.train.windows)}
    trainer = Trainer(model, CausalLMObjective(), batcher, cfg.train, out_dir, eval_fn=eval_fn,
                      run_config=run_config, quiet=quiet, callbacks=callbacks, identity=identity)
    return trainer, data


def _eval(model: Decoder, *, data: PretrainingData, cfg: RunConfig) -> dict[str, float]:
    return {"val_loss": validation_loss(model, data.val, batch_size=cfg.train.batch_size,
                                        max_batches=cfg.train.eval_batches,
                                        pad_id=data.tokenizer.pad_token_id)}


def summarize(result: TrainResult, data: PretrainingData, model: Decoder, model_dir: Path) -> dict[str, Any]:
    evals = [e for e in result.eval_history if "val_loss" in e]
    return {
        "model_dir": str(model_dir),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "tokens": result.tokens,
        "final_train_loss": result.final_loss,
        "final_val_loss": evals[-1]["val_loss"] if evals else float("nan"),
        "unigram_entropy_nats": data.info["unigram_entropy_nats"],
        "tokens_per_s": result.tokens_per_s,
        "train_time_s": result.train_time_s,
        "wall_time_s": result.wall_time_s,
        "skipped_steps": result.skipped_steps,
        "stopped_reason": result.stopped_reason,
        "parameters": model.num_parameters(),
        "eval_history": evals,
        "data": data.info,
        "metrics_path": str(result.metrics_path),
    }


def run_pretrain(cfg: RunConfig, out_dir: str | Path, *, resume: ResumeMode = False, quiet: bool = False,
                 data: PretrainingData | None = None, force: bool = False) -> dict[str, Any]:
    """Train, save ``out_dir/model`` (HF format + tokenizer) and ``out_dir/summary.json``.

    ``resume``: True (a checkpoint must exist), ``"or_start"`` or False, as `Trainer.fit`.
    Under torchrun (``--nproc N``) every rank trains its share (``cfg.dist``); rank 0 saves the model
    and the summary, and every rank returns the summary.
    """
    from trainlab.distributed import env as dist_env

    ctx = dist_env.init(cfg.dist, cfg.train.device)
    out = Path(out_dir)
    check_run_dirs(out, resume)  # before the data is built
    trainer, data = pretraining_trainer(cfg, out, data, quiet=quiet)
    result = trainer.fit(resume=resume, force=force)
    model: Decoder | None = trainer.final_model()  # type: ignore[assignment]  # rank 0: full weights
    summary: dict[str, Any] = {}
    if model is not None:
        model_dir = model.save_pretrained(out / "model", tokenizer=data.tokenizer)
        summary = summarize(result, data, model, Path(model_dir))
        if trainer.epoch_info is not None:
            summary["epochs"] = trainer.epoch_info
        if ctx is not None:
            summary["dist"] = {"world": ctx.world, "strategy": ctx.strategy, "backend": ctx.backend}
        write_json(out / "summary.json", summary)
    if ctx is not None:
        summary = ctx.broadcast_object(summary)
    trainer.release_checkpoint()
    return summary
