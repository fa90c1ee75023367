"""Plot functions: shapes, labels, the shared style (zero-centred diverging scale, hover, titles), reports."""

from __future__ import annotations

import json
import subprocess
import sys

import plotly.graph_objects as go
import pytest
import torch

from interpkit import plots
from interpkit.errors import ResultError
from interpkit.plots.report import Html, render_report, write_report
from interpkit.results import Result

TOKENS = ["<s>", "When", " Mary", " and", " John", " went", " John", " gave"]


def patch_result(direction: str = "denoise") -> Result:
    torch.manual_seed(0)
    return Result(
        torch.randn(3, len(TOKENS)),
        ("layer", "pos"),
        {"layer": ["L0", "L1", "L2"], "pos": TOKENS},
        metric="logit_diff",
        clean_value=3.0,
        corrupt_value=-1.0,
        kind="patch",
        meta={"site": "resid_pre", "direction": direction},
    )


def dla_result() -> Result:
    labels = ["embed", *[f"L{layer}H{h}" for layer in range(2) for h in range(3)], "L0.mlp", "L1.mlp", "bias"]
    torch.manual_seed(1)
    return Result(torch.randn(len(labels), 5), ("component", "batch"), {"component": labels}, metric="logit_diff")


def external_resources(text: str) -> list[str]:
    """Every src/href a browser would fetch (script contents are not parsed as tags)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#"))

    Parser().feed(text)
    return found


def test_import_plots_is_lazy():
    code = "import sys, interpkit.plots; print(any(m.split('.')[0] in ('plotly', 'torch') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_heatmap_tokens_on_axis_zero_centred_and_hover():
    res = patch_result()
    fig = res.figure()
    assert isinstance(fig, go.Figure)
    trace = fig.data[0]
    # repeated tokens are made distinct by position, the others shown as they are
    assert list(trace.x) == ["<s>", "When", " Mary", " and", " John (4)", " went", " John (6)", " gave"]
    assert trace.zmid == 0 and trace.zmin == -trace.zmax
    # a denoising result is shown as the change from the corrupt run it patched into (-1.0)
    change = res.scores + 1.0
    assert trace.zmax == pytest.approx(float(change.abs().max()))
    assert float(trace.z[1][2]) == pytest.approx(float(change[1, 2]), rel=1e-6)
    value = float(res.scores[1, 2])
    hover = trace.text[1][2]
    assert "L1" in hover and " Mary" in hover and f"change in logit_diff: {value + 1.0:.6g}" in hover
    assert f"logit_diff: {value:.4g}" in hover and f"normalised: {(value + 1.0) / 4.0:.4g}" in hover
    raw = plots.heatmap(res, relative=False).data[0]
    assert float(raw.z[1][2]) == pytest.approx(value, rel=1e-6)
    title = fig.layout.title.text
    assert "change in logit_diff" in title and "denoising" in title and "resid_pre" in title
    assert "noising: corrupt" in plots.heatmap(patch_result("noise")).layout.title.text


def test_heatmap_normalised_and_sequential():
    res = patch_result()
    fig = plots.heatmap(res, normalised=True)
    assert float(fig.data[0].z[0][0]) == pytest.approx((float(res.scores[0, 0]) + 1.0) / 4.0, rel=1e-5)
    seq = plots.heatmap(Result(torch.rand(2, 3), ("layer", "head")), signed=False)
    assert seq.data[0].zmin == 0 and seq.data[0].zmid is None
    with pytest.raises(ResultError, match="2-D"):
        plots.heatmap(Result(torch.zeros(3), ("layer",)))


def test_figure_for_folds_three_dims_and_bars_one():
    res = Result(torch.randn(2, 4, 3), ("layer", "pos", "head"), {"layer": ["L0", "L1"], "head": ["H0", "H1", "H2"]})
    fig = plots.figure_for(res)
    assert list(fig.data[0].y)[:3] == ["L0H0", "L0H1", "L0H2"] and len(fig.data[0].x) == 4
    bars = plots.figure_for(Result(torch.tensor([1.0, -2.0]), ("head",), {"head": ["H0", "H1"]}))
    assert isinstance(bars.data[0], go.Bar) and bars.data[0].marker.color[1] != bars.data[0].marker.color[0]


def test_attention_pattern_head_picker():
    pattern = torch.softmax(torch.randn(3, 8, 8), -1).tril()
    fig = plots.attention_pattern(pattern, TOKENS, ["L1H0", "L1H1", "L2H3"], scores=[0.9, 0.5, 0.1], score_name="ind")
    assert len(fig.data) == 3 and [t.visible for t in fig.data] == [True, False, False]
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["L1H0", "L1H1", "L2H3"]
    assert buttons[2].args[0]["visible"] == [False, False, True]
    z = fig.data[0].z
    assert z[0][5] is None or z[0][5] != z[0][5]  # future keys are blank (NaN), not zero
    assert "query: When" in fig.data[0].text[1][0] and "attention:" in fig.data[0].text[1][0]
    assert "ind 0.90" in fig.layout.title.text
    one = plots.attention_pattern(pattern[0], TOKENS)
    assert len(one.data) == 1 and not one.layout.updatemenus
    with pytest.raises(ResultError, match="tokens"):
        plots.attention_pattern(pattern, TOKENS[:-1])


def test_dla_bars_and_head_grid():
    res = dla_result()
    mean = res.scores.mean(1)
    fig = plots.dla_bars(res, top=4)
    labels = res.labels["component"]
    expected = [labels[i] for i in torch.argsort(mean.abs(), descending=True)[:4].tolist()]
    assert list(fig.data[0].x) == expected
    assert fig.data[0].error_y.array is not None and len(fig.data[0].error_y.array) == 4
    assert "Direct logit attribution" in fig.layout.title.text and "logit_diff" in fig.layout.title.text
    in_order = plots.dla_bars(res, top=None, sort=False)
    assert list(in_order.data[0].x) == labels
    grid = plots.head_grid(res)
    z = grid.data[0].z
    assert len(z) == 2 and len(z[0]) == 3
    assert z[1][2] == pytest.approx(float(mean[labels.index("L1H2")]), rel=1e-5)
    with pytest.raises(ResultError, match="no head components"):
        plots.head_grid(Result(torch.ones(2), ("component",), {"component": ["embed", "bias"]}))


def test_logit_lens_table_top_token_text():
    torch.manual_seed(2)
    logits = torch.randn(3, 4, 20) * 3
    vocab = [f"tok{i}" for i in range(20)]
    fig = plots.logit_lens_table(logits, decode=lambda ids: [vocab[i] for i in ids], tokens=TOKENS[:4], answer=7)
    top = logits.softmax(-1).argmax(-1)
    assert fig.data[0].text[2][1] == vocab[int(top[2, 1])]
    assert float(fig.data[0].z[2][1]) == pytest.approx(float(logits.softmax(-1)[2, 1].max()), rel=1e-5)
    assert "answer 'tok7'" in fig.data[0].customdata[0][0]
    res = Result(logits[:, None], ("component", "batch", "pos", "d_vocab"), {"component": ["L0", "L1", "L2"]})
    assert list(plots.logit_lens_table(res).data[0].y) == ["L0", "L1", "L2"]


def test_line_bands_and_probe_accuracy():
    fig = plots.line_bands([0, 1, 2], {"a": torch.rand(3, 4), "b": torch.rand(3)}, title="t", dashed=["b"])
    names = [t.name for t in fig.data]
    assert names == ["a band", "a", "b"]
    assert fig.data[2].line.dash == "dash"
    with pytest.raises(ResultError, match="shape"):
        plots.line_bands([0, 1], {"a": torch.rand(3)})
    values = torch.tensor([[[0.6, 0.05], [0.7, 0.02]], [[0.9, 0.01], [0.95, 0.01]]])  # (site, metric, stat)
    probe = Result(
        values,
        ("site", "metric", "stat"),
        {"site": ["L0.resid_post", "L1.resid_post"], "metric": ["accuracy", "auc"], "stat": ["value", "se"]},
        metric="accuracy",
        kind="probe",
        meta={"chance": 0.5, "method": "logistic"},
    )
    fig = plots.figure_for(probe)
    line = next(t for t in fig.data if t.name == "probe")
    assert list(line.y) == pytest.approx([0.6, 0.9]) and list(line.x) == ["L0.resid_post", "L1.resid_post"]
    band = next(t for t in fig.data if t.name == "probe band")
    assert max(band.y) == pytest.approx(0.9 + 1.96 * 0.01)
    assert any(s.y0 == 0.5 for s in fig.layout.shapes)  # chance line
    with_control = plots.probe_accuracy(probe, control=probe, metric="auc")
    assert {t.name for t in with_control.data} == {"probe", "probe band", "control", "control band"}


def test_report_embeds_plotly_once_and_escapes(tmp_path):
    figs = [patch_result().figure(), plots.dla_bars(dla_result())]
    text = render_report(
        "Run <1>",
        [
            ("Patching", figs[0]),
            ("More", [figs[1], "a <b> note"]),
            ("Rows", [{"a": 1, "b": 2.5}]),
            ("Raw", Html("<i>x</i>")),
        ],
        {"model": "toy", "weights_hash": "abc", "dtype": "float32", "seed": 3, "versions": {"torch": "2"}},
        command="python demo.py --n 4",
    )
    assert text.count("plotly.js v") == 1  # the library's header comment: embedded once
    assert external_resources(text) == []
    assert "Run &lt;1&gt;" in text and "a &lt;b&gt; note" in text and "<i>x</i>" in text
    for needle in ("weights hash", "abc", "float32", "python demo.py --n 4", "torch 2", "data-ik-errors"):
        assert needle in text
    path = write_report(tmp_path / "sub" / "report.html", "r", [("fig", figs[0])], {"seed": 0})
    assert path.read_text().startswith("<!DOCTYPE html>") and oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary file left behind
    assert json.loads(json.dumps({"ok": True}))


def test_report_accepts_results_directly():
    text = render_report("r", [("result", patch_result())])
    assert text.count('class="plotly-graph-div"') == 1


def test_save_static_reports_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(plots.PlotExportError, match="suffix"):
        plots.save_static(go.Figure(), tmp_path / "x.gif")
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido now raises ImportError
    ok, why = plots.static_export_available()
    assert not ok and "pip install kaleido" in why
    with pytest.raises(plots.PlotExportError, match="pip install kaleido"):
        plots.save_static(go.Figure(), tmp_path / "x.png")
