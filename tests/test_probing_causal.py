"""Probing: interventions (removal, INLP, steering, DAS), plots, the CLI and the experiment, on tiny models."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from interpkit import probing as P
from interpkit.errors import ResultError
from interpkit.hooks import hooks
from interpkit.probing._collect import resolve_sites
from interpkit.probing._intervene import Edit, dataset_task, run_items
from test_probing import tiny_text_model

ROOT = Path(__file__).resolve().parents[1]
DATA = [json.loads(line) for line in (ROOT / "experiments/data/subject_number.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def text_model():
    return tiny_text_model()


@pytest.fixture(scope="module")
def number_ds(text_model):
    rows = DATA[::3]  # 80 examples, both classes, every noun
    return P.collect(
        text_model,
        [P.strip_marks(r["text"])[0] for r in rows],
        [r["label"] for r in rows],
        classes=["singular", "plural"],
        answers=[r["answer"] for r in rows],
        wrongs=[r["wrong"] for r in rows],
    )


@pytest.fixture(scope="module")
def probes(number_ds):
    return P.fit_probes(number_ds)


def test_fast_unembedding_equals_the_full_forward(text_model, tiny_gpt2):
    assert text_model.anatomy.tail_is_exact and tiny_gpt2.anatomy.tail_is_exact


def test_run_items_edits_only_its_rows_and_matches_a_hooked_forward(text_model, number_ds):
    task = dataset_task(text_model, number_ds)
    spec = resolve_sites(text_model, ["L0.resid_post"])[0]
    u = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(0)), dim=0)
    edit = Edit(spec, lambda x, item: x + 3.0 * u)
    pos = [list(p) for p in number_ds.source["positions"]]
    items = [(e, c) for c in (0, 1) for e in range(6)]
    values, _ = run_items(text_model, task, items, [None, edit], pos, batch_size=5)
    for e in (0, 4):  # reference: one example alone, full forward, its own hook
        ids = torch.tensor([number_ds.source["ids"][e]])

        def add(act, hook, e=e):
            out = act.clone()
            out[0, pos[e]] += 3.0 * u
            return out

        with torch.inference_mode():
            plain = text_model(ids)[0, -1]
            with hooks(text_model, fwd=[("blocks.0.hook_resid_post", add)]):
                edited = text_model(ids)[0, -1]
        a, w = task.answer[e], task.wrong[e]
        assert float(values[e]) == pytest.approx(float(plain[a] - plain[w]), abs=1e-4)
        assert float(values[6 + e]) == pytest.approx(float(edited[a] - edited[w]), abs=1e-4)


def test_inlp_removes_linear_information_and_remove_reports_all_quantities(text_model, number_ds, probes):
    curve = P.inlp(number_ds, n_iter=3)
    basis = curve.extras["basis"]
    assert basis.shape == (2, 32, 3)
    assert torch.allclose(basis[0].T @ basis[0], torch.eye(3), atol=1e-4)  # orthonormal
    res = P.remove(text_model, number_ds, probes, sites=["L0.resid_post"], seed=0)
    q = res.labels["quantity"]
    assert res.dims == ("site", "quantity", "stat") and "metric_removed" in q and "refit_accuracy" in q
    assert res.scores[0, q.index("rank"), 0] == 1
    # The original probe can read nothing once its direction is projected out of its own site.
    down = P.remove(text_model, number_ds, probes, sites=["L1.resid_post"], read_site="L1.resid_post")
    assert down.scores[0, q.index("downstream_removed"), 0] <= 0.75
    inlp = P.remove(text_model, number_ds, probes, sites=["L1.resid_post"], method="inlp", n_iter=2)
    assert inlp.scores[0, q.index("rank"), 0] == 2


def test_steer_sweep_is_monotone_in_the_direction_of_the_probe(text_model, number_ds, probes):
    res = P.steer(text_model, number_ds, probes, "L1.resid_post", scales=(-50, 0, 50))
    assert res.dims == ("scale", "class", "stat") and res.labels["class"] == ["singular", "plural"]
    assert res.meta["sd"] > 0
    zero = res.labels["scale"].index("0")
    # Steering moves the two classes' metrics in opposite directions (answers are opposite tokens).
    moved = res.scores[:, 0, 0] - res.scores[zero, 0, 0], res.scores[:, 1, 0] - res.scores[zero, 1, 0]
    assert float(moved[0][0]) * float(moved[1][0]) <= 0


def test_following_weights_fold_in_each_norms_real_gain(tiny_gemma, tiny_llama, tiny_phi):
    from interpkit.models.anatomy import norm_affine

    def _norm_weight(module):  # a norm's measured gain, as following_weights reads it
        return norm_affine(module)[0].detach().float()

    ln1 = tiny_gemma.bridge.blocks[0].ln1._original_component
    torch.testing.assert_close(_norm_weight(tiny_gemma.bridge.blocks[0].ln1), 1 + ln1.weight.detach().float())
    llama_ln1 = tiny_llama.bridge.blocks[0].ln1._original_component
    assert torch.equal(_norm_weight(tiny_llama.bridge.blocks[0].ln1), llama_ln1.weight.detach().float())
    c = tiny_gemma.cfg
    m = P.following_weights(tiny_gemma, "L0.resid_post")  # block 1's q, k, v, then MLP in and gate
    q = tiny_gemma.bridge.W_Q[1].detach().float().permute(0, 2, 1).reshape(-1, c.d_model)
    gain = _norm_weight(tiny_gemma.bridge.blocks[1].ln1)
    torch.testing.assert_close(m[: c.n_heads * c.d_head], q * gain[None, :])
    # Phi's MLP reads the block's one norm: its rows are scaled by ln1's gain, not left unscaled
    phi = tiny_phi.cfg
    rows = P.following_weights(tiny_phi, "L0.resid_pre")
    assert rows.shape == ((phi.n_heads + 2 * phi.n_kv_heads) * phi.d_head + phi.d_mlp, phi.d_model)
    w_in = tiny_phi.bridge.W_in[0].detach().float().T * _norm_weight(tiny_phi.bridge.blocks[0].ln1)[None, :]
    torch.testing.assert_close(rows[-phi.d_mlp :], w_in - w_in.mean(1, keepdim=True))


def test_following_weights_and_the_rowspace_split(text_model, tiny_gpt2):
    assert P.following_weights(text_model, "L0H1").shape == (32, 8)
    assert P.following_weights(text_model, "blocks.0.mlp.hook_post").shape == (32, 64)
    assert P.following_weights(text_model, "L0.resid_post").shape[1] == 32
    assert P.following_weights(text_model, "L1.resid_post").shape == (len(text_model.tokenizer), 32)
    w = P.following_weights(text_model, "blocks.0.mlp.hook_post")  # 64 hidden units read by a 32-d W_out
    u = torch.nn.functional.normalize(torch.randn(64), dim=0)
    row, null = P.rowspace_split(u, w)
    assert float(row.norm() ** 2 + null.norm() ** 2) == pytest.approx(1.0, abs=1e-5)
    assert float((w @ null).norm()) < 1e-4 and float(row @ null) == pytest.approx(0.0, abs=1e-5)
    gpt = P.following_weights(tiny_gpt2, "L0.resid_pre")
    assert float((gpt @ torch.ones(32)).norm()) < 1e-3  # LayerNorm never reads the all-ones direction


def test_das_learns_at_the_last_site(text_model, number_ds, probes):
    res = P.das(text_model, number_ds, "L1.resid_post", probes=probes, steps=25, lr=0.1, n_pairs=48, seed=0)
    d = res.labels["direction"]
    assert d == ["das", "random", "probe", "das_rowspace", "das_nullspace"]
    q = res.labels["quantity"]
    assert res.scores[0, q.index("cos_with_das"), 0] == pytest.approx(1.0)
    assert res.extras["loss"][-5:].mean() < res.extras["loss"][:5].mean()  # the direction was trained
    mlp = P.das(text_model, number_ds, "blocks.0.mlp.hook_post", steps=2, n_pairs=16)
    frac = mlp.scores[0, q.index("nullspace_fraction"), 0] + mlp.scores[0, q.index("rowspace_fraction"), 0]
    assert float(frac) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(P.ProbeError, match="exactly one probed position"):
        P.das(
            text_model,
            P.collect(text_model, ["a b", "c d", "e f", "g h"] * 3, [0, 1] * 6, positions="all"),
            "L0.resid_post",
        )


def test_figures(number_ds):
    import plotly.graph_objects as go

    res = P.probe(number_ds)
    shuffled = P.shuffled_labels(number_ds, n_shuffles=2)
    figs = [
        P.accuracy_by_layer(res, shuffled=shuffled),
        P.pca_figure(P.pca(number_ds, "L1.resid_post")),
        P.learning_curve_figure(P.learning_curve(number_ds, sizes=[16, 48])),
        P.inlp_figure(P.inlp(number_ds, n_iter=1)),
    ]
    assert all(isinstance(f, go.Figure) for f in figs)
    with pytest.raises(ResultError, match="expected a 'probe_steering' Result"):
        P.steering_figure(res)


def test_cli_collect_then_probe(native_tiny, tmp_path, monkeypatch):
    from interpkit.models import save_native
    from interpkit.probing.cli import add_parsers

    model_dir = save_native(native_tiny, tmp_path / "model")
    data = tmp_path / "data.jsonl"
    rows = [{"ids": [i % 50 + 1, 3, (7 * i) % 50 + 1], "label": ["x", "y"][i % 2]} for i in range(40)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")

    def with_model(p):
        p.add_argument("--model")
        p.add_argument("--device", default=None)
        p.add_argument("--dtype", default=None)

    add_parsers(sub, with_model)
    args = parser.parse_args(
        ["probe-collect", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "ds")]
    )
    assert args.fn(args) == 0
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(r["ids"][-1] % 2) for r in rows) + "\n")
    args = parser.parse_args(
        ["probe", "--acts", str(tmp_path / "ds"), "--labels", str(labels), "--out", str(tmp_path / "out"), "--controls"]
    )
    assert args.fn(args) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["kind"] == "probe" and (tmp_path / "out" / "control.json").is_file()
    assert "js-plotly-plot" in (tmp_path / "out" / "report.html").read_text()
    args = parser.parse_args(["probe", "--acts", str(tmp_path), "--out", str(tmp_path / "o2")])
    with pytest.raises(P.ProbeError, match="neither a probe dataset"):
        args.fn(args)
    # An activation store written by `interpkit cache` works the same, with labels per stored example.
    from interpkit.cache import harvest

    harvest(
        native_tiny, [r["ids"] for r in rows], ["L0.resid_post", "L1.resid_post"], tmp_path / "store", progress=False
    )
    args = parser.parse_args(
        ["probe", "--acts", str(tmp_path / "store"), "--labels", str(labels), "--out", str(tmp_path / "o3")]
    )
    assert args.fn(args) == 0
    assert json.loads((tmp_path / "o3" / "result.json").read_text())["labels"]["site"] == [
        "L0.resid_post",
        "L1.resid_post",
    ]
    args = parser.parse_args(["probe", "--acts", str(tmp_path / "store"), "--out", str(tmp_path / "o4")])
    with pytest.raises(P.ProbeError, match="give --labels"):
        args.fn(args)


def test_experiment_end_to_end_on_a_tiny_model(text_model, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("probe_sweep", ROOT / "experiments" / "probe_sweep.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules["probe_sweep"] = script
    spec.loader.exec_module(script)
    data = tmp_path / "small.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in DATA[::4]) + "\n")
    cfg = script.Config(
        model="tiny",
        data=str(data),
        n_shuffles=2,
        causal_layers="0,1",
        das_steps=2,
        inlp_iter=1,
        out=str(tmp_path / "run"),
    )
    out = script.run(cfg, model=text_model)
    path = script.write_outputs(cfg, out, "test")
    summary = json.loads(path.read_text())
    assert len(summary["last"]["accuracy"]) == 2 and summary["spec"]["seed"] == 0
    assert set(summary["noun"]["removal_projection"]) == {"L0.resid_post", "L1.resid_post"}
    assert {"das_noun", "das_last", "das_mlp_noun"} <= set(summary["das"])
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "steering_noun.json").is_file()


def test_causal_checks_on_a_model_split_by_device_map(text_model, number_ds, probes):
    # The CPU stands in for each device: the split path (hooks moving inputs, edits on each layer's
    # device, the random-init copy placed the same way) must give exactly the unsplit numbers.
    from interpkit.models._device_map import layout, split_plan
    from interpkit.models._dispatch import dispatch

    split = tiny_text_model()
    dispatch(split, split_plan(layout(split.bridge.original_model, split.cfg.n_layers), ["cpu", "cpu"]))
    assert "device_map" in split.info
    for fn, kwargs in (
        (P.remove, {"sites": ["L1.resid_post"], "seed": 0}),
        (P.steer, {"site": "L1.resid_post", "scales": (-20, 0, 20)}),
    ):
        assert torch.equal(
            fn(split, number_ds, probes, **kwargs).scores, fn(text_model, number_ds, probes, **kwargs).scores
        )
    fresh = P.random_init_model(split, seed=1)
    assert fresh.info.get("device_map") == split.info["device_map"]
    tokens = torch.tensor([number_ds.source["ids"][0]])
    assert torch.equal(fresh(tokens), P.random_init_model(text_model, seed=1)(tokens))
