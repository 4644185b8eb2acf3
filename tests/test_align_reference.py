"""The reference policy: cached log-probs equal a frozen copy's under the training precision, and the
cache key changes with everything the numbers depend on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainlab.align import reference as ref_mod
from trainlab.align.reference import reference_cache_key
from trainlab.recipes.align import run_alignment, run_key, stage_config
from trainlab.recipes.base_model import embedded_base_model

_KEY_ARGS = {"precision": "fp32", "device": "cpu", "dtype": torch.float32, "chunk_size": -1, "batch_size": 64}


def _first_step(mode: str, precision: str, out: Path) -> dict[str, float]:
    base = embedded_base_model("tiny")
    cfg = stage_config("dpo", "tiny", device="cpu", overrides=[
        f"align.reference={mode}", f"train.precision={precision}", "train.log_every=1", "train.max_steps=1",
        "train.eval_every=0", "align.eval_kl=false", "align.rpo_alpha=0"])
    run = run_alignment("dpo", cfg, base, out / f"{mode}-{precision}", quiet=True, save=False, evaluate_oracle=False)
    if mode == "cached":
        assert run.summary["reference"]["precision"] == precision
    return run.summary["history"][0]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_step0_margins_are_exactly_zero(precision: str, tmp_path: Path) -> None:
    """At step 0 the policy is π_ref: every implicit reward is 0 with the cached and the frozen reference
    (before the fix, the cached pass ran without autocast and a bf16 run started with margins ≠ 0)."""
    for mode in ("cached", "frozen"):
        h = _first_step(mode, precision, tmp_path)
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert h[key] == 0.0, (mode, precision, key, h[key])


def test_cache_key_names_what_the_numbers_depend_on() -> None:
    key = reference_cache_key("m", "d", "preference", **_KEY_ARGS)
    assert key == reference_cache_key("m", "d", "preference", **_KEY_ARGS)
    changed = [
        reference_cache_key("m2", "d", "preference", **_KEY_ARGS),
        reference_cache_key("m", "d2", "preference", **_KEY_ARGS),
        reference_cache_key("m", "d", "unpaired", **_KEY_ARGS),
        reference_cache_key("m", "d", "preference", **(_KEY_ARGS | {"precision": "bf16"})),
        reference_cache_key("m", "d", "preference", **(_KEY_ARGS | {"precision": "fp16"})),
        reference_cache_key("m", "d", "preference", **(_KEY_ARGS | {"device": "meta"})),
        reference_cache_key("m", "d", "preference", **(_KEY_ARGS | {"dtype": torch.bfloat16})),
        reference_cache_key("m", "d", "preference", **(_KEY_ARGS | {"chunk_size": 128})),
        reference_cache_key("m", "d", "preference", **(_KEY_ARGS | {"batch_size": 32})),
    ]
    assert len({key, *changed}) == len(changed) + 1


def test_cache_key_tells_accelerator_models_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ref_mod, "device_identity", lambda d: "cuda:NVIDIA H200")
    h200 = reference_cache_key("m", "d", "preference", **(_KEY_ARGS | {"device": "cuda"}))
    monkeypatch.setattr(ref_mod, "device_identity", lambda d: "cuda:NVIDIA A100")
    a100 = reference_cache_key("m", "d", "preference", **(_KEY_ARGS | {"device": "cuda"}))
    assert h200 != a100


def test_run_key_includes_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage trained on another device is not reused (its numbers and times differ)."""
    base = embedded_base_model("tiny")
    cfg = stage_config("dpo", "tiny", device="cpu")
    here = run_key("dpo", cfg, base)
    assert here == run_key("dpo", cfg, base)
    monkeypatch.setattr(ref_mod, "device_identity", lambda d: "cuda:NVIDIA H200")
    assert run_key("dpo", cfg, base) != here
