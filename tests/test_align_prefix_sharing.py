"""Prefix sharing (`trainlab.align.prefix_sharing`) gives the log-probs and gradients of two rows per pair.

One case table: transformers architectures x attention implementations x label layouts, each through the
same check against `sequence_logps` on the unpacked rows (the reference: every row alone).
"""

from __future__ import annotations

import pytest
import torch
from _hf_tiny import ARCHS, make_model, make_tokenizer
from _tiny import tiny_decoder

from trainlab.align.datasets import collate_preference
from trainlab.align.logprobs import sequence_logps
from trainlab.align.prefix_sharing import custom_mask_limit, pack_pairs, pair_sequence_logps, shares_prefix
from trainlab.model.hf import HFCausalLM


def _pairs(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Pairs with different prompt and completion lengths; one shares tokens past the prompt, one shares
    nothing (its prompt is empty), one has equal sides but for the last token."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> torch.Tensor:
        return torch.randint(3, vocab, (n,), generator=g)

    items = []
    for i, (p, c, r) in enumerate([(7, 5, 9), (3, 11, 2), (12, 4, 4), (5, 6, 6)]):
        prompt, chosen, rejected = ids(p), ids(c), ids(r)
        if i == 2:  # the first two completion tokens agree: shared past the prompt
            rejected[:2] = chosen[:2]
        if i == 3:  # identical but for the last token
            rejected = chosen.clone()
            rejected[-1] = (chosen[-1] + 1 - 3) % (vocab - 3) + 3
        items.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "index": torch.tensor(i)})
    items.append({"prompt": ids(0), "chosen": ids(4), "rejected": ids(5), "index": torch.tensor(4)})
    items[-1]["rejected"][0] = (items[-1]["chosen"][0] + 1 - 3) % (vocab - 3) + 3  # no common first token
    return collate_preference(items, pad_id=0)


def _labels(batch: dict[str, torch.Tensor], layout: str) -> torch.Tensor:
    if layout == "completion":
        return batch["labels"]
    full = batch["labels"].clone()  # ORPO as TRL: chosen rows scored on the prompt too
    b = full.shape[0] // 2
    full[:b] = torch.where(batch["attention_mask"][:b].bool(), batch["input_ids"][:b], torch.full_like(full[:b], -100))
    return full


def _hf(arch: str, attn: str) -> HFCausalLM:
    model = make_model(arch, make_tokenizer("gpt2" if arch == "gpt2" else "llama"), layers=2)
    model.config._attn_implementation = attn
    model.eval()  # dropout off (trainlab disables it for training as TRL does)
    return HFCausalLM(model)


