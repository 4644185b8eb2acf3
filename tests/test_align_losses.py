"""Our preference losses against TRL's trainers: same weights, same batch, same settings.

Every loss (DPO sigmoid / cDPO / IPO / hinge / robust, ORPO, SimPO, KTO) and its gradient with
respect to every parameter must equal TRL's within 1e-5 relative in fp32. TRL is called on the
batch we built (its own tokenization is bypassed: we compare the loss computation, not the data
pipeline) through the method each trainer's ``compute_loss`` uses. Then: accumulated over K
micro-batches, each objective gives the gradient of one batch of the same pairs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _tiny import tiny_decoder

from trainlab.align.datasets import collate_preference, collate_unpaired
from trainlab.align.objectives import DPOObjective, KTOObjective, ORPOObjective, SimPOObjective
from trainlab.model.hf import HFCausalLM
from trainlab.train.loop import accumulate_gradients

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

RTOL = 1e-5
PAD = 0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (fp32) and a tiny BPE tokenizer saved together, as TRL wants to load them."""
    from trainlab.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tiny_llama")
    tok = train_tokenizer(["the cat sat on the mat", "12+35=47", "sort 3 1 2=1 2 3", "a b c d e f g"] * 20, 300)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _items(seed: int, n: int, vocab: int, *, fixed_chosen_total: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Random preference items with varying prompt / completion lengths (so padding is exercised)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        lp = int(torch.randint(2, 7, (1,), generator=g))
        lc = int(torch.randint(1, 6, (1,), generator=g)) if fixed_chosen_total is None else fixed_chosen_total - lp
        lr = int(torch.randint(1, 8, (1,), generator=g))
        items.append({"index": torch.tensor(i), "prompt": torch.randint(3, vocab, (lp,), generator=g),
                      "chosen": torch.randint(3, vocab, (lc,), generator=g),
                      "rejected": torch.randint(3, vocab, (lr,), generator=g)})
    return items


def _trl_args(cls: type, tmp: Path, **kwargs: object) -> object:
    return cls(output_dir=str(tmp), per_device_train_batch_size=2, report_to=[], use_cpu=True, bf16=False,
               logging_steps=1, save_strategy="no", **kwargs)


def _dataset() -> object:
    return datasets.Dataset.from_list([{"prompt": "12+3=", "chosen": "15", "rejected": "16"},
                                       {"prompt": "sort 3 1=", "chosen": "1 3", "rejected": "3 1"}])


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    scale = float(ref.abs().max())
    torch.testing.assert_close(ours.double(), ref.double(), rtol=RTOL, atol=RTOL * max(scale, 1e-12),
                               msg=lambda m: f"{what}: {m}")


def _compare(model: torch.nn.Module, trl_loss_fn, our_loss_fn) -> None:  # type: ignore[no-untyped-def]
    """Loss and gradients of every parameter, TRL vs ours, on the same model instance."""
    model.zero_grad(set_to_none=True)
    ref_loss = trl_loss_fn()
    ref_loss.backward()
    ref_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    loss = our_loss_fn()
    loss.backward()
    grads = _grads(model)
    _assert_close(loss.detach(), ref_loss.detach(), "loss")
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        _assert_close(g, ref_grads[name], f"grad {name}")
    assert any(float(g.abs().max()) > 0 for g in grads.values())


# ------------------------------------------------------------------------------------------- DPO


@pytest.fixture(scope="module")
def dpo_trainer(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = _trl_args(trl.DPOConfig, tmp_path_factory.mktemp("dpo"), beta=0.1)
        return trl.DPOTrainer(model=str(model_dir), args=args, train_dataset=_dataset())


@pytest.mark.parametrize(("loss_type", "beta", "smoothing", "n"), [
    ("sigmoid", 0.1, 0.0, 4), ("ipo", 0.3, 0.0, 4), ("hinge", 0.5, 0.0, 4), ("robust", 0.2, 0.15, 4),
    # cDPO: TRL 1.16 has no label smoothing for "sigmoid"; its "aot" loss is cDPO's formula applied to
    # logratios sorted over the batch, which for a single pair is exactly cDPO.
    ("cdpo", 0.2, 0.2, 1),
])
def test_dpo_matches_trl(dpo_trainer, loss_type: str, beta: float, smoothing: float, n: int) -> None:  # type: ignore[no-untyped-def]
    model = dpo_trainer.model
    model.train()
    vocab = model.config.vocab_size
    batch = collate_preference(_items(1, n, vocab), PAD)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != -100).long()}
    dpo_trainer.beta = beta
    dpo_trainer.label_smoothing = smoothing
    dpo_trainer.loss_types = ["aot" if loss_type == "cdpo" else loss_type]
    dpo_trainer.loss_weights = [1.0]
    # our reference: the same frozen reference model TRL holds, its log-probs cached in the batch
    from trainlab.align.reference import FrozenReference

    ref = FrozenReference(HFCausalLM(dpo_trainer.ref_model), copy_weights=False)
    # as the recipe caches them: pairs packed like the policy's (at step 0 both agree to the last bit,
    # so tied implicit rewards stay tied, as in TRL)
    batch["ref_logps"] = ref.logps(batch, share_prefix=True)
    ours = DPOObjective(beta=beta, loss_type="sigmoid" if loss_type == "cdpo" else loss_type,
                        label_smoothing=smoothing)
    policy = HFCausalLM(model)

    def our_loss() -> torch.Tensor:
        out = ours(policy, batch)
        return out.loss_sum / out.count

    _compare(model, lambda: dpo_trainer._compute_loss(model, inputs, return_outputs=False), our_loss)
    # the metrics TRL logs under the same names agree too
    trl_metrics = {k: v[-1] for k, v in dpo_trainer._metrics["train"].items()}
    out = ours(policy, batch)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "logits/chosen", "logits/rejected"):
        assert out.metrics[key] == pytest.approx(trl_metrics[key], rel=1e-4, abs=1e-5), key


