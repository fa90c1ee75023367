"""Self-contained HTML reports: plotly's JavaScript embedded once, works with no network.

A report is a title, an optional introduction, sections and a provenance block (model and
weights hash, dtype, task and its hash, seed, package versions, command line). A section body
is a plotly figure, a Result (its default figure), a ``{key: value}`` table, a list of row dicts
(a table with a header), text (paragraphs split on blank lines), :class:`Html` (trusted markup)
or a list of these. The file is written atomically.

Every report carries a few lines of inline script that record JavaScript errors and count the
plots that drew, as ``data-ik-errors`` / ``data-ik-plots`` / ``data-ik-drawn`` on ``<body>``:
the browser test (and anyone debugging a report) reads them from the rendered DOM.

>>> from interpkit.plots.report import write_report
>>> write_report("runs/x/report.html", "My run", [("Head patching", res.figure())], res.provenance)  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from interpkit.results import write_text_atomic

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1150px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } .intro { color: #444; }
h2 { font-size: 1.2em; margin-top: 2.2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
nav ol { columns: 2; font-size: 0.92em; } nav a { color: #2166ac; text-decoration: none; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.82em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f6f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figure { margin: 0.8em 0; } details summary { cursor: pointer; color: #555; }
"""

# Records errors and plot counts on <body> for the browser test; runs before any plot script.
_STATUS_SCRIPT = """
(function () {
  var errors = [];
  function record(msg) { errors.push(String(msg)); update(); }
  function update() {
    if (!document.body) { return; }
    var plots = document.querySelectorAll('.js-plotly-plot');
    var drawn = 0;
    plots.forEach(function (p) { if (p.querySelector('svg.main-svg')) { drawn += 1; } });
    document.body.setAttribute('data-ik-errors', JSON.stringify(errors));
    document.body.setAttribute('data-ik-plots', String(plots.length));
    document.body.setAttribute('data-ik-drawn', String(drawn));
  }
  window.addEventListener('error', function (e) { record(e.message || 'error'); });
  window.addEventListener('unhandledrejection', function (e) { record('unhandled rejection: ' + e.reason); });
  var consoleError = console.error;
  console.error = function () { record(Array.prototype.join.call(arguments, ' ')); consoleError.apply(console, arguments); };
  window.addEventListener('load', function () { update(); setTimeout(update, 500); setTimeout(update, 2000); });
})();
"""

_PROVENANCE_KEYS = (
    ("model", "model"),
    ("model_name", "model name"),
    ("weights_hash", "weights hash (sha256)"),
    ("dtype", "dtype"),
    ("device", "device"),
    ("devices", "devices (device_map)"),
    ("task", "task"),
    ("task_hash", "task hash (sha256)"),
    ("n_examples", "examples"),
    ("seed", "seed"),
    ("created", "created"),
    ("command", "command"),
)


class Html(str):
    """Markup written into a report as is (only for HTML you built yourself)."""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"<td class='num'>{value:.6g}</td>"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"<td class='num'>{value}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _kv_table(body: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th>{_cell(v)}</tr>" for k, v in body.items())
    return f"<table>{rows}</table>"


def _rows_table(rows: Sequence[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [str(c) for c in row if str(c) not in columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c, "")) for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class _Renderer:
    """Turns section bodies into HTML, embedding plotly's JavaScript with the first figure only."""

    def __init__(self) -> None:
        self.js_embedded = False

    def figure(self, fig: Any) -> str:
        chunk = fig.to_html(
            full_html=False,
            include_plotlyjs=not self.js_embedded,
            config={"displaylogo": False, "responsive": True},
        )
        self.js_embedded = True
        return f"<div class='figure'>{chunk}</div>"

    def body(self, body: Any) -> str:
        if isinstance(body, Html):
            return str(body)
        if hasattr(body, "to_html") and hasattr(body, "data"):
            return self.figure(body)
        if hasattr(body, "scores") and hasattr(body, "figure"):
            return self.figure(body.figure())
        if isinstance(body, dict):
            return _kv_table(body)
        if isinstance(body, (list, tuple)):
            if body and all(isinstance(row, dict) for row in body):
                return _rows_table(body)
            return "".join(self.body(item) for item in body)
        paragraphs = [p.strip() for p in str(body).split("\n\n") if p.strip()]
        return "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)


def _anchor(heading: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "section"
    anchor, i = base, 2
    while anchor in used:
        anchor, i = f"{base}-{i}", i + 1
    used.add(anchor)
    return anchor


def _provenance_html(provenance: dict[str, Any]) -> str:
    summary = {label: provenance[key] for key, label in _PROVENANCE_KEYS if provenance.get(key) is not None}
    versions = provenance.get("versions") or {}
    if versions:
        summary["versions"] = ", ".join(f"{k} {v}" for k, v in versions.items())
    full = html.escape(json.dumps(provenance, indent=2, default=str))
    return f"{_kv_table(summary)}<details><summary>full provenance (JSON)</summary><pre>{full}</pre></details>"


def render_report(
    title: str,
    sections: Sequence[tuple[str, Any]],
    provenance: dict[str, Any] | None = None,
    command: str | None = None,
    intro: str | None = None,
) -> str:
    """The report as one HTML string (what :func:`write_report` writes)."""
    renderer = _Renderer()
    used: set[str] = set()
    chunks, toc = [], []
    for heading, body in sections:
        anchor = _anchor(heading, used)
        toc.append(f"<li><a href='#{anchor}'>{html.escape(heading)}</a></li>")
        chunks.append(f"<section id='{anchor}'><h2>{html.escape(heading)}</h2>{renderer.body(body)}</section>")
    block = dict(provenance or {})
    if command:
        block["command"] = command
    if block:
        toc.append("<li><a href='#provenance'>Provenance</a></li>")
        chunks.append(f"<section id='provenance'><h2>Provenance</h2>{_provenance_html(block)}</section>")
    head = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style><script>{_STATUS_SCRIPT}</script></head><body>"
    )
    parts = [head, f"<h1>{html.escape(title)}</h1>"]
    if intro:
        parts.append(f"<div class='intro'>{renderer.body(intro)}</div>")
    if len(toc) > 2:
        parts.append(f"<nav><ol>{''.join(toc)}</ol></nav>")
    parts += [*chunks, "</body></html>"]
    return "\n".join(parts)


def write_report(
    path: str | os.PathLike,
    title: str,
    sections: Sequence[tuple[str, Any]],
    provenance: dict[str, Any] | None = None,
    command: str | None = None,
    intro: str | None = None,
) -> Path:
    """Write one self-contained HTML file: title, intro, each ``(heading, body)`` section, provenance."""
    out = write_text_atomic(path, render_report(title, sections, provenance, command, intro))
    out.chmod(0o644)  # a report is for reading: the temporary file it was renamed from was private
    return out
