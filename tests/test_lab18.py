"""Lab 1.8 (ORPO vs SFT then DPO, SimPO) in the tiny preset: sections, claims, figures, export."""

from __future__ import annotations

from _align_suite import align_suite

from trainlab.results import LabResult


def _lab() -> LabResult:
    suite, _ = align_suite()
    return next(r for r in suite.labs if r.lab == "lab18")


def test_lab18_runs_and_reports() -> None:
    _, out = align_suite()
    lab = _lab()
    assert lab.status == "ok", lab.error
    titles = [t.title for t in lab.tables]
    for needle in ("Oracle accuracy per task", "Pipelines: quality and cost", "Training memory by stage",
                   "Export"):
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
    assert runs["orpo"]["memory"]["reference"] == 0 and runs["simpo"]["memory"]["reference"] == 0
    pipes = lab.data["pipelines"]
    assert pipes["SFT -> DPO"]["steps"] == runs["sft"]["steps"] + runs["dpo"]["steps"]
    assert all(p["cost_s"] > 0 and p["memory_bytes"] > 0 for p in pipes.values())


def test_lab18_export_loads_in_transformers_with_the_same_logits() -> None:
    export = _lab().data["export"]
    assert export["class"] == "LlamaForCausalLM"
    assert export["max_abs_logit_diff"] < 1e-4
    assert export["same_greedy_next_token"]


def test_lab18_claims() -> None:
    lab = _lab()
    claims = {c.claim: c for c in lab.claims}
    assert any("40-50%" in c for c in claims)
    rlhf = next(c for c in lab.claims if "RLHF" in c.claim)
    assert rlhf.verdict == "not measurable here"
    export = next(c for c in lab.claims if "exports" in c.claim)
    assert export.verdict == "consistent"
