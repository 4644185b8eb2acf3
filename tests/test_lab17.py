"""Lab 1.7 (DPO) in the tiny preset: it runs, and its report has the sections, claims and figures."""

from __future__ import annotations

from _align_suite import align_suite

from trainlab.results import LabResult


def _lab() -> LabResult:
    suite, _ = align_suite()
    return next(r for r in suite.labs if r.lab == "lab17")


def test_lab17_runs_and_reports() -> None:
    _, out = align_suite()
    lab = _lab()
    assert lab.status == "ok", lab.error
    titles = [t.title for t in lab.tables]
    for needle in ("Oracle accuracy per task", "DPO variants", "β sweep", "Win rate of DPO over SFT",
                   "cached once vs a frozen reference", "Sample generations"):
        assert any(needle in t for t in titles), (needle, titles)
    for fig in lab.figures:
        assert (out / fig.path).is_file(), fig.path
    assert len(lab.figures) == 5
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "1.7 DPO" in report and "win rate" in report


def test_lab17_numbers_are_consistent() -> None:
    lab = _lab()
    acc = lab.data["accuracy"]
    assert set(acc) >= {"base", "SFT", "DPO (sigmoid)", "DPO (ipo)", "DPO (hinge)", "DPO (robust)"}
    for stage in acc.values():
        assert 0.0 <= stage["overall"] <= 1.0
        assert set(stage["per_task"]) == {"compare", "reverse", "sort"}
    wr = lab.data["win_rate"]
    assert wr["wins"] + wr["losses"] + wr["ties"] == wr["n"] == acc["SFT"]["n"]
    dpo = lab.data["dpo"]
    assert dpo["reference"]["mode"] == "cached" and dpo["memory"]["reference"] == 0
    assert lab.data["frozen_reference"]["memory"]["reference"] == dpo["memory"]["parameters"]
    assert set(lab.data["beta_sweep"]) == {"0.03", "0.1", "0.3"}
    variants = {t.rows[i][0] for t in lab.tables if t.title.startswith("DPO variants") for i in range(len(t.rows))}
    assert variants == {"sigmoid", "sigmoid, no NLL", "sigmoid, no NLL, lr/10", "ipo", "hinge", "robust"}


def test_lab17_claims() -> None:
    lab = _lab()
    verdicts = {c.claim.split(":")[0]: c.verdict for c in lab.claims}
    assert len(lab.claims) == 3
    assert any("RLHF" in c.claim and c.verdict == "not measurable here" for c in lab.claims), verdicts
    for claim in lab.claims:
        assert claim.source.startswith("seed 00")
        assert claim.measured
