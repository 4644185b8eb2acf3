"""PPO: the loss against a hand-worked example, the KL controllers, and the run end to end on the tiny
preset (forward passes counted per model, exact resume in the middle of a rollout, trainlab ppo)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from trainlab.rl.ppo import AdaptiveKLController, FixedKLController, ppo_loss


def test_ppo_loss_equals_the_hand_worked_example() -> None:
    # token 0: ρ = 1.5, A = 1 -> min(1.5, clip 1.2)·1 = 1.2, loss −1.2; token 1: ρ = 0.5, A = −1 ->
    # min(−0.5, 0.8·−1) = −0.8, loss 0.8; policy mean (−1.2 + 0.8)/2 = −0.2.
    # values, returns 1, ε_v 0.2: token 0 V 0.5 from 0 -> clipped 0.2: max(0.25, 0.64) = 0.64; token 1 V −0.1
    # (inside the clip): 1.21; value loss ½·(0.64 + 1.21)/2 = 0.4625; total −0.2 + 0.1·0.4625 = −0.15375.
    # Token 2 is masked out (its numbers are garbage).
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 9.0]]))
    adv = torch.tensor([[1.0, -1.0, 5.0]])
    v_old, v, ret = torch.zeros(1, 3), torch.tensor([[0.5, -0.1, 7.0]]), torch.tensor([[1.0, 1.0, -3.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss_sum, count, metrics = ppo_loss(new, old, adv, v, v_old, ret, mask, eps_low=0.2, eps_high=0.2,
                                        cliprange_value=0.2, vf_coef=0.1)
    assert count == 2
    assert math.isclose(float(loss_sum) / count, -0.15375, rel_tol=1e-6)
    assert math.isclose(metrics["pg_loss"], -0.2, rel_tol=1e-6)
    assert math.isclose(metrics["vf_loss"], 0.4625, rel_tol=1e-6)
    assert metrics["vf_clipfrac"] == 0.5 and metrics["clip_ratio/region_mean"] == 1.0


def test_kl_controllers() -> None:
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05
    # Ziegler et al.: e = clip(KL/target − 1, ±0.2); β·(1 + e·n/horizon)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    ctl.update(9.0, 100)  # e = 0.5 -> 0.2
    assert math.isclose(ctl.value, 0.1 * (1 + 0.2 * 0.1))
    ctl.update(5.4, 100)  # e = −0.1
    assert math.isclose(ctl.value, 0.1 * 1.02 * (1 - 0.01))
    again = AdaptiveKLController(1.0, 6.0, 1000)
    again.load_state_dict(ctl.state_dict())
    assert again.value == ctl.value


# ---- the run -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model() -> Path:
    from trainlab.recipes.base_model import embedded_base_model

    return embedded_base_model("tiny")


def _cfg(*extra: str):  # type: ignore[no-untyped-def]
    from trainlab.recipes.rlhf import ppo_config

    return ppo_config(preset="tiny", overrides=["train.device=cpu", "rl.max_new_tokens=4", *extra])


def test_ppo_counts_forward_passes_per_model(base_model: Path, tmp_path: Path) -> None:
    from trainlab.recipes.rlhf import run_ppo

    # a rewarding user function: the oracle gives the tiny base model 0 everywhere (no signal)
    (tmp_path / "rew.py").write_text("def length(completions, **kw):\n    return [len(c) / 10 for c in completions]\n")
    separate = run_ppo(_cfg("train.max_steps=4", f"rl.reward={tmp_path / 'rew.py'}:length"), base_model,
                       tmp_path / "separate", evaluate_oracle=False)
    assert separate["forward_passes_per_rollout"] == {"generate": 1, "policy": 1, "reference": 1, "value": 1}
    assert separate["forward_passes_per_update"] == {"policy": 1, "value": 1}
    assert separate["forward_passes_per_step"] == {"generate": 1, "policy_old": 1, "reference": 1, "value": 1,
                                                   "policy_train": 1, "value_train": 1}
    assert separate["steps_per_rollout"] == 4 and len(separate["reward_curve"]) == 1
    assert separate["history"][-1]["grad_norm"] > 0  # the update did something
    shared = run_ppo(_cfg("train.max_steps=1", "rl.value_model=shared"), base_model, tmp_path / "shared",
                     evaluate_oracle=False)
    # one pass of the policy gives both the log-probs and the values
    assert shared["forward_passes_per_rollout"] == {"generate": 1, "policy": 1, "reference": 1}
    assert shared["forward_passes_per_update"] == {"policy": 1}
    assert shared["value_dir"] is None


def test_ppo_resumes_in_the_middle_of_a_rollout(base_model: Path, tmp_path: Path) -> None:
    from trainlab.model.protocol import load_model
    from trainlab.recipes.rlhf import run_ppo

    (tmp_path / "rew.py").write_text("def length(completions, **kw):\n    return [len(c) / 10 for c in completions]\n")
    extra = (f"rl.reward={tmp_path / 'rew.py'}:length", "rl.kl_ctl=adaptive", "rl.kl_horizon=10")
    # rollouts of 2 epochs x 2 mini-batches (4 steps); stop after step 3, inside the first rollout's second epoch
    straight = run_ppo(_cfg("train.max_steps=6", *extra), base_model, tmp_path / "a", evaluate_oracle=False)

    class Stop:
        def on_fit_start(self, trainer: object) -> None: ...

        def on_step_end(self, trainer: object, step: int, metrics: object) -> None:
            if step == 3:
                trainer.request_stop("test")  # type: ignore[attr-defined]

        def on_eval(self, *a: object) -> None: ...

        def on_checkpoint(self, *a: object) -> None: ...

        def on_fit_end(self, *a: object) -> None: ...

    run_ppo(_cfg("train.max_steps=6", "train.keep_checkpoint=true", *extra), base_model, tmp_path / "b",
            evaluate_oracle=False, callbacks=[Stop()])
    resumed = run_ppo(_cfg("train.max_steps=6", *extra), base_model, tmp_path / "b", resume=True,
                      evaluate_oracle=False)
    assert resumed["resumed_from"] == 3
    assert straight["kl_coef_curve"][-1] != straight["kl_coef_curve"][0]  # the adaptive β moved
    assert min(straight["kl_curve"]) >= 0.0 and straight["kl_curve"][-1] > 0.0  # k3 per token: >= 0, > 0 once moved
    assert len(straight["kl_seq_curve"]) == len(straight["kl_curve"]) == 2
    a, b = load_model(straight["model_dir"]), load_model(resumed["model_dir"])
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    va, vb = (json.loads((Path(s["value_dir"]) / "config.json").read_text()) for s in (straight, resumed))
    assert va["architectures"] == vb["architectures"] == ["LlamaForSequenceClassification"]


def test_trainlab_ppo_with_a_reward_model_forwards_four_models(
        base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainlab.cli import run_cli
    from trainlab.recipes.rlhf import rm_config, run_reward_model

    rm = run_reward_model(rm_config(preset="tiny", overrides=["train.device=cpu", "train.max_steps=1",
                                                             "train.eval_every=0"]), base_model, tmp_path / "rm")
    code = run_cli(["ppo", "--preset", "tiny", "--reward-model", rm["model_dir"], "--out", str(tmp_path / "ppo"),
                    "--max-steps", "3", "--json", "train.device=cpu", "rl.max_new_tokens=4"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 3
    # RLHF: policy (π_old), reference, value and reward model each run forward on every rollout
    assert result["forward_passes_per_rollout"] == {"generate": 1, "policy": 1, "reference": 1, "reward_model": 1,
                                                    "value": 1}
    assert set(result["models"]) == {"policy", "reference", "value", "reward_model"}
    assert Path(result["model_dir"], "config.json").is_file()


def test_trainlab_ppo_refuses_a_causal_lm_as_reward_model(base_model: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from trainlab.cli import run_cli

    code = run_cli(["ppo", "--preset", "tiny", "--reward-model", str(base_model), "--out", str(tmp_path / "o"),
                    "train.device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a reward model" in err[0] and "trainlab rm" in err[0]
    assert not (tmp_path / "o").exists()


def test_ppo_with_lora_uses_the_base_as_reference_without_a_copy(base_model: Path, tmp_path: Path) -> None:
    from trainlab.recipes.rlhf import run_ppo

    (tmp_path / "rew.py").write_text("def length(completions, **kw):\n    return [len(c) / 10 for c in completions]\n")
    s = run_ppo(_cfg("train.max_steps=2", "peft.method=lora", "peft.r=4", "rl.value_model=shared",
                     f"rl.reward={tmp_path / 'rew.py'}:length"), base_model, tmp_path / "lora", evaluate_oracle=False)
    assert s["models"]["reference"] == 0  # π_ref is the policy with its adapters off
    assert s["forward_passes_per_rollout"] == {"generate": 1, "policy": 1, "reference": 1}
    assert s["peft"]["adapter_dir"] and Path(s["peft"]["adapter_dir"], "adapter_config.json").is_file()
    assert s["history"][-1]["grad_norm"] > 0


def test_trainlab_ppo_refuses_completions_past_the_models_positions(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from _hf_tiny import hf_model_dir

    from trainlab.cli import run_cli

    model = hf_model_dir(tmp_path / "gpt2", "gpt2", positions=64)  # TRL's defaults: 53 new tokens
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i}. What is 2+3? The answer is"}) + "\n" for i in range(4)))
    code = run_cli(["ppo", "--model", str(model), "--data", str(prompts), "--out", str(tmp_path / "o"),
                    "train.device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "rl.max_new_tokens=53" in err[-1] and "64 positions" in err[-1]
    assert not (tmp_path / "o").exists()
