"""Reward model: the saved folder is transformers' sequence classification (same scores), and the
Bradley-Terry loss and its gradients equal TRL 1.16 RewardTrainer.compute_loss on the same batch."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _hf_tiny import hf_model_dir
from _tiny import tiny_decoder

from trainlab.align.datasets import collate_preference
from trainlab.model.hf_export import to_hf_name
from trainlab.rl.reward_model import (
    RewardObjective,
    last_token_index,
    load_reward_model,
    reward_model_from_decoder,
    save_reward_model,
)


def _auto_seqcls(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32)
    assert model.config.num_labels == 1
    return model


def _pairs(vocab: int, pad: int, n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A preference batch of ``n`` pairs with prompts and completions of different lengths (no pad id inside)."""
    g = torch.Generator().manual_seed(seed)

    def ids(k: int) -> torch.Tensor:
        x = torch.randint(3, vocab, (k,), generator=g)
        return torch.where(x == pad, x + 1, x)

    items = [{"index": torch.tensor(i), "prompt": ids(2 + i), "chosen": ids(3 + (i % 2)), "rejected": ids(2 + 2 * i)}
             for i in range(n)]
    return collate_preference(items, pad_id=pad)


def test_last_token_index_is_transformers_rule() -> None:
    ids = torch.tensor([[5, 6, 0, 0], [0, 0, 7, 8], [4, 4, 4, 4], [0, 0, 0, 0]])
    assert last_token_index(ids, 0).tolist() == [1, 3, 3, 0]
    assert last_token_index(ids, None).tolist() == [3, 3, 3, 3]


def test_decoder_reward_model_saves_as_llama_seqcls_with_the_same_scores(tmp_path: Path) -> None:
    rm = reward_model_from_decoder(tiny_decoder(0), pad_token_id=0)
    out = save_reward_model(rm, tmp_path / "rm")
    hf = _auto_seqcls(out)
    assert type(hf).__name__ == "LlamaForSequenceClassification"
    assert hf.config.pad_token_id == 0
    batch = _pairs(48, pad=0, n=3)
    ours = rm(batch["input_ids"], batch["attention_mask"])
    theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_hf_causal_lm_becomes_a_reward_model_that_round_trips(tmp_path: Path) -> None:
    src = hf_model_dir(tmp_path / "gpt2", "gpt2", positions=64)
    rm, tok = load_reward_model(src)
    assert rm.kind == "hf" and rm.pad_token_id == tok.eos_token_id  # GPT-2 has no pad: TRL's eos
    out = save_reward_model(rm, tmp_path / "rm", tok)
    hf = _auto_seqcls(out)
    assert type(hf).__name__ == "GPT2ForSequenceClassification" and hf.config.pad_token_id == tok.eos_token_id
    rm.eval()
    hf.eval()
    batch = _pairs(len(tok), pad=tok.eos_token_id)
    ours = rm(batch["input_ids"], batch["attention_mask"])
    theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    loaded, _ = load_reward_model(out)  # a saved reward model loads as itself
    loaded.eval()
    torch.testing.assert_close(loaded(batch["input_ids"], batch["attention_mask"]), theirs, rtol=1e-5, atol=1e-6)


def _trl_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], center: float | None) -> torch.Tensor:
    """TRL 1.16's own ``RewardTrainer.compute_loss`` on ``batch``, with a stand-in for the trainer's state."""
    from trl.trainer.reward_trainer import RewardTrainer

    ident = SimpleNamespace(gather_for_metrics=lambda t: t, gather=lambda t: t)
    trainer = SimpleNamespace(model=model, args=SimpleNamespace(center_rewards_coefficient=center),
                              accelerator=ident, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                              _total_train_tokens=0, _tp_size=1)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "margin") if k in batch}
    return RewardTrainer.compute_loss(trainer, model, inputs)  # type: ignore[arg-type]


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize(("backbone", "margin", "center"), [
    ("decoder", False, None), ("decoder", True, 0.01), ("gpt2", False, 0.01), ("gpt2", True, None)])
