"""StepBatcher: seeded per-epoch order, no dropped examples, exact resume from (epoch, position)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from trainlab.errors import UserError
from trainlab.train.data import StepBatcher, StepSource


def _ids(step: list[dict[str, torch.Tensor]]) -> list[list[int]]:
    return [mb["x"].tolist() for mb in step]


def _dataset(n: int) -> list[dict[str, torch.Tensor]]:
    return [{"x": torch.tensor(i)} for i in range(n)]


def test_order_is_the_seeded_permutation_and_wraps_epochs() -> None:
    b = StepBatcher(_dataset(10), batch_size=3, grad_accum=2, seed=7)
    assert isinstance(b, StepSource)
    stream = [i for _ in range(5) for mb in _ids(b.next_step()) for i in mb]  # 30 indices = 3 epochs
    for e in range(3):
        perm = torch.randperm(10, generator=torch.Generator().manual_seed(7 + e)).tolist()
        assert stream[10 * e: 10 * (e + 1)] == perm
    assert Counter(stream) == {i: 3 for i in range(10)}  # nothing dropped at epoch edges
    assert (b.epoch, b.position) == (3, 0)
    assert stream[:10] != stream[10:20]  # each epoch is reshuffled


def test_micro_batches_have_full_size_across_epoch_edges() -> None:
    b = StepBatcher(_dataset(5), batch_size=2, grad_accum=2, seed=0)
    for _ in range(7):
        assert [len(mb) for mb in _ids(b.next_step())] == [2, 2]


def test_split_does_not_change_a_steps_examples() -> None:
    one = StepBatcher(_dataset(20), batch_size=8, grad_accum=1, seed=3)
    four = StepBatcher(_dataset(20), batch_size=2, grad_accum=4, seed=3)
    for _ in range(6):
        flat_one = [i for mb in _ids(one.next_step()) for i in mb]
        flat_four = [i for mb in _ids(four.next_step()) for i in mb]
        assert flat_one == flat_four


def test_resume_from_state_sees_the_same_batches() -> None:
    a = StepBatcher(_dataset(13), batch_size=4, grad_accum=2, seed=1)
    for _ in range(3):
        a.next_step()
    state = a.state_dict()
    expected = [_ids(a.next_step()) for _ in range(5)]
    b = StepBatcher(_dataset(13), batch_size=4, grad_accum=2, seed=1)
    b.load_state_dict(state)
    assert [_ids(b.next_step()) for _ in range(5)] == expected


def test_resume_rejects_a_different_dataset_or_seed() -> None:
    state = StepBatcher(_dataset(13), 4, 1, seed=1).state_dict()
    with pytest.raises(UserError, match="13 examples"):
        StepBatcher(_dataset(12), 4, 1, seed=1).load_state_dict(state)
    with pytest.raises(UserError, match="seed"):
        StepBatcher(_dataset(13), 4, 1, seed=2).load_state_dict(state)


def test_empty_dataset_is_a_user_error() -> None:
    with pytest.raises(UserError, match="empty"):
        StepBatcher([], 4)
