"""Rollouts: groups are contiguous, the completion mask stops after EOS, the recomputed log-probs are
the sampler's (a full forward of the same sequences, checked against the model's own logits)."""

from __future__ import annotations

import torch

from tests._tiny import tiny_decoder
from trainlab.model.generate import SamplingParams
from trainlab.rl.rollout import completion_logps, completion_mask_from, rollout


def test_completion_mask_includes_first_eos_only() -> None:
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    mask, eos = completion_mask_from(ids, [2])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert eos.tolist() == [True, False, True]


def test_rollout_groups_masks_and_logps() -> None:
    model = tiny_decoder(0)
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11]]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, eos_token_id=[1, 2], pad_token_id=0)
    gen = torch.Generator().manual_seed(0)
    ref = tiny_decoder(1)
    r = rollout(model, prompts, params, group_size=4, generator=gen, reference=ref)
    assert r.n == 12 and r.group_size == 4
    # rows p*G..p*G+G-1 are prompt p (left-padded)
    for p, prompt in enumerate(prompts):
        for g in range(4):
            row = r.prompt_ids[p * 4 + g][r.prompt_mask[p * 4 + g].bool()]
            assert row.tolist() == prompt
    # after the mask ends there is only padding; a row with EOS ends exactly at its EOS
    for i in range(r.n):
        n = int(r.lengths[i])
        assert (r.completion_ids[i, n:] == 0).all()
        if r.eos[i]:
            assert int(r.completion_ids[i, n - 1]) in (1, 2)
    # the old log-probs: log softmax of the full forward's logits at the same positions
    logits = model(r.sequences, r.attention_mask).float()
    p_len = r.prompt_ids.shape[1]
    lp = torch.log_softmax(logits[:, p_len - 1:-1], -1).gather(-1, r.completion_ids[..., None]).squeeze(-1)
    lp = lp * r.completion_mask
    assert r.old_logps is not None and r.ref_logps is not None
    torch.testing.assert_close(r.old_logps, lp, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(r.ref_logps, r.old_logps)
    # differentiable, and equal to the no-grad recomputation
    out = completion_logps(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), r.old_logps)


def test_rollout_batched_equals_one_batch() -> None:
    model = tiny_decoder(0)
    prompts = [[3, 4, 5], [6, 7]]
    params = SamplingParams(max_new_tokens=5, temperature=0.0, eos_token_id=2, pad_token_id=0)
    a = rollout(model, prompts, params, group_size=2)
    b = rollout(model, prompts, params, group_size=2, batch_size=3)
    assert torch.equal(a.completion_mask, b.completion_mask)
    torch.testing.assert_close(a.old_logps, b.old_logps)
