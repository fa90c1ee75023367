"""The attribution-graph viewer in headless Chromium: it loads with no error, clicking a node fills
the panel with its inputs and dashboard, and grouping nodes into a supernode exports the grouping.

Needs Debian's ``chromium`` (skips without it), as ``test_report_browser.py``. The page's own
``#selftest`` script clicks through it and writes what it saw onto ``<body>``.
"""

from __future__ import annotations

import html
import json
import re
import subprocess

import pytest

import interpkit as ik
from test_report_browser import chromium, needs_chromium

pytestmark = pytest.mark.slow


def load(path, tmp_path, hash_="#selftest") -> dict:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        path.resolve().as_uri() + hash_,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:500]
    return {k: html.unescape(v) for k, v in re.findall(r'(data-ik-[a-z]+)="([^"]*)"', body.group(1))}


@needs_chromium
def test_viewer_loads_and_a_click_fills_the_panel(tiny_llama, tmp_path):
    graph = ik.graphs.attribute(tiny_llama, [3, 17, 5, 9, 11, 2], max_feature_nodes=200, verify=0)
    pruned = graph.prune()
    dashboards = {n.id: f"<h1>dashboard of {n.id}</h1>" for n in pruned.nodes}
    path = graph.viewer(tmp_path / "viewer.html", dashboards=dashboards)
    text = path.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    status = load(path, tmp_path)
    assert json.loads(status["data-ik-errors"]) == []
    assert int(status["data-ik-nodes"]) == len(pruned) and int(status["data-ik-links"]) == pruned.n_edges
    assert status["data-ik-panel"] == "filled" and status["data-ik-clicked"] in {n.id for n in pruned.nodes}
    assert int(status["data-ik-inputs"]) >= 1 and status["data-ik-dashboard"] == "shown"
    exported = json.loads(status["data-ik-export"])
    assert exported["supernodes"][0][0] == "selftest" and len(exported["supernodes"][0]) == 3


@needs_chromium
def test_broken_viewer_is_caught(tiny_llama, tmp_path):
    """The check itself works: a page whose script fails reports the error."""
    graph = ik.graphs.attribute(tiny_llama, [3, 17, 5], max_feature_nodes=20, verify=0)
    path = graph.viewer(tmp_path / "viewer.html")
    path.write_text(path.read_text().replace('id="ik-graph">', 'id="ik-graph">{broken'))
    status = load(path, tmp_path)
    assert json.loads(status["data-ik-errors"])
