"""GRPO through the one Trainer: exact resume (μ = 2: a half-used rollout in the checkpoint), user reward
functions (``module:function``) and their errors, the objective's micro-batch invariance, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests._tiny import tiny_decoder
from trainlab.cli import run_cli
from trainlab.errors import UserError
from trainlab.model.generate import SamplingParams
from trainlab.recipes.base_model import embedded_base_model
from trainlab.rl.config import rl_config
from trainlab.rl.grpo import GRPOObjective
from trainlab.rl.recipe import run_grpo
from trainlab.rl.rewards import PromptItem, load_user_reward
from trainlab.rl.rollout import rollout

TINY = ["train.device=cpu", "align_data.n_train=64", "align_data.n_eval_per_task=2", "train.eval_every=0"]


def _weights(summary: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in summary["_model"].state_dict().items()}


def test_resume_is_exact(tmp_path: Path) -> None:
    base = embedded_base_model("tiny")
    common = [*TINY, "rl.updates_per_rollout=2", "rl.beta=0.05", "train.batch_size=8", "train.save_every=1"]
    full = run_grpo(rl_config(preset="tiny", overrides=[*common, "train.max_steps=3"]), base, tmp_path / "a",
                    quiet=True, save=False, evaluate_oracle=False)
    run_grpo(rl_config(preset="tiny", overrides=[*common, "train.max_steps=1", "train.keep_checkpoint=true"]),
             base, tmp_path / "b", quiet=True, save=False, evaluate_oracle=False)
    resumed = run_grpo(rl_config(preset="tiny", overrides=[*common, "train.max_steps=3"]), base, tmp_path / "b",
                       quiet=True, save=False, evaluate_oracle=False, resume=True)
    assert resumed["resumed_from"] == 1 and resumed["steps"] == 3
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # μ = 2: 3 steps used 2 rollouts; the reference is kept for β > 0 and counted
    assert len(full["rollouts"]) == 2 and full["forward_passes_per_step"]["reference"] == 1
    assert full["forward_passes_per_step"]["policy_old"] == 1


def test_user_reward_function(tmp_path: Path) -> None:
    (tmp_path / "my_reward.py").write_text(
        "def short(completions, answer):\n"
        "    return [float(len(c) < 4) + (c.strip() == a) for c, a in zip(completions, answer)]\n")
    fn = load_user_reward(f"{tmp_path / 'my_reward.py'}:short")
    items = [PromptItem("p", None, {"answer": "42"}), PromptItem("q", None, {"answer": "7"})]
    assert fn(["p", "q"], ["42", "long answer"], items).tolist() == [2.0, 0.0]


@pytest.mark.parametrize("spec, message", [
    ("nocolon", "module:function"),
    ("no_such_module_xyz:f", "not found"),
    ("json:no_such_function", "has no function"),
    ("json:dumps", "raised"),
])
def test_bad_reward_spec_is_one_line(spec: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        fn = load_user_reward(spec)
        fn(["p"], ["c"], [PromptItem("p")])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_objective_micro_batches_equal_one_batch() -> None:
    """Σ loss_sum / Σ count over micro-batches gives the gradient of the whole rollout (the loop's contract)."""
    model = tiny_decoder(0)
    r = rollout(model, [[3, 4, 5], [6, 7]], SamplingParams(max_new_tokens=5, temperature=1.0, eos_token_id=2,
                pad_token_id=0), 4, generator=torch.Generator().manual_seed(0))
    adv = torch.randn(r.n, generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": r.sequences, "attention_mask": r.attention_mask, "completion_mask": r.completion_mask,
             "advantages": adv}
    for agg in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        cfg = rl_config(preset="tiny", overrides=[f"rl.loss_agg={agg}"])
        obj = GRPOObjective(cfg.rl)
        grads = []
        for splits in ([slice(0, 8)], [slice(0, 3), slice(3, 8)]):
            model.zero_grad()
            parts = [{k: v[s] for k, v in batch.items()} for s in splits]
            total = sum(obj.count(p) for p in parts)
            for p in parts:
                (obj(model, p).loss_sum / total).backward()
            grads.append(torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None]))
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_cli_grpo_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = run_cli(["grpo", "--preset", "tiny", "--max-steps", "2", "--out", str(out), "--json", "rl.loss_agg=dapo",
                  "train.eval_every=0", "align_data.n_eval_per_task=2", "align_data.n_train=64"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads(captured.out)
    assert res["steps"] == 2 and res["loss_agg"] == "token_mean" and (out / "model" / "config.json").is_file()
    assert run_cli(["grpo", "--preset", "tiny", "--max-steps", "1", "--out", str(tmp_path / "bad"),
                    "--reward", "nope"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "module:function" in err


def test_prompt_file_and_user_reward_through_the_recipe(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "max 3 9=", "answer": "9"}\n{"prompt": "sort 3 1=", "answer": "1 3"}\n',
                       encoding="utf-8")
    (tmp_path / "rw.py").write_text("def digits(completions, answer):\n"
                                    "    return [float(a in c) for c, a in zip(completions, answer)]\n")
    cfg = rl_config(preset="tiny", overrides=[*TINY, f"align_data.source={prompts}", "train.max_steps=2",
                                              f"rl.reward={tmp_path / 'rw.py'}:digits", "rl.prompts_per_step=2"])
    s = run_grpo(cfg, embedded_base_model("tiny"), tmp_path / "run", quiet=True, save=False)
    assert s["steps"] == 2 and s["n_prompts"] == 2 and s["accuracy"] is None
    assert len(s["step_times_s"]) == 2 and all("oracle_reward" not in r for r in s["rollouts"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 3}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl:1"):
        run_grpo(rl_config(preset="tiny", overrides=[*TINY, f"align_data.source={bad}"]),
                 embedded_base_model("tiny"), tmp_path / "bad", quiet=True, save=False)


def test_grpo_with_lora_trains_only_the_adapter(tmp_path: Path) -> None:
    from trainlab.recipes.align_model import load_policy

    base = embedded_base_model("tiny")
    cfg = rl_config(preset="tiny", overrides=[*TINY, "train.max_steps=2", "peft.method=lora", "peft.r=4",
                                              "train.lr=1e-2"])
    s = run_grpo(cfg, base, tmp_path / "run", quiet=True, evaluate_oracle=False)
    assert s["peft"]["adapter_dir"] and (Path(s["peft"]["adapter_dir"]) / "adapter_config.json").is_file()
    trained = s["_model"]
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in n.lower() for n in trainable), sorted(trainable)[:4]
    # the frozen weights are the starting model's: every original tensor is found unchanged among them
    start, _ = load_policy(base)
    frozen = [p for n, p in trained.named_parameters() if not p.requires_grad]
    for name, p in start.named_parameters():
        assert any(q.shape == p.shape and torch.equal(q, p) for q in frozen), name


def test_accuracy_from_completions_equals_oracle_accuracy() -> None:
    from trainlab.align.evaluate import oracle_accuracy, task_completions
    from trainlab.recipes.align_model import load_policy
    from trainlab.rl.grpo import prompt_items
    from trainlab.rl.recipe import accuracy_of

    model, tok = load_policy(embedded_base_model("tiny"))
    _, records = prompt_items(rl_config(preset="tiny", overrides=TINY))
    assert accuracy_of(records, task_completions(model, tok, records)) == oracle_accuracy(model, tok, records).to_dict()
