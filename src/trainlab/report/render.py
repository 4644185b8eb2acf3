"""results.json -> report.md and report.html.

The report shows, for every lab, the hardware that produced it, each seed claim beside the
measured value, the tables and the plots. It only renders: every number comes from the JSON.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from trainlab.results import LabResult, SuiteResult
from trainlab.utils import atomic_write

#: Verdicts that need a word of explanation under a claims table.
VERDICT_NOTES = {
    "reproduced from the formula": "reproduced from the formula: the value is computed from the source's own "
                                   "formula, not measured by a run here, so it agrees by construction.",
    "not measurable here": "not measurable here: this hardware cannot run the measurement (the why column says "
                           "what it needs).",
}


def load_suite(path: str | Path) -> SuiteResult:
    return SuiteResult.model_validate_json(Path(path).read_text(encoding="utf-8"))


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3g}"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if value is None:
        return "—"
    return str(value)


def md_cell(value: Any) -> str:
    return fmt_value(value).replace("|", "\\|").replace("\n", " ")


def hardware_line(env: dict[str, Any]) -> str:
    if env.get("device") == "cuda":
        return f"{env.get('gpu_name')} (compute {env.get('compute_capability')}), torch {env.get('torch_version')}"
    mem = (env.get("memory_bytes") or 0) / 2**30
    return (f"CPU {env.get('cpu_name')}, {env.get('cpu_count')} cores, {mem:.0f} GiB, "
            f"torch {env.get('torch_version')}")


def _lab_markdown(lab: LabResult) -> list[str]:
    out = [f"## {lab.title} (`{lab.lab}`)", ""]
    out.append(f"*Preset `{lab.preset}`, device `{lab.device}`, seed {lab.seed}, "
               f"{lab.wall_time_s:.0f} s, hardware: {hardware_line(lab.env)}.*")
    out.append("")
    if lab.status != "ok":
        out += [f"**{lab.status.upper()}**: {lab.error or ''}", ""]
    for para in lab.summary:
        out += [para, ""]
    if lab.claims:
        out += ["| claim | source | measured here | verdict | why |", "| --- | --- | --- | --- | --- |"]
        for c in lab.claims:
            out.append(f"| {md_cell(c.claim)} | {md_cell(c.source)} | {md_cell(c.measured)} | "
                       f"{md_cell(c.verdict)} | {md_cell(c.why)} |")
        out.append("")
        notes = [VERDICT_NOTES[v] for v in dict.fromkeys(c.verdict for c in lab.claims) if v in VERDICT_NOTES]
        out += [f"_{n}_" for n in notes] + ([""] if notes else [])
    for t in lab.tables:
        out += [f"**{t.title}**", ""]
        out.append("| " + " | ".join(t.columns) + " |")
        out.append("| " + " | ".join("---" for _ in t.columns) + " |")
        for row in t.rows:
            out.append("| " + " | ".join(md_cell(v) for v in row) + " |")
        out.append("")
        if t.note:
            out += [f"_{t.note}_", ""]
    for f in lab.figures:
        out += [f"![{f.caption}]({f.path})", "", f"*{f.caption}*", ""]
    return out


def render_markdown(suite: SuiteResult) -> str:
    lines = ["# trainlab report", ""]
    lines.append(f"Generated {suite.created_at} by trainlab {suite.trainlab_version}"
                 + (f" (`{suite.command}`)" if suite.command else "") + ".")
    lines += ["", f"Hardware: {hardware_line(suite.env)}.", ""]
    lines += ["| lab | status | wall time (s) |", "| --- | --- | --- |"]
    for lab in suite.labs:
        lines.append(f"| [{lab.title}](#{lab.lab}) | {lab.status} | {lab.wall_time_s:.0f} |")
    lines.append("")
    for lab in suite.labs:
        lines += _lab_markdown(lab)
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.meta{color:#666;font-size:.9em}
.status-failed,.status-skipped{color:#a00;font-weight:bold}
.v-consistent{color:#070}.v-not-reproduced{color:#a00}.v-partly{color:#a60}
.v-reproduced-from-the-formula{color:#258;font-style:italic}.v-not-measurable-here{color:#777}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{color:#555;font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(fmt_value(value))


def _lab_html(lab: LabResult) -> list[str]:
    out = [f'<h2 id="{_e(lab.lab)}">{_e(lab.title)} <code>{_e(lab.lab)}</code></h2>']
    out.append(f'<p class="meta">Preset <code>{_e(lab.preset)}</code>, device <code>{_e(lab.device)}</code>, '
               f"seed {lab.seed}, {lab.wall_time_s:.0f} s, hardware: {_e(hardware_line(lab.env))}.</p>")
    if lab.status != "ok":
        out.append(f'<p class="status-{lab.status}">{_e(lab.status.upper())}: {_e(lab.error or "")}</p>')
    out += [f"<p>{_e(p)}</p>" for p in lab.summary]
    if lab.claims:
        out.append("<table><tr><th>claim</th><th>source</th><th>measured here</th><th>verdict</th>"
                   "<th>why</th></tr>")
        for c in lab.claims:
            cls = "v-" + c.verdict.replace(" ", "-")
            out.append(f"<tr><td>{_e(c.claim)}</td><td>{_e(c.source)}</td><td>{_e(c.measured)}</td>"
                       f'<td class="{cls}">{_e(c.verdict)}</td><td>{_e(c.why)}</td></tr>')
        out.append("</table>")
    for t in lab.tables:
        out.append(f"<h3>{_e(t.title)}</h3><table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in t.columns)
                   + "</tr>")
        for row in t.rows:
            out.append("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>")
        out.append("</table>")
        if t.note:
            out.append(f'<p class="meta">{_e(t.note)}</p>')
    for f in lab.figures:
        out.append(f'<figure><img src="{html.escape(f.path)}" alt="{_e(f.caption)}">'
                   f"<figcaption>{_e(f.caption)}</figcaption></figure>")
    return out


def render_html(suite: SuiteResult) -> str:
    body = ["<h1>trainlab report</h1>",
            f'<p class="meta">Generated {_e(suite.created_at)} by trainlab {_e(suite.trainlab_version)}'
            + (f" (<code>{_e(suite.command)}</code>)" if suite.command else "") + "</p>",
            f"<p>Hardware: {_e(hardware_line(suite.env))}.</p>",
            "<table><tr><th>lab</th><th>status</th><th>wall time (s)</th></tr>"]
    for lab in suite.labs:
        body.append(f'<tr><td><a href="#{_e(lab.lab)}">{_e(lab.title)}</a></td>'
                    f'<td class="status-{lab.status}">{_e(lab.status)}</td><td>{lab.wall_time_s:.0f}</td></tr>')
    body.append("</table>")
    for lab in suite.labs:
        body += _lab_html(lab)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>trainlab report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(suite: SuiteResult, out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, report.md and report.html into ``out_dir`` (atomically each)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "markdown": out / "report.md", "html": out / "report.html"}
    json_text = suite.model_dump_json(indent=2)
    atomic_write(paths["results"], lambda p: p.write_text(json_text + "\n", encoding="utf-8"))
    md = render_markdown(suite)
    atomic_write(paths["markdown"], lambda p: p.write_text(md, encoding="utf-8"))
    page = render_html(suite)
    atomic_write(paths["html"], lambda p: p.write_text(page, encoding="utf-8"))
    return paths


def write_region(path: str | Path, name: str, content: str, *, heading: str = "") -> None:
    """Put ``content`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in the Markdown file ``path``
    (the generated part of a hand-written page, e.g. a benchmark's table in BENCHMARKS.md); where the region
    is not there yet, ``heading`` and the region are appended."""
    path = Path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{begin}\n{content}{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + heading + block + "\n"
    path.write_text(text, encoding="utf-8")

