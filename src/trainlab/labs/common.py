"""Scaffolding every lab shares: presets, parts, CPU thread pinning, claims tables, run-folder slugs.

A lab is a thin recipe over components; what is the same in every lab lives here, once:

* `resolve_preset(table, name)`: a lab's per-preset settings. An unknown preset is a
  `trainlab.errors.UserError` (never a silent fallback to another preset, which would change
  what is measured without saying so).
* `Part`: one section of a lab's report (summary, claims, tables, figures, raw data, wall time);
  `merge_parts` turns parts into the fields of a `LabResult`.
* `pinned_threads(device, n)`: pin torch's intra-op threads on a CPU while a lab measures (restored
  afterwards). Small models on a small, shared CPU time 5-10x slower, and erratically, when OpenMP
  threads spin for thousands of tiny operators; every configuration runs with the same setting.
* `timed(log, name)`: wall time of a block into ``log[name]``.
* `claims_markdown`, `table_markdown`, `part_markdown`, `show`: claims beside measurements and
  tables as Markdown (notebooks print parts with these).
* `slug(label)`: a display label as a run-folder name, ``[a-z0-9-]+`` ("sigmoid, no NLL, lr/10"
  -> ``sigmoid-no-nll-lr-10``). Labels are for display; slugs name folders and keys.
* `mib`, `pct`: the number formats the reports use.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from trainlab.errors import UserError
from trainlab.results import Claim, Figure, Table

T = TypeVar("T")
MiB = 2**20


def resolve_preset(table: Mapping[str, T], name: str, *, lab: str = "") -> T:
    """``table[name]``, or a `UserError` naming the presets that exist."""
    if name not in table:
        where = f" for {lab}" if lab else ""
        raise UserError(f"unknown preset {name!r}{where}; expected one of: {', '.join(table)}")
    return table[name]


def slug(label: str) -> str:
    """A folder- and key-safe name for a display label: lower case, ``[a-z0-9-]+``.

    Runs of anything else become one ``-``; a label with no letter or digit is a `UserError`.
    """
    s = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    if not s:
        raise UserError(f"cannot name a run folder after {label!r}: it has no letter or digit")
    return s


@dataclass
class Part:
    """One part of a lab: what goes into its report section."""

    key: str
    title: str
    summary: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0


def merge_parts(parts: Sequence[Part]) -> dict[str, Any]:
    """``summary``, ``claims``, ``tables``, ``figures`` and ``data`` of a `LabResult` from its parts,
    plus a "Part wall times" table."""
    tables = [t for p in parts for t in p.tables]
    tables.append(Table(title="Part wall times", columns=["part", "seconds"],
                        rows=[[p.title, round(p.wall_time_s, 1)] for p in parts]))
    return {"summary": [line for p in parts for line in p.summary],
            "claims": [c for p in parts for c in p.claims], "tables": tables,
            "figures": [f for p in parts for f in p.figures],
            "data": {p.key: p.data | {"wall_time_s": p.wall_time_s} for p in parts}}


@contextlib.contextmanager
def pinned_threads(device: torch.device | str, n: int | None) -> Iterator[None]:
    """On a CPU, at most ``n`` intra-op threads inside the block (``None``: leave torch's setting)."""
    if torch.device(device).type != "cpu" or n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(min(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def timed(log: dict[str, float], name: str) -> Iterator[None]:
    """Wall seconds of the block, stored in ``log[name]`` (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        log[name] = time.perf_counter() - start


def mib(n: float) -> float:
    """Bytes as MiB, rounded for tables."""
    return round(n / MiB, 3)


def pct(x: float) -> str:
    """A signed relative change ("+12%"), "n/a" when not finite."""
    return f"{x:+.0%}" if math.isfinite(x) else "n/a"


def claims_markdown(claims: Sequence[Claim]) -> list[str]:
    """Claims beside measurements as Markdown table lines."""
    if not claims:
        return []
    lines = ["| claim | source | measured here | verdict | why |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c.claim} | {c.source} | {c.measured} | {c.verdict} | {c.why} |" for c in claims]
    return [*lines, ""]


def table_markdown(t: Table) -> list[str]:
    """A table as Markdown lines (title, header, rows, note)."""
    from trainlab.report.render import fmt_value

    lines = [f"**{t.title}**", "", "| " + " | ".join(t.columns) + " |",
             "| " + " | ".join("---" for _ in t.columns) + " |"]
    lines += ["| " + " | ".join(fmt_value(v) for v in row) + " |" for row in t.rows]
    return [*lines, "", f"_{t.note}_" if t.note else "", ""]


def part_markdown(part: Part) -> str:
    """A part as Markdown: summary, claims beside measurements, tables, figure paths (for notebooks)."""
    lines = [f"## {part.title}", "", *part.summary, "", *claims_markdown(part.claims)]
    for t in part.tables:
        lines += table_markdown(t)
    lines += [f"![{f.caption}]({f.path})" for f in part.figures]
    return "\n".join(lines)


def show(part: Part | Sequence[Table]) -> None:
    """Print a part or tables (Markdown and figures inline under Jupyter, plain text elsewhere)."""
    if isinstance(part, Part):
        text, figures = part_markdown(part), part.figures
    else:
        text, figures = "\n".join(line for t in part for line in table_markdown(t)), []
    try:
        from IPython import get_ipython
        from IPython.display import Image, Markdown, display

        if get_ipython() is None:
            raise ImportError
    except ImportError:
        print(text)
        return
    display(Markdown(text))
    for f in figures:
        display(Image(filename=f.path))


__all__ = ["MiB", "Part", "claims_markdown", "merge_parts", "mib", "part_markdown", "pct", "pinned_threads",
           "resolve_preset", "show", "slug", "table_markdown", "timed"]
