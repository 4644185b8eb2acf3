"""CausalLMObjective: shifted next-token NLL with -100 masking, as a sum plus a count."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _tiny import VOCAB, TinyLM, pad_collate, tiny_decoder, variable_examples

from trainlab.train.objectives import CausalLMObjective, Objective, ObjectiveOutput


def _reference(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Full-vocabulary logits at every position, HF-style shift, mean CE with ignore_index."""
    logits = model(batch["input_ids"], batch["attention_mask"]).float()
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    shift_labels = batch["labels"][:, 1:].reshape(-1)
    n = int((shift_labels != -100).sum())
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum"), n


def test_matches_reference_cross_entropy() -> None:
    batch = pad_collate(variable_examples(6, seed=1))
    obj = CausalLMObjective()
    assert isinstance(obj, Objective)
    for model in (TinyLM(), tiny_decoder()):
        out = obj(model, batch)
        assert isinstance(out, ObjectiveOutput)
        ref_sum, ref_n = _reference(model, batch)
        assert out.count == ref_n == obj.count(batch)
        torch.testing.assert_close(out.loss_sum, ref_sum, rtol=1e-5, atol=1e-5)
        assert 0.0 <= out.metrics["token_acc"] <= 1.0


def test_labels_shift_by_one_and_padding_is_ignored() -> None:
    # One example, known targets: position t is scored on labels[t+1]; -100 positions never count.
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0]]),
             "labels": torch.tensor([[-100, 6, 7, -100]])}
    model = TinyLM()
    out = CausalLMObjective()(model, batch)
    logp = torch.log_softmax(model(batch["input_ids"]).float(), -1)
    expected = -(logp[0, 0, 6] + logp[0, 1, 7])
    assert out.count == 2
    torch.testing.assert_close(out.loss_sum, expected)


def test_logits_are_fp32_under_bf16_autocast() -> None:
    batch = pad_collate(variable_examples(4, seed=2))
    model = tiny_decoder()
    obj = CausalLMObjective()
    fp32 = obj(model, batch).loss_sum
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj(model, batch)
    assert out.loss_sum.dtype == torch.float32
    # bf16 matmuls inside the model perturb the hidden states a little, but the loss stays close
    torch.testing.assert_close(out.loss_sum, fp32, rtol=2e-2, atol=0.0)


def test_fully_masked_batch_counts_zero_and_backprops() -> None:
    batch = pad_collate(variable_examples(2, seed=3))
    batch["labels"].fill_(-100)
    model = TinyLM()
    obj = CausalLMObjective()
    out = obj(model, batch)
    assert out.count == 0 == obj.count(batch) and out.metrics == {}
    assert float(out.loss_sum.detach()) == 0.0
    out.loss_sum.backward()  # an empty sum is still part of the graph: zero, not missing, grads
    assert model.mix.weight.grad is not None and not model.mix.weight.grad.any()


def test_chunked_logits_give_the_same_loss_grads_and_accuracy(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import trainlab.train.token_logprobs as tl

    batch = pad_collate(variable_examples(6, seed=4))

    def run(obj: CausalLMObjective, dtype: torch.dtype = torch.float32) -> tuple[ObjectiveOutput, list[torch.Tensor]]:
        model = tiny_decoder().to(dtype)
        out = obj(model, batch)
        out.loss_sum.backward()
        return out, [p.grad.clone() for p in model.parameters()]

    plain, plain_grads = run(CausalLMObjective())
    monkeypatch.setattr(tl, "AUTO_CHUNK_BYTES", 4 * VOCAB * 5)  # automatic: 5 rows of the tiny vocabulary
    assert tl.resolve_chunk(-1, plain.count, VOCAB) == 5
    for obj in (CausalLMObjective(chunk_size=3), CausalLMObjective(chunk_size=-1)):
        out, grads = run(obj)
        assert out.count == plain.count and out.metrics["token_acc"] == plain.metrics["token_acc"]
        torch.testing.assert_close(out.loss_sum, plain.loss_sum, rtol=1e-6, atol=1e-5)
        for g, ref in zip(grads, plain_grads, strict=True):
            torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)
    # fp64 stays fp64 (the exactness references), chunked or not
    assert run(CausalLMObjective(chunk_size=3), torch.float64)[0].loss_sum.dtype == torch.float64
