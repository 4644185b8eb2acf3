"""trainlab.train: the training loop, its objectives, data stepping, checkpoints and precision.

Typical use (pretraining)::

    seed_everything(cfg.train.seed)
    model = Decoder(cfg.model)
    batcher = StepBatcher.from_config(train_dataset, cfg.train)
    trainer = Trainer(model, CausalLMObjective(), batcher, cfg.train, out_dir,
                      eval_fn=my_eval, run_config=dump_config(cfg))
    result = trainer.fit(resume="or_start")  # continue if out_dir has a checkpoint, else start
    ...                                          # save the model, then:
    trainer.release_checkpoint()                 # unless cfg.keep_checkpoint
"""

from trainlab.train.amp import LossScaler, NoLossScaler, TorchLossScaler, autocast_context, build_loss_scaler
from trainlab.train.callbacks import Callback
from trainlab.train.checkpoint import CHECKPOINT_NAME, CheckpointManager, load_checkpoint, save_checkpoint
from trainlab.train.data import StepBatcher, StepSource
from trainlab.train.device import resolve_device
from trainlab.train.loop import (
    StepHooks,
    StepOutcome,
    StepStats,
    Trainer,
    TrainResult,
    accumulate_gradients,
    optimizer_step,
)
from trainlab.train.metrics import METRICS_NAME, read_metrics
from trainlab.train.objectives import Batch, CausalLMObjective, Objective, ObjectiveOutput

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "Batch",
    "Callback",
    "CausalLMObjective",
    "CheckpointManager",
    "LossScaler",
    "NoLossScaler",
    "Objective",
    "ObjectiveOutput",
    "StepBatcher",
    "StepHooks",
    "StepOutcome",
    "StepSource",
    "StepStats",
    "TorchLossScaler",
    "TrainResult",
    "Trainer",
    "accumulate_gradients",
    "autocast_context",
    "build_loss_scaler",
    "load_checkpoint",
    "optimizer_step",
    "read_metrics",
    "resolve_device",
    "save_checkpoint",
]
