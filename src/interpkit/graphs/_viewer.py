"""The attribution-graph viewer: one self-contained HTML page (no network, no CDN).

The page embeds the graph in circuit-tracer's JSON schema (pruned by default) and, optionally,
feature dashboards (``{node_id or "layer/unit": html}``, e.g. those of the dictionaries package),
plus its own script and style (``viewer.js``, ``viewer.css``). Nodes are laid out by layer (rows,
embeddings at the bottom, logits at the top) and position (columns). Clicking a node shows its
strongest inputs and outputs and its dashboard; shift-click selects nodes, "Group" makes a
supernode of the selection and "Export" writes the grouping (circuit-tracer's
``qParams.supernodes``: ``[name, node_id, ...]``) to a text box and a download link. Opened with
``#selftest`` the page clicks through itself and writes what it saw onto ``<body>`` (the tests
read it from headless Chromium).

    >>> graph.viewer("runs/graph/viewer.html")        # doctest: +SKIP
"""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interpkit.graphs._graph import Graph

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{css}</style></head>
<body data-ik-errors="[]">
<header><h1>{title}</h1><div id="ik-summary"></div><div class="meta">{scores}</div></header>
<main>
<div id="ik-wrap"><svg id="ik-svg" xmlns="http://www.w3.org/2000/svg"></svg></div>
<aside><p id="ik-empty">Click a node to see its strongest inputs and outputs; shift-click to select nodes
for a supernode.</p><div id="ik-node" hidden></div></aside>
</main>
<div id="ik-tools">
<span id="ik-selection">0 selected</span>
<input id="ik-group-name" placeholder="supernode name"> <button id="ik-group">Group selected</button>
<button id="ik-export-btn">Export grouping</button> <a id="ik-download" download="supernodes.json">download</a>
<ul id="ik-groups"></ul>
<textarea id="ik-export" readonly></textarea>
</div>
<script type="application/json" id="ik-graph">{graph}</script>
<script type="application/json" id="ik-dashboards">{dashboards}</script>
<script>{js}</script>
</body></html>
"""


def _embedded(value: Any) -> str:
    """JSON safe inside a <script> element (no ``</`` can end it early)."""
    from interpkit.results import json_text

    return json_text(value, indent=None).replace("</", "<\\/")


def write_viewer(
    graph: Graph,
    path: str | Path,
    *,
    prune: bool = True,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    dashboards: dict[str, str] | None = None,
    title: str | None = None,
) -> Path:
    """Write the viewer of ``graph`` (pruned unless ``prune=False``) to ``path``; returns the path."""
    from interpkit.results import write_text_atomic

    shown = graph.prune(node_threshold, edge_threshold) if prune else graph
    data = shown.to_json()
    scores = ", ".join(f"{k} {v:.3f}" for k, v in graph.scores.items() if isinstance(v, float))
    check = graph.verification or {}
    if "spearman_frozen" in check:
        scores += f" · verification: Spearman {check['spearman_frozen']:.2f} (frozen attention), "
        scores += f"{check['spearman_unfrozen']:.2f} (unfrozen) on {len(check['nodes'])} nodes"
    assets = resources.files("interpkit.graphs")
    page = _PAGE.format(
        title=html.escape(title or f"Attribution graph · {''.join(graph.token_strs)}"),
        scores=html.escape(scores),
        css=assets.joinpath("viewer.css").read_text(encoding="utf-8"),
        js=assets.joinpath("viewer.js").read_text(encoding="utf-8"),
        graph=_embedded(data),
        dashboards=_embedded({str(k): str(v) for k, v in (dashboards or {}).items()}),
    )
    return write_text_atomic(path, page)
