"""Batches per optimizer step, in a resumable, seeded order.

`StepBatcher` reads a map-style dataset (``len`` + ``__getitem__``) as an endless stream of
indices: the concatenation of per-epoch permutations, epoch ``e`` shuffled by a
``torch.Generator`` seeded with ``seed + e``. Each optimizer step takes the next
``batch_size · grad_accum`` indices and cuts them into ``grad_accum`` micro-batches.

Consequences, all deliberate:

* Resuming needs only ``(epoch, position)``: the permutation of an epoch is a pure function of
  the seed, so a resumed run sees exactly the batches an uninterrupted one would.
* A step's examples depend on ``batch_size · grad_accum`` only, not on how they are split: one
  batch of 8 and 4 micro-batches of 2 train on the same 8 examples — which makes
  gradient-accumulation equivalence testable end to end.
* No example is dropped at an epoch boundary: a micro-batch may straddle two epochs (its tail
  comes from the next permutation), so every micro-batch has full size and every example is seen
  once per epoch.
* The order is independent of the global RNG, so model init, dropout or an eval that samples do
  not shift the data.
* Distributed data parallelism (`shard`): every rank walks the same global order and keeps its
  contiguous ``1/world`` of each micro-batch (rank ``r`` of ``w``: examples ``r·b/w .. (r+1)·b/w``
  of a micro-batch of ``b``), so ``w`` ranks together train on exactly the examples one process
  would, and the state (a global position) resumes on any world size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import default_collate

from trainlab.config import TrainConfig
from trainlab.errors import UserError
from trainlab.train.objectives import Batch

Collate = Callable[[list[Any]], Batch]


@runtime_checkable
class StepSource(Protocol):
    """What the `Trainer` needs from a batcher: one step's micro-batches, and resumable state."""

    def next_step(self) -> list[Batch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StepBatcher:
    """Yields, per optimizer step, the list of its ``grad_accum`` micro-batches (see module doc)."""

    def __init__(self, dataset: Sequence[Any], batch_size: int, grad_accum: int = 1,
                 collate: Collate | None = None, seed: int = 0) -> None:
        if batch_size < 1 or grad_accum < 1:
            raise ValueError(f"batch_size and grad_accum must be >= 1, got {batch_size}, {grad_accum}")
        self.n = len(dataset)
        if self.n == 0:
            raise UserError("the training dataset is empty")
        self.dataset = dataset
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.collate: Collate = collate if collate is not None else default_collate
        self.seed = seed
        self.rank, self.world = 0, 1
        self.epoch = 0
        self.position = 0  # index into the current epoch's permutation
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    @classmethod
    def from_config(cls, dataset: Sequence[Any], cfg: TrainConfig,
                    collate: Collate | None = None) -> StepBatcher:
        """``batch_size``, ``grad_accum`` and ``seed`` from a `TrainConfig`."""
        return cls(dataset, cfg.batch_size, cfg.grad_accum, collate, cfg.seed)

    def shard(self, rank: int, world: int) -> None:
        """Keep only rank ``rank``'s share of every micro-batch (of ``world`` equal shares)."""
        self.check_shard(self.batch_size, world)
        self.rank, self.world = rank, world

    @staticmethod
    def check_shard(batch_size: int, world: int) -> None:
        """`UserError` unless a micro-batch of ``batch_size`` splits into ``world`` equal shares."""
        if batch_size % world:
            raise UserError(f"train.batch_size={batch_size} does not split over {world} data-parallel processes: "
                            f"use a multiple of {world} (it is the global micro-batch: each process takes "
                            f"batch_size / {world})", key="train.batch_size")

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def steps_per_epoch(self) -> float:
        return self.n / self.examples_per_step

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch ``epoch``: ``randperm(n)`` from a generator seeded with ``seed + epoch``."""
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = epoch
        return self._perm

    def _take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            perm = self.permutation(self.epoch)
            chunk = perm[self.position: self.position + (k - len(out))]
            out.extend(chunk.tolist())
            self.position += len(chunk)
            if self.position >= self.n:
                self.epoch += 1
                self.position = 0
        return out

    def next_step(self) -> list[Batch]:
        """The next optimizer step's micro-batches; advances the state."""
        micro: list[Batch] = []
        for _ in range(self.grad_accum):
            idx = self._take(self.batch_size)
            if self.world > 1:
                share = self.batch_size // self.world
                idx = idx[self.rank * share:(self.rank + 1) * share]
            micro.append(self.collate([self.dataset[i] for i in idx]))
        return micro

    def __iter__(self) -> Iterator[list[Batch]]:
        while True:
            yield self.next_step()

    def state_dict(self) -> dict[str, Any]:
        # The shape is saved too so a resume with a different batch layout is caught, not
        # silently continued from a position that means something else.
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n,
                "examples_per_step": self.examples_per_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("n", self.n) != self.n:
            raise UserError(f"cannot resume: the checkpoint's dataset has {state['n']} examples, "
                            f"this one has {self.n}")
        if state.get("seed", self.seed) != self.seed:
            raise UserError(f"cannot resume: the checkpoint's data seed is {state['seed']}, "
                            f"this one is {self.seed}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
