"""The RLHF lab (tiny preset) runs end to end with verdicts from its numbers; its notebooks run in smoke mode.

All share one suite folder, so lab 1.7's SFT and DPO stages are trained once (as in a real suite run)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from trainlab.labs import run_labs

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
VERDICTS = {"consistent", "not reproduced", "partly", "not measurable here"}


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rlhf_suite")


def test_lab_tiny(suite_dir: Path) -> None:
    suite = run_labs(["rlhf"], out_dir=suite_dir / "suite", preset="tiny", device="cpu", seed=0, quiet=True)
    r = suite.labs[-1]
    assert r.status == "ok", r.error
    titles = [t.title for t in r.tables]
    assert any(t.startswith("Oracle accuracy") for t in titles) and any(t.startswith("Training cost") for t in titles)
    assert len(r.claims) == 4 and all(c.verdict in VERDICTS for c in r.claims)
    cost = r.data["cost"]
    assert cost["cost_s"]["rlhf"] > 0 and cost["cost_s"]["dpo"] > 0
    # PPO with a learned reward and a separate critic forwards 4 networks besides sampling (counted by hooks)
    assert len(cost["networks"]["ppo"]) == 4
    runs = r.data["runs"]
    assert runs["grpo"]["forward_passes_per_step"]["policy_train"] == 1
    assert all("oracle_reward" in h for h in runs["grpo_rm"]["rollouts"])
    for f in r.figures:
        assert (suite_dir / "suite" / f.path).is_file(), f.path


# rlhf_04 runs the lab's own parts (test_lab_tiny covers them); the others run here, in the lab's suite folder
@pytest.mark.parametrize("name", ["rlhf_01_rollouts_and_advantages.py", "rlhf_02_grpo.py",
                                  "rlhf_03_reward_model_and_ppo.py"])
def test_notebook_smoke(name: str, suite_dir: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRAINLAB_NOTEBOOK_PRESET", "tiny")
    monkeypatch.setenv("TRAINLAB_NOTEBOOK_OUT", str(suite_dir))  # the notebooks' suite: suite_dir / "suite"
    monkeypatch.chdir(suite_dir)
    runpy.run_path(str(NOTEBOOKS / name), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip()
    if name.startswith("rlhf_01"):
        assert "grpo" in out and "k3" in out


def test_every_notebook_is_a_percent_script() -> None:
    names = sorted(p.name for p in NOTEBOOKS.glob("rlhf_0*.py"))
    assert [n[:7] for n in names] == ["rlhf_01", "rlhf_02", "rlhf_03", "rlhf_04"]
    for name in names:
        text = (NOTEBOOKS / name).read_text(encoding="utf-8")
        assert "format_name: percent" in text and "# %% [markdown]" in text, name
        compile(text, name, "exec")