def test_loss_and_gradients_equal_trl_reward_trainer(backbone: str, margin: bool, center: float | None, share: bool,
                                                     tmp_path: Path) -> None:
    if backbone == "decoder":
        rm = reward_model_from_decoder(tiny_decoder(1), pad_token_id=0)
        pad, vocab = 0, 48
        names = {n: "score.weight" if n == "score.weight" else to_hf_name(n.removeprefix("backbone."))
                 for n, _ in rm.named_parameters()}
        out = save_reward_model(rm, tmp_path / "rm")
    else:
        rm, tok = load_reward_model(hf_model_dir(tmp_path / "gpt2", "gpt2", positions=64))
        pad, vocab = tok.eos_token_id, len(tok)
        names = {n: n.removeprefix("seqcls.") for n, _ in rm.named_parameters()}
        out = save_reward_model(rm, tmp_path / "rm", tok)
    theirs = _auto_seqcls(out)
    for m in (rm, theirs):  # dropout off on both sides (TRL's disable_dropout)
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    batch = _pairs(vocab, pad, n=4, seed=3)
    if margin:
        batch["margin"] = torch.tensor([0.5, 0.0, 1.0, -0.25])
    objective = RewardObjective(center_rewards_coefficient=center, share_prefix=share)
    if share:  # each pair's prompt computed once (one packed row): the same rewards as TRL's two rows
        from trainlab.rl.reward_model import pair_rewards_packed

        packed = pair_rewards_packed(rm, batch["input_ids"], batch["attention_mask"])
        assert packed is not None
        torch.testing.assert_close(packed, rm(batch["input_ids"], batch["attention_mask"]), rtol=1e-5, atol=1e-5)
    res = objective(rm, batch)
    assert res.count == 4
    (res.loss_sum / res.count).backward()
    ref = _trl_loss(theirs, batch, center)
    ref.backward()
    torch.testing.assert_close(res.loss_sum / res.count, ref.detach(), rtol=1e-5, atol=1e-6)
    hf_params = dict(theirs.named_parameters())
    for name, p in rm.named_parameters():
        if p.grad is None:
            continue
        torch.testing.assert_close(p.grad, hf_params[names[name]].grad, rtol=1e-4, atol=1e-6, msg=name)
    assert rm.head.weight.grad is not None and rm.head.weight.grad.abs().sum() > 0


# ---- trainlab rm: the command and the recipe ------------------------------------------------------


@pytest.fixture(scope="module")
def base_model() -> Path:
    from trainlab.recipes.base_model import embedded_base_model

    return embedded_base_model("tiny")