def test_dpo_frozen_reference_equals_cached(dpo_trainer) -> None:  # type: ignore[no-untyped-def]
    from trainlab.align.reference import FrozenReference

    policy = HFCausalLM(dpo_trainer.model)
    ref = FrozenReference(HFCausalLM(dpo_trainer.ref_model), copy_weights=False)
    batch = collate_preference(_items(5, 3, dpo_trainer.model.config.vocab_size), PAD)
    frozen = DPOObjective(beta=0.1, reference=ref)(policy, batch)
    batch["ref_logps"] = ref.logps(batch, share_prefix=True)
    cached = DPOObjective(beta=0.1)(policy, batch)
    assert float(frozen.loss_sum.detach()) == pytest.approx(float(cached.loss_sum.detach()), rel=1e-6)


# ------------------------------------------------------------------------------------- ORPO, SimPO


def _split_pair_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    b = batch["input_ids"].shape[0] // 2
    out = {}
    for side, rows in (("chosen", slice(0, b)), ("rejected", slice(b, 2 * b))):
        out[f"{side}_input_ids"] = batch["input_ids"][rows]
        out[f"{side}_attention_mask"] = batch["attention_mask"][rows]
        out[f"{side}_labels"] = batch["labels"][rows]
    return out


def test_orpo_matches_trl(model_dir: Path, tmp_path: Path) -> None:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = _trl_args(ORPOConfig, tmp_path, beta=0.25, max_length=64)
        tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
        trainer = ORPOTrainer(model=str(model_dir), args=args, train_dataset=_dataset(), processing_class=tok)
    model = trainer.model
    model.train()
    # TRL averages the NLL over all chosen tokens of the batch; ours per sequence (the paper's
    # L_SFT). Equal chosen lengths (prompt + chosen, TRL's NLL includes the prompt) make them equal.
    batch = collate_preference(_items(2, 4, model.config.vocab_size, fixed_chosen_total=9), PAD)
    ours = ORPOObjective(lam=0.25, mask_prompt=False)
    policy = HFCausalLM(model)

    def our_loss() -> torch.Tensor:
        out = ours(policy, batch)
        return out.loss_sum / out.count

    _compare(model, lambda: trainer.get_batch_loss_metrics(model, _split_pair_batch(batch))[0], our_loss)
    _, trl_metrics = trainer.get_batch_loss_metrics(model, _split_pair_batch(batch))
    out = ours(policy, batch)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen"):
        assert out.metrics[key] == pytest.approx(trl_metrics[key], rel=1e-4, abs=1e-5), key


def test_simpo_matches_trl_cpo(model_dir: Path, tmp_path: Path) -> None:
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = _trl_args(CPOConfig, tmp_path, loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=0.7,
                         label_smoothing=0.1, max_length=64)
        tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
        trainer = CPOTrainer(model=str(model_dir), args=args, train_dataset=_dataset(), processing_class=tok)
    model = trainer.model
    model.train()
    batch = collate_preference(_items(3, 4, model.config.vocab_size), PAD)
    ours = SimPOObjective(beta=2.0, gamma=0.7, label_smoothing=0.1)
    policy = HFCausalLM(model)

    def our_loss() -> torch.Tensor:
        out = ours(policy, batch)
        return out.loss_sum / out.count

    _compare(model, lambda: trainer.get_batch_loss_metrics(model, _split_pair_batch(batch))[0], our_loss)


