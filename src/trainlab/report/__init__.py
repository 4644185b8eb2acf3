"""Render lab results (results.json) into report.md and report.html, and draw their plots."""

from trainlab.report.render import load_suite, render_html, render_markdown, write_region, write_report

__all__ = ["load_suite", "render_html", "render_markdown", "write_region", "write_report"]
