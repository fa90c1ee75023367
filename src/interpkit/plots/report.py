"""Self-contained HTML reports: plotly's JavaScript embedded once, works with no network.

>>> from interpkit.plots.report import write_report
>>> write_report("runs/x/report.html", "My run", [("Head patching", res.figure())], res.provenance)  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from interpkit.results import write_text_atomic

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; }
"""


def _section_html(body: Any, first_figure: bool) -> tuple[str, bool]:
    if hasattr(body, "to_html"):
        return body.to_html(full_html=False, include_plotlyjs="inline" if first_figure else False), False
    if isinstance(body, dict):
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in body.items()
        )
        return f"<table>{rows}</table>", first_figure
    return f"<p>{html.escape(str(body))}</p>", first_figure


def write_report(
    path: str | os.PathLike,
    title: str,
    sections: Sequence[tuple[str, Any]],
    provenance: dict[str, Any] | None = None,
    command: str | None = None,
) -> Path:
    """Write one HTML file: a heading, each (heading, figure | table dict | text) section, provenance."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
    ]
    parts.append(f"<h1>{html.escape(title)}</h1>")
    first = True
    for heading, body in sections:
        chunk, first = _section_html(body, first)
        parts.append(f"<h2>{html.escape(heading)}</h2>{chunk}")
    if provenance is not None or command:
        block = dict(provenance or {})
        if command:
            block["command"] = command
        parts.append(f"<h2>Provenance</h2><pre>{html.escape(json.dumps(block, indent=2, default=str))}</pre>")
    parts.append("</body></html>")
    return write_text_atomic(path, "\n".join(parts))
