"""trainlab.distributed: the one training loop on many processes (torchrun, DDP, FSDP2, ...).

``trainlab pretrain --nproc 2 dist.strategy=fsdp`` (or ``torchrun --nproc_per_node 2 -m trainlab
pretrain dist.strategy=fsdp``) runs the same `trainlab.train.Trainer` and the same
`trainlab.train.optimizer_step` as one process; `env` says where a process sits (`DistContext`),
`strategy` how the model is wrapped, how micro-steps skip communication, how the global gradient
norm is taken and how state is gathered or checkpointed (`checkpoint`: torch.distributed.checkpoint).
"""

from trainlab.distributed.env import DistContext, current, init, is_main, launched, shutdown
from trainlab.distributed.strategy import Strategy, build_strategy, register_strategy, strategy_names

__all__ = ["DistContext", "Strategy", "build_strategy", "current", "init", "is_main", "launched",
           "register_strategy", "shutdown", "strategy_names"]