# ------------------------------------------------------------------------------------------- KTO


def _unpaired_items(seed: int, n: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    items = []
    completions = [torch.randint(3, vocab, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g)
                   for _ in range(n)]
    for i in range(n):
        items.append({"index": torch.tensor(i),
                      "prompt": torch.randint(3, vocab, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g),
                      "completion": completions[i], "kl_completion": completions[(i - 1) % n],
                      "label": torch.tensor(i % 3 != 0)})
    return items


def test_kto_matches_trl(model_dir: Path, tmp_path: Path) -> None:
    from trainlab.align.reference import FrozenReference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = _trl_args(trl.KTOConfig, tmp_path, beta=0.3, desirable_weight=1.0, undesirable_weight=1.5)
        data = datasets.Dataset.from_list([{"prompt": "1+1=", "completion": "2", "label": True},
                                           {"prompt": "1+2=", "completion": "4", "label": False}])
        trainer = trl.KTOTrainer(model=str(model_dir), args=args, train_dataset=data)
    model = trainer.model
    model.train()
    batch = collate_unpaired(_unpaired_items(4, 6, model.config.vocab_size), PAD)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != -100).long(), "KL_input_ids": batch["kl_input_ids"],
              "KL_attention_mask": batch["kl_attention_mask"],
              "KL_completion_mask": (batch["kl_labels"] != -100).long(), "label": batch["label"]}
    ref = FrozenReference(HFCausalLM(trainer.ref_model), copy_weights=False)
    ours = KTOObjective(beta=0.3, desirable_weight=1.0, undesirable_weight=1.5, reference=ref)
    policy = HFCausalLM(model)

    def our_loss() -> torch.Tensor:
        out = ours(policy, batch)
        return out.loss_sum / out.count

    _compare(model, lambda: trainer._compute_loss(model, inputs, return_outputs=False), our_loss)
    assert ours(policy, batch).metrics["kl"] == pytest.approx(trainer._metrics["train"]["kl"][-1], rel=1e-4,
                                                               abs=1e-6)


# ---------------------------------------------------------------------------- gradient accumulation


def _with_ref(batch: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch["ref_logps"] = -5 * torch.rand(batch["input_ids"].shape[0], generator=g)
    return batch


@pytest.mark.parametrize("name", ["dpo-sigmoid", "dpo-ipo", "dpo-hinge", "dpo-robust", "orpo", "orpo-prompt",
                                  "simpo", "kto"])
def test_accumulation_equals_one_batch(name: str) -> None:
    objectives = {
        "dpo-sigmoid": DPOObjective(beta=0.5, label_smoothing=0.1), "dpo-ipo": DPOObjective(loss_type="ipo"),
        "dpo-hinge": DPOObjective(beta=2.0, loss_type="hinge"),
        "dpo-robust": DPOObjective(loss_type="robust", label_smoothing=0.2),
        "orpo": ORPOObjective(lam=0.3), "orpo-prompt": ORPOObjective(lam=0.3, mask_prompt=False),
        "simpo": SimPOObjective(beta=2.0, gamma=0.3), "kto": KTOObjective(beta=0.3, kl=False),
    }
    objective = objectives[name]
    model = tiny_decoder(0)
    if name == "kto":
        items = _unpaired_items(7, 8, 48)
        full = collate_unpaired(items, PAD)
        full["ref_logps"] = -3 * torch.rand(8, generator=torch.Generator().manual_seed(1))
        parts = [collate_unpaired(items[i:i + 2], PAD) for i in range(0, 8, 2)]
        for k, part in enumerate(parts):
            part["ref_logps"] = full["ref_logps"][2 * k:2 * k + 2]
    else:
        items = _items(7, 8, 48)
        ref = -5 * torch.rand(8, 2, generator=torch.Generator().manual_seed(1))
        for it, r in zip(items, ref, strict=True):
            it["ref_logps"] = r
        full = collate_preference(items, PAD)
        parts = [collate_preference(items[i:i + 2], PAD) for i in range(0, 8, 2)]
    cpu = torch.device("cpu")
    model.zero_grad(set_to_none=True)
    one = accumulate_gradients(model, objective, [full], device=cpu)
    g_one = _grads(model)
    model.zero_grad(set_to_none=True)
    acc = accumulate_gradients(model, objective, parts, device=cpu)
    g_acc = _grads(model)
    assert one.count == acc.count == 8
    torch.testing.assert_close(acc.loss_sum, one.loss_sum, rtol=1e-5, atol=1e-6)
    for n, g in g_one.items():
        torch.testing.assert_close(g_acc[n], g, rtol=1e-4, atol=1e-6 * max(float(g.abs().max()), 1e-6))
