"""Open a report in headless Chromium: it must load with no JavaScript error and every plot must draw.

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it). Without it
the tests skip and say so. ``INTERPKIT_CHROMIUM`` points them at another Chrome/Chromium.
The report's inline status script writes what the page saw onto ``<body>``; the test reads it
from the DOM Chromium dumps after its virtual-time budget.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from interpkit import plots
from interpkit.plots.report import write_report
from interpkit.results import Result

pytestmark = pytest.mark.slow


def chromium() -> str | None:
    for candidate in (os.environ.get("INTERPKIT_CHROMIUM"), "chromium", "chromium-browser", "/usr/bin/chromium"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


needs_chromium = pytest.mark.skipif(
    chromium() is None,
    reason="headless Chromium is not installed: apt-get install chromium (Debian), or set INTERPKIT_CHROMIUM",
)


def every_kind_of_figure() -> list[tuple[str, object]]:
    torch.manual_seed(0)
    tokens = ["<s>", "When", " Mary", " and", " John", " went", " John", " gave"]
    patch = Result(
        torch.randn(3, 8),
        ("layer", "pos"),
        {"layer": ["L0", "L1", "L2"], "pos": tokens},
        metric="logit_diff",
        clean_value=2.0,
        corrupt_value=0.0,
        kind="patch",
        meta={"site": "resid_pre", "direction": "denoise"},
    )
    pattern = torch.softmax(torch.randn(4, 8, 8), -1).tril()
    labels = ["embed", *[f"L{layer}H{h}" for layer in range(2) for h in range(2)], "L1.mlp"]
    dla = Result(torch.randn(len(labels), 3), ("component", "batch"), {"component": labels}, metric="logit_diff")
    return [
        ("Patching heatmap", patch.figure()),
        ("Head picker", plots.attention_pattern(pattern, tokens, ["L0H0", "L0H1", "L1H0", "L1H1"])),
        ("DLA", [plots.dla_bars(dla), plots.head_grid(dla)]),
        ("Logit lens", plots.logit_lens_table(torch.randn(3, 8, 30), tokens=tokens)),
        ("Probe", plots.probe_accuracy(torch.rand(4, 3), control=torch.rand(4, 3) * 0.4, chance=0.5)),
        ("Table", {"clean": 2.0, "corrupt": 0.0}),
    ]


def render_in_chromium(path, tmp_path) -> dict:
    """Load ``path`` headless; the status attributes the page wrote onto <body>."""
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        path.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, f"chromium dumped no <body>: {proc.stdout[:500]!r}"
    attrs = dict(re.findall(r'(data-ik-[a-z]+)="([^"]*)"', body.group(1)))
    assert attrs, "the report's status script did not run (no data-ik-* attributes on <body>)"
    return {
        "errors": json.loads(html.unescape(attrs["data-ik-errors"])),
        "plots": int(attrs["data-ik-plots"]),
        "drawn": int(attrs["data-ik-drawn"]),
        "svg_count": proc.stdout.count('class="main-svg"'),
    }


@needs_chromium
def test_report_loads_without_errors_and_every_plot_draws(tmp_path):
    sections = every_kind_of_figure()
    n_figures = 6
    path = write_report(
        tmp_path / "report.html", "Browser test", sections, {"model": "none", "seed": 0}, command="pytest"
    )
    status = render_in_chromium(path, tmp_path)
    assert status["errors"] == []
    assert status["plots"] == n_figures
    assert status["drawn"] == n_figures
    assert status["svg_count"] >= n_figures


@needs_chromium
def test_broken_report_is_caught(tmp_path):
    """The check itself works: a page with a failing script reports the error."""
    from interpkit.plots.report import Html

    path = write_report(tmp_path / "bad.html", "Broken", [("x", Html("<script>undefinedFunction();</script>"))])
    status = render_in_chromium(path, tmp_path)
    assert any("undefinedFunction" in e for e in status["errors"])


@needs_chromium
def test_static_export_with_kaleido(tmp_path):
    pytest.importorskip("kaleido", reason="kaleido is optional (pip install kaleido) and not installed")
    out = plots.save_static(every_kind_of_figure()[0][1], tmp_path / "heatmap.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
