"""Lab 1.8 (ORPO vs SFT then DPO, SimPO) in the tiny preset: sections, export, and claims whose
verdicts follow from measured numbers (ORPO against pure DPO; reference memory measured for ORPO,
SimPO and a frozen DPO reference)."""

from __future__ import annotations

import re

from _align_suite import align_suite

from trainlab.labs.lab18 import _no_reference_verdict
from trainlab.results import LabResult
from trainlab.utils import read_json


def _lab() -> LabResult:
    suite, _ = align_suite()
    return next(r for r in suite.labs if r.lab == "lab18")


def _claim(lab: LabResult, needle: str):  # type: ignore[no-untyped-def]
    return next(c for c in lab.claims if needle in c.claim)


def test_lab18_runs_and_reports() -> None:
    _, out = align_suite()
    lab = _lab()
    assert lab.status == "ok", lab.error
    titles = [t.title for t in lab.tables]
    for needle in ("Oracle accuracy per task", "Pipelines: quality and cost", "Training memory by stage",
                   "Held for a reference policy", "Export"):
        assert any(needle in t for t in titles), (needle, titles)
    assert len(lab.figures) == 4
    for fig in lab.figures:
        assert (out / fig.path).is_file(), fig.path


def test_lab18_reuses_the_suite_stages_and_measures() -> None:
    suite, _ = align_suite()
    lab17 = next(r for r in suite.labs if r.lab == "lab17")
    lab = _lab()
    runs = lab.data["runs"]
    # SFT and DPO came from lab 1.7's runs in this suite: same key, not retrained
    assert runs["sft"].get("reused") and runs["dpo"].get("reused")
    assert runs["dpo"]["key"] == lab17.data["dpo"]["key"]
    pipes = lab.data["pipelines"]
    assert pipes["SFT -> DPO"]["steps"] == runs["sft"]["steps"] + runs["dpo"]["steps"]
    assert all(p["cost_s"] > 0 and p["memory_bytes"] > 0 for p in pipes.values())


def test_lab18_reference_memory_is_measured() -> None:
    """The measurement sees a frozen reference (its weights) and cached log-probs, and finds nothing
    for ORPO and SimPO: 0 is a measured value, not the absence of a reference argument."""
    lab = _lab()
    held = lab.data["reference_held"]
    params = lab.data["runs"]["dpo"]["memory"]["parameters"]
    assert held["dpo-frozen"]["reference_model_bytes"] == params > 0
    assert held["dpo-cached"]["reference_model_bytes"] == 0 and held["dpo-cached"]["cached_logps_bytes"] > 0
    assert held["orpo"]["total_bytes"] == 0 and held["simpo"]["total_bytes"] == 0
    claim = _claim(lab, "no reference model")
    assert "SimPO" in claim.measured and "ORPO" in claim.measured
    assert claim.verdict == _no_reference_verdict(held["orpo"]["total_bytes"], held["simpo"]["total_bytes"],
                                                  held["dpo-frozen"]["total_bytes"]) == "consistent"
    # SimPO is checked on its own: a reference held by SimPO alone would change the verdict
    assert _no_reference_verdict(0, 8, params) == "not reproduced"
    assert _no_reference_verdict(8, 0, params) == "not reproduced"
    assert _no_reference_verdict(0, 0, 0) == "not measurable here"


def test_lab18_orpo_is_compared_with_pure_dpo() -> None:
    _, out = align_suite()
    lab = _lab()
    assert read_json(out / ".align-cache" / "dpo" / "summary.json")["config"]["align"]["rpo_alpha"] == 0
    claim = _claim(lab, "ORPO aligns better than DPO")
    assert "pure DPO" in claim.measured and not re.search(r"\bRPO\b", claim.measured)
    pipes = lab.data["pipelines"]
    a_orpo, a_dpo = pipes["ORPO"]["accuracy"], pipes["SFT -> DPO"]["accuracy"]
    assert claim.verdict == ("consistent" if a_orpo > a_dpo else "not reproduced")


def test_lab18_time_verdict_follows_from_the_numbers() -> None:
    lab = _lab()
    pipes = lab.data["pipelines"]
    saving = 1 - pipes["ORPO"]["cost_s"] / pipes["SFT -> DPO"]["cost_s"]
    claim = _claim(lab, "less total training time")
    expected = "consistent" if 0.40 <= saving <= 0.50 else "partly" if saving > 0 else "not reproduced"
    assert claim.verdict == expected, (saving, claim.measured)
    assert f"{saving:+.0%} saved" in claim.measured


def test_lab18_export_loads_in_transformers_with_the_same_logits() -> None:
    lab = _lab()
    export = lab.data["export"]
    assert export["class"] == "LlamaForCausalLM"
    assert export["max_abs_logit_diff"] < 1e-4
    assert export["same_greedy_next_token"]
    claim = _claim(lab, "exports")
    assert claim.verdict == ("consistent" if export["max_abs_logit_diff"] < 1e-3 else "not reproduced")
    assert not any("RLHF" in c.claim for c in lab.claims)  # measured by lab rlhf


def test_lab18_serves_the_orpo_model_with_the_offline_accuracy() -> None:
    """The ORPO model behind the OpenAI-compatible endpoint: every held-out prompt asked over HTTP is answered,
    with the oracle accuracy (and completions) of offline generation; the claim's verdict follows."""
    from trainlab.labs.lab18 import _export_serve_verdict

    lab = _lab()
    served = lab.data["serve"]
    assert served["answered"] == served["prompts"] > 0 and served["requests_per_s"] > 0
    assert served["accuracy_served"] == served["accuracy_offline"]
    assert served["identical_completions"] == served["prompts"]
    assert any(t.title.startswith("Serving: the ORPO model") for t in lab.tables)
    claim = _claim(lab, "serves with the usual tools")
    assert "through the server" in claim.measured and "requests/s" in claim.measured
    assert claim.verdict == _export_serve_verdict(lab.data["export"]["max_abs_logit_diff"], served) == "consistent"
    assert _export_serve_verdict(0.0, {**served, "accuracy_served": served["accuracy_offline"] + 0.1}) \
        == "not reproduced"
    assert _export_serve_verdict(0.0, {"skipped": "no extra"}) == "partly"
    assert _export_serve_verdict(1.0, served) == "not reproduced"
