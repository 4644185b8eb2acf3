"""Regenerate the README's results table and its timing sentence from a real run's results.json
(never typed by hand).

    python scripts/readme_results.py [runs/demo/results.json]

Both come from the same `SuiteResult`: the table's "total" row and the sentence's minutes and
seconds are the same rounded sum of the labs' wall times, so they cannot disagree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from trainlab.report import load_suite
from trainlab.report.render import hardware_line, md_cell
from trainlab.results import SuiteResult

ROOT = Path(__file__).resolve().parents[1]
REGIONS = ("results", "demo-time")


def total_seconds(suite: SuiteResult) -> int:
    """The labs' summed wall time, rounded to whole seconds (the table's total row)."""
    return round(sum(lab.wall_time_s for lab in suite.labs))


def table(suite: SuiteResult) -> str:
    lines = [f"From `{suite.command}` on {hardware_line(suite.env)}, {suite.created_at}.", "",
             "| lab | claim | measured here | verdict |", "| --- | --- | --- | --- |"]
    for lab in suite.labs:
        if lab.status != "ok":
            lines.append(f"| {lab.lab} | — | {md_cell(lab.status)}: {md_cell(lab.error)} | — |")
            continue
        for c in lab.claims:
            lines.append(f"| {lab.lab} | {md_cell(c.claim)} | {md_cell(c.measured)} | {c.verdict} |")
    lines += ["", "| lab | wall time (s) |", "| --- | --- |"]
    lines += [f"| {lab.lab} | {round(lab.wall_time_s)} |" for lab in suite.labs]
    lines.append(f"| total | {total_seconds(suite)} |")
    return "\n".join(lines)


def timing_sentence(suite: SuiteResult) -> str:
    """How long the labs of the run in the Results section took, on which hardware."""
    minutes, seconds = divmod(total_seconds(suite), 60)
    return (f"The labs of the run in the Results section below took {minutes} min {seconds} s in all "
            f"(`{suite.command}` on {hardware_line(suite.env)}); creating `.venv` on a fresh machine comes on top.")


def update(text: str, suite: SuiteResult) -> str:
    """``text`` (the README) with both generated regions replaced; each must be there exactly once."""
    content = {"results": table(suite) + "\n", "demo-time": timing_sentence(suite) + "\n"}
    for name in REGIONS:
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", flags=re.S)
        text, n = pattern.subn(lambda m, name=name: m.group(1) + content[name] + m.group(2), text)
        if n != 1:
            raise SystemExit(f"README.md: expected one <!-- {name}:begin/end --> region, found {n}")
    return text


def main() -> None:
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "demo" / "results.json"
    readme = ROOT / "README.md"
    readme.write_text(update(readme.read_text(encoding="utf-8"), load_suite(results)), encoding="utf-8")
    print(f"README results and timing updated from {results}")


if __name__ == "__main__":
    main()