def test_trainlab_rm_output_loads_with_auto_model_for_sequence_classification(
        base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from trainlab.cli import run_cli

    code = run_cli(["rm", "--preset", "tiny", "--model", str(base_model), "--out", str(tmp_path / "rm"),
                    "--max-steps", "2", "--json", "train.device=cpu"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 2 and result["kind"] == "trainlab" and 0.0 <= result["accuracy"] <= 1.0
    folder = Path(result["model_dir"])
    hf = _auto_seqcls(folder)
    ours, tok = load_reward_model(folder)
    assert hf.config.pad_token_id == tok.pad_token_id == ours.pad_token_id
    enc = tok(["12 < 7? no", "sort 3 1 2: 1 2 3", "reverse ab"], padding=True, return_tensors="pt")
    torch.testing.assert_close(ours(enc["input_ids"], enc["attention_mask"]),
                               hf(**enc).logits.squeeze(-1), rtol=1e-5, atol=1e-5)


def test_reward_model_run_resumes_to_the_same_weights(base_model: Path, tmp_path: Path) -> None:
    from trainlab.recipes.rlhf import rm_config, run_reward_model

    def cfg(steps: int, *extra: str):  # type: ignore[no-untyped-def]
        return rm_config(preset="tiny", overrides=["train.device=cpu", f"train.max_steps={steps}",
                                                   "train.eval_every=0", "train.warmup_steps=1", *extra])

    straight = run_reward_model(cfg(3), base_model, tmp_path / "a")
    run_reward_model(cfg(2, "train.keep_checkpoint=true", "train.max_steps=3", "train.save_every=2"),
                     base_model, tmp_path / "b", callbacks=[_StopAt(2)])
    resumed = run_reward_model(cfg(3), base_model, tmp_path / "b", resume=True)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 3
    a, _ = load_reward_model(straight["model_dir"])
    b, _ = load_reward_model(resumed["model_dir"])
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)


class _StopAt:
    """A training callback that stops the run after ``step`` (an interrupted run, checkpoint kept)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_fit_start(self, trainer: object) -> None: ...

    def on_step_end(self, trainer: object, step: int, metrics: object) -> None:
        if step == self.step:
            trainer.request_stop("test")  # type: ignore[attr-defined]

    def on_eval(self, *args: object) -> None: ...

    def on_checkpoint(self, *args: object) -> None: ...

    def on_fit_end(self, *args: object) -> None: ...


def test_reward_model_with_lora_trains_adapters_and_head_and_saves_merged(base_model: Path, tmp_path: Path) -> None:
    from trainlab.recipes.rlhf import rm_config, run_reward_model

    cfg = rm_config(preset="tiny", overrides=["train.device=cpu", "train.max_steps=2", "train.eval_every=0",
                                             "peft.method=lora", "peft.r=4"])
    s = run_reward_model(cfg, base_model, tmp_path / "rm")
    assert s["peft"]["method"] == "lora" and s["peft"]["merged"]
    assert 0 < s["peft"]["trainable_params"] < s["peft"]["total_params"]
    hf = _auto_seqcls(Path(s["model_dir"]))  # merged: a plain sequence classification folder
    ours, tok = load_reward_model(s["model_dir"])
    enc = tok(["sort 3 1 2: 1 2 3"], return_tensors="pt")
    torch.testing.assert_close(ours(enc["input_ids"]), hf(**enc).logits.squeeze(-1), rtol=1e-5, atol=1e-5)


def _rm_ddp_worker(rank: int, model: Path, data: Path, out: Path) -> None:
    from trainlab.recipes.rlhf import rm_config, run_reward_model

    s = run_reward_model(rm_config(preset="tiny", model=model, overrides=_ddp_overrides(data, "dist.strategy=ddp")),
                         model, out)
    torch.save({"final_loss": s["final_loss"], "steps": s["steps"]}, out.parent / f"r{rank}.pt")


def _ddp_overrides(data: Path, *extra: str) -> list[str]:
    # SGD: the update is linear in the gradient, so the all-reduce's rounding stays rounding (Adam's first steps
    # turn a near-zero gradient's sign noise into a full ±lr step)
    return ["train.device=cpu", "train.max_steps=2", "train.batch_size=4", "train.grad_accum=2", "train.lr=0.1",
            "train.optim=sgd", f"align_data.source={data}", *extra]


@pytest.mark.slow  # two processes importing torch and transformers: ~10 s quiet, up to ~50 s on a loaded 2-core CPU
def test_reward_model_under_ddp_equals_one_process(tmp_path: Path) -> None:
    import json

    from _dist import spawn
    from safetensors.torch import load_file

    from trainlab.recipes.rlhf import rm_config, run_reward_model

    model = hf_model_dir(tmp_path / "gpt2", "gpt2", positions=64)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}. What is 2+{i}? The answer is", "chosen": f" {2 + i}.",
                                        "rejected": f" {3 + i}."}) + "\n" for i in range(20)), encoding="utf-8")
    one = run_reward_model(rm_config(preset="tiny", model=model, overrides=_ddp_overrides(data)), model,
                           tmp_path / "one")
    spawn(_rm_ddp_worker, 2, model, data, tmp_path / "two")
    ranks = [torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["steps"] == 2  # every rank returns rank 0's summary
    assert abs(ranks[0]["final_loss"] - one["final_loss"]) <= 1e-5 * abs(one["final_loss"])
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    # over all weights at once: GPT-2's zero-initialised biases hold ~1e-10 after two small steps, so a per-tensor
    # relative difference there would measure rounding noise
    flat_a, flat_b = (torch.cat([t[k].flatten() for k in sorted(a)]) for t in (a, b))
    assert float((flat_a - flat_b).norm() / flat_a.norm()) < 1e-6
    start = load_file(model / "model.safetensors")
    assert max(float((a[k] - start[k]).abs().max()) for k in start if k in a) > 1e-4  # training moved the weights