def _check_same(model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    ref = sequence_logps(model, batch["input_ids"], labels, batch["attention_mask"])
    (ref.sum.sum() + ref.mean.sum()).backward()
    ref_grads = [p.grad.clone() for p in params]
    model.zero_grad()
    got = pair_sequence_logps(model, batch["input_ids"], labels, batch["attention_mask"])
    (got.sum.sum() + got.mean.sum()).backward()
    torch.testing.assert_close(got.sum, ref.sum, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.mean, ref.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.token_logps, ref.token_logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.token_logit_mean, ref.token_logit_mean, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.rows, ref.rows) and torch.equal(got.mask, ref.mask)
    assert torch.equal(got.n_tokens, ref.n_tokens)
    for p, g in zip(params, ref_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layout", ["completion", "prompt_too"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_pairs_equal_two_rows(arch: str, attn: str, layout: str) -> None:
    torch.manual_seed(0)
    model = _hf(arch, attn)
    assert custom_mask_limit(model) > 0
    batch = _pairs(model.config.vocab_size)
    _check_same(model, batch, _labels(batch, layout))


def test_pack_layout() -> None:
    batch = _pairs(300)
    packed = pack_pairs(batch["input_ids"], batch["attention_mask"])
    assert packed is not None
    n = batch["attention_mask"].sum(1)
    b = n.shape[0] // 2
    # prompts 7, 3, 12 (+2 shared completion tokens), 5 (+5: all but the last), 0 (nothing shared)
    assert packed.shared.tolist() == [7, 3, 14, 10, 0]
    assert packed.lengths.tolist() == (n[:b] + n[b:] - packed.shared).tolist()
    # the rejected row's own tokens follow the chosen row's, positions restarting after the shared part
    i = 0
    s, nc = int(packed.shared[i]), int(n[i])
    own = batch["input_ids"][b + i, s:int(n[b + i])]
    assert torch.equal(packed.input_ids[i, nc:nc + own.numel()], own)
    assert packed.position_ids[i, nc].item() == s
    allowed = packed.allowed[i, 0]
    assert not allowed[nc, s:nc].any() and allowed[nc, :s].all()  # rejected sees the prompt, not the chosen side
    assert batch["input_ids"].shape[1] * 2 * b > int(packed.lengths.sum())


def test_nothing_shared_or_left_padding_falls_back() -> None:
    ids = torch.tensor([[5, 6, 7], [8, 6, 7]])
    assert pack_pairs(ids, torch.ones_like(ids)) is None  # no common first token
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert pack_pairs(torch.tensor([[0, 5, 6], [5, 6, 7]]), left) is None


@pytest.mark.parametrize("kv_heads", [None, 1])
@pytest.mark.parametrize("checkpointing", ["none", "full"])
def test_trainlab_decoder_packed_pairs_equal_two_rows(kv_heads: int | None, checkpointing: str) -> None:
    from trainlab.config import ModelConfig
    from trainlab.model.decoder import Decoder

    torch.manual_seed(0)
    decoder = Decoder(ModelConfig(vocab_size=300, dim=32, n_layers=2, n_heads=4, n_kv_heads=kv_heads,
                                  max_seq_len=64, checkpointing=checkpointing))
    decoder.train()
    assert custom_mask_limit(decoder) == 64 and shares_prefix(decoder)[0]
    batch = _pairs(300)
    _check_same(decoder, batch, _labels(batch, "completion"))


def test_unsupported_models_run_two_rows() -> None:
    decoder = tiny_decoder()
    decoder.config.attention = "naive"  # a backend chosen by name runs as chosen: no custom mask
    assert custom_mask_limit(decoder) == 0
    assert shares_prefix(decoder)[0] is False
    batch = _pairs(decoder.config.vocab_size)
    a = pair_sequence_logps(decoder, batch["input_ids"], batch["labels"], batch["attention_mask"])
    b = sequence_logps(decoder, batch["input_ids"], batch["labels"], batch["attention_mask"])
    assert torch.equal(a.sum, b.sum)
    flash = _hf("llama", "sdpa")
    flash.model.config._attn_implementation = "flash_attention_2"
    assert custom_mask_limit(flash) == 0


def test_sliding_window_limits_the_packed_row() -> None:
    model = _hf("mistral", "sdpa")
    model.model.config.sliding_window = 8
    assert custom_mask_limit(model) == 8
    batch = _pairs(model.config.vocab_size)  # packed rows are longer than 8: two rows per pair, still exact
    got = pair_sequence_logps(model, batch["input_ids"], batch["labels"], batch["attention_mask"])
    ref = sequence_logps(model, batch["input_ids"], batch["labels"], batch["attention_mask"])
    assert torch.equal(got.sum, ref.sum)


def _groups(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRPO's layout: left-padded prompts then right-padded completions; 2 prompts x 3 completions, then one
    row of a third prompt (a group cut by a micro-batch)."""
    from trainlab.rl.rollout import left_pad

    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 9, 4)]
    rows = [prompts[0]] * 3 + [prompts[1]] * 3 + [prompts[2]]
    prompt_ids, prompt_mask = left_pad(rows, 0, torch.device("cpu"))
    lengths = [6, 2, 8, 8, 5, 1, 3]
    comp = torch.zeros(len(rows), 8, dtype=torch.long)
    comp_mask = torch.zeros(len(rows), 8, dtype=torch.long)
    for i, n in enumerate(lengths):
        comp[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        comp_mask[i, :n] = 1
    score = comp_mask.clone()
    score[2, 6:] = 0  # a token attended to but not scored (e.g. masked out of the loss)
    return (torch.cat([prompt_ids, comp], 1), torch.cat([prompt_mask, comp_mask], 1), score)


@pytest.mark.parametrize("arch", ["decoder", "llama", "gpt2"])
def test_grpo_groups_packed_equal_their_rows(arch: str) -> None:
    from trainlab.align.prefix_sharing import group_token_logps
    from trainlab.rl.rollout import sequence_token_logps

    torch.manual_seed(0)
    model = tiny_decoder(vocab=300) if arch == "decoder" else _hf(arch, "sdpa")
    model.train() if arch == "decoder" else model.eval()
    vocab = 300 if arch == "decoder" else model.config.vocab_size
    ids, att, score = _groups(vocab)
    params = [p for p in model.parameters() if p.requires_grad]
    ref = sequence_token_logps(model, ids, att, score)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in params]
    model.zero_grad()
    got = group_token_logps(model, ids, att, score)
    assert got is not None
    got.sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(got == 0, ref == 0)  # the same tokens scored
    for p, g in zip(params, ref_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sequence_token_logps(model, ids, att, score, share_prefix=True), got, rtol=0, atol=0)
    # nothing to share (every prompt different) or no custom mask: None, and the rows are scored as they are
    assert group_token_logps(model, ids[[0, 3, 6]], att[[0, 3, 6]], score[[0, 3, 6]]) is None
    naive = tiny_decoder(vocab=300)
    naive.config.attention = "naive"
    assert group_token_logps(naive, ids, att, score) is None
