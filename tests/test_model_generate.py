"""Batched generation: cache vs recomputation, left padding, eos, sampling."""

from __future__ import annotations

import pytest
import torch

from trainlab.config import ModelConfig
from trainlab.errors import UserError
from trainlab.model import Decoder, generate, sample_next_token

PAD = 0


@pytest.fixture(scope="module")
def model() -> Decoder:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=41, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, init_std=0.2)
    return Decoder(cfg).eval()


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, t - len(p) :] = torch.tensor(p)
        mask[i, t - len(p) :] = 1
    return ids, mask


PROMPTS = [[5, 9, 3, 7, 1, 2], [4, 8], [11, 12, 13, 14]]


def test_cached_greedy_equals_recomputation(model):
    ids, mask = left_pad(PROMPTS)
    cached = model.generate(ids, mask, max_new_tokens=12)
    recomputed = model.generate(ids, mask, max_new_tokens=12, use_cache=False)
    assert cached.shape == (3, 6 + 12)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached[:, :6], ids)


def test_left_padded_batch_equals_each_prompt_alone(model):
    ids, mask = left_pad(PROMPTS)
    batch = model.generate(ids, mask, max_new_tokens=10)
    for i, p in enumerate(PROMPTS):
        alone = model.generate(torch.tensor([p]), max_new_tokens=10)
        assert batch[i, ids.shape[1] :].tolist() == alone[0, len(p) :].tolist()


def test_eos_stops_rows_and_pads(model):
    ids, mask = left_pad(PROMPTS)
    free = model.generate(ids, mask, max_new_tokens=8)[:, ids.shape[1] :]
    eos = int(free[0, 2])  # make row 0's third generated token the eos
    out = model.generate(ids, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=40)[:, ids.shape[1] :]
    for row_free, row in zip(free.tolist(), out.tolist(), strict=True):
        if eos in row_free:
            stop = row_free.index(eos)
            assert row[: stop + 1] == row_free[: stop + 1]
            assert all(t == 40 for t in row[stop + 1 :])
        else:
            assert row == row_free[: len(row)]


def test_stops_early_when_all_rows_finish(model):
    ids = torch.tensor([[3, 4, 5]])
    first = int(model.generate(ids, max_new_tokens=1)[0, -1])
    out = model.generate(ids, max_new_tokens=20, eos_token_id=[first, 999])
    assert out.shape == (1, 4) and int(out[0, -1]) == first


def test_sampling_is_reproducible_and_respects_top_k(model):
    ids, mask = left_pad(PROMPTS)

    def run(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return model.generate(ids, mask, max_new_tokens=6, temperature=1.0, generator=g, **kw)

    assert torch.equal(run(1), run(1))
    greedy = model.generate(ids, mask, max_new_tokens=6)
    assert torch.equal(run(2, top_k=1), greedy)
    assert torch.equal(run(3, top_p=1e-6), greedy)


def test_sample_next_token_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).log_softmax(-1)
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next_token(logits, temperature=1.0, top_k=2, generator=g)) for _ in range(200)}
    assert draws == {2, 3}
    probs = logits.exp()[0]  # ~[0.03, 0.09, 0.24, 0.64]
    assert probs[3] < 0.7 < probs[3] + probs[2]
    draws = {int(sample_next_token(logits, temperature=1.0, top_p=0.7, generator=g)) for _ in range(200)}
    assert draws == {2, 3}
    assert int(sample_next_token(logits)) == 3


def test_bad_arguments(model):
    ids = torch.tensor([[1, 2, 0]])
    with pytest.raises(UserError, match="left-padded"):
        generate(model, ids, torch.tensor([[1, 1, 0]]), max_new_tokens=2)
    with pytest.raises(UserError, match="top_p"):
        generate(model, ids, max_new_tokens=2, top_p=0.0)
    with pytest.raises(UserError, match="temperature"):
        generate(model, ids, max_new_tokens=2, temperature=-1)
    assert torch.equal(generate(model, ids, max_new_tokens=0), ids)


def test_sampling_params_are_the_one_signature(model):
    """`generate` is defined once: SamplingParams holds the arguments, every model inherits one method."""
    import inspect

    from trainlab.model import GenerateMixin, HFCausalLM, SamplingParams
    from trainlab.model.protocol import CausalLM

    assert Decoder.generate is GenerateMixin.generate and HFCausalLM.generate is GenerateMixin.generate
    assert "max_new_tokens" not in inspect.signature(CausalLM.generate).parameters
    ids, mask = left_pad(PROMPTS)
    params = SamplingParams(max_new_tokens=5, eos_token_id=7, pad_token_id=40)
    assert params.eos_token_id == (7,) and params.pad_id == 40
    by_params = model.generate(ids, mask, params)
    assert torch.equal(by_params, model.generate(ids, mask, max_new_tokens=5, eos_token_id=[7], pad_token_id=40))
    assert torch.equal(by_params, generate(model, ids, mask, params))
    # keywords given with params replace its fields
    assert model.generate(ids, mask, params, max_new_tokens=2).shape[1] <= ids.shape[1] + 2
    with pytest.raises(TypeError, match="max_tokens"):
        model.generate(ids, mask, max_tokens=3)
    with pytest.raises(TypeError, match="max_new_tokens"):
        model.generate(ids, mask)
    with pytest.raises(UserError, match="top_k"):
        SamplingParams(max_new_tokens=1, top_k=-1)
    assert SamplingParams(max_new_tokens=1).pad_id == 0 and SamplingParams(max_new_tokens=1, eos_token_id=5).pad_id == 5
