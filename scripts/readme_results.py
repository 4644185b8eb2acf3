"""Regenerate the README's results table from a real run's results.json (never typed by hand).

    python scripts/readme_results.py [runs/demo/results.json]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from trainlab.report import load_suite
from trainlab.report.render import hardware_line, md_cell

ROOT = Path(__file__).resolve().parents[1]


def table(results: Path) -> str:
    suite = load_suite(results)
    lines = [f"From `{suite.command}` on {hardware_line(suite.env)}, {suite.created_at}.", "",
             "| lab | claim | measured here | verdict |", "| --- | --- | --- | --- |"]
    for lab in suite.labs:
        if lab.status != "ok":
            lines.append(f"| {lab.lab} | — | {md_cell(lab.status)}: {md_cell(lab.error)} | — |")
            continue
        for c in lab.claims:
            lines.append(f"| {lab.lab} | {md_cell(c.claim)} | {md_cell(c.measured)} | {c.verdict} |")
    lines += ["", "| lab | wall time (s) |", "| --- | --- |"]
    lines += [f"| {lab.lab} | {lab.wall_time_s:.0f} |" for lab in suite.labs]
    lines.append(f"| total | {sum(lab.wall_time_s for lab in suite.labs):.0f} |")
    return "\n".join(lines)


def main() -> None:
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "demo" / "results.json"
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = re.sub(r"(<!-- results:begin -->\n).*?(<!-- results:end -->)",
                 lambda m: m.group(1) + table(results) + "\n" + m.group(2), text, flags=re.S)
    readme.write_text(new, encoding="utf-8")
    print(f"README results updated from {results}")


if __name__ == "__main__":
    main()
