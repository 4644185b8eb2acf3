"""Typed lab results: what a lab measured, saved as JSON and rendered by ``trainlab.report``.

A lab returns a `LabResult`: prose, tables, figures (PNG files next to results.json), the raw
numbers, and `Claim`s that put a seed document's claim beside the value measured here.
Every result records the hardware, versions, config and seed that produced it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

import trainlab

Verdict = Literal["consistent", "not reproduced", "partly", "reproduced from the formula", "not measurable here", "n/a"]
#: "reproduced from the formula": the number comes from the source's own formula (no run measured it), so
#: agreement is by construction and says nothing about the hardware.


class Table(BaseModel):
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


class Figure(BaseModel):
    path: str = Field(description="relative to the folder holding results.json")
    caption: str


class Claim(BaseModel):
    """A claim from the seed documents beside the measurement that tests it."""

    claim: str
    source: str = Field(description="which seed document or paper makes the claim")
    measured: str
    verdict: Verdict
    why: str = Field("", description="why this hardware shows what it shows")


class LabResult(BaseModel):
    lab: str
    title: str
    status: Literal["ok", "skipped", "failed"] = "ok"
    error: str | None = None
    preset: str = "quick"
    device: str = "cpu"
    seed: int = 0
    started_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    wall_time_s: float = 0.0
    env: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    summary: list[str] = Field(default_factory=list, description="paragraphs, plain text")
    claims: list[Claim] = Field(default_factory=list)
    tables: list[Table] = Field(default_factory=list)
    figures: list[Figure] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict, description="raw measured numbers")


class SuiteResult(BaseModel):
    trainlab_version: str = trainlab.__version__
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    command: str = ""
    env: dict[str, Any] = Field(default_factory=dict)
    labs: list[LabResult] = Field(default_factory=list)
