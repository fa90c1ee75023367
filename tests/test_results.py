"""Result objects: exact JSON round-trip, normalisation, figures, errors."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

from interpkit.errors import ResultError
from interpkit.results import Result, json_text, make_provenance


def _result(dtype=torch.float32):
    scores = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    scores[0, 0] = float("nan")
    scores[1, 1] = float("inf")
    return Result(
        scores,
        ("layer", "pos"),
        {"layer": ["L0", "L1", "L2"], "pos": ["a", "b", "b", "c"]},
        metric="logit_diff",
        clean_value=2.5,
        corrupt_value=-0.5,
        kind="patch",
        meta={"site": "resid_pre", "direction": "denoise"},
        extras={"per_example": torch.arange(6).reshape(2, 3), "note": [1, 2.5, None]},
        provenance={"model": "toy", "seed": 0},
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_json_roundtrip_exact(tmp_path, dtype):
    r = _result(dtype)
    path = r.to_json(tmp_path / "sub" / "result.json")
    back = Result.from_json(path)
    assert back.scores.dtype == dtype
    assert torch.equal(back.scores.nan_to_num(0.0, 1e9), r.scores.nan_to_num(0.0, 1e9))
    assert torch.isnan(back.scores[0, 0])
    assert back.dims == r.dims and back.labels == r.labels and back.meta == r.meta
    assert torch.equal(back.extras["per_example"], r.extras["per_example"])
    assert back.extras["note"] == [1, 2.5, None]
    assert (back.clean_value, back.corrupt_value, back.kind, back.provenance) == (2.5, -0.5, "patch", r.provenance)
    assert not list((tmp_path / "sub").glob(".*tmp"))  # no temporary file left behind


def _strict(text):
    """Parse as standard JSON, which has no NaN or Infinity (jq, a browser's JSON.parse)."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_result_files_are_standard_json_and_keep_non_finite_values(tmp_path):
    r = _result()
    r.scores[2, 3] = float("-inf")
    r.clean_value = float("nan")
    r.meta["faithfulness"] = [float("inf"), 0.5]
    data = _strict(r.to_json(tmp_path / "r.json").read_text())
    assert data["scores"]["values"][0][0] == "NaN" and data["scores"]["values"][2][3] == "-Infinity"
    back = Result.from_json(tmp_path / "r.json")
    assert torch.equal(back.scores.nan_to_num(0.0, 1e9, -1e9), r.scores.nan_to_num(0.0, 1e9, -1e9))
    assert torch.isnan(back.scores[0, 0]) and back.scores[1, 1] == float("inf")
    assert back.clean_value != back.clean_value and back.meta["faithfulness"] == [float("inf"), 0.5]
    r.labels["pos"] = ["NaN", "Infinity", "b", "c"]  # token labels that spell the constants stay strings
    assert Result.from_json(r.to_json(tmp_path / "s.json")).labels["pos"][:2] == ["NaN", "Infinity"]


def test_json_text_is_standard_json_with_nulls():
    text = json_text({"acc": [0.5, float("nan")], "t": torch.tensor([1.0, float("inf")]), "p": Path("runs") / "x"})
    assert _strict(text) == {"acc": [0.5, None], "t": [1.0, None], "p": str(Path("runs") / "x")}


def test_normalised():
    r = Result(torch.tensor([2.5, -0.5, 1.0]), ("x",), metric="m", clean_value=2.5, corrupt_value=-0.5)
    assert torch.allclose(r.normalised(), torch.tensor([1.0, 0.0, 0.5]))
    with pytest.raises(ResultError, match="clean/corrupt"):
        Result(torch.zeros(2), ("x",)).normalised()


def test_shape_checks():
    with pytest.raises(ResultError, match="2 dims"):
        Result(torch.zeros(2, 2), ("x",))
    with pytest.raises(ResultError, match="3 labels"):
        Result(torch.zeros(2), ("x",), {"x": ["a", "b", "c"]})


def test_bad_files(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ResultError, match=r"a\.json"):
        Result.from_json(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ResultError, match="not an interpkit result"):
        Result.from_json(tmp_path / "b.json")


def test_top_and_figures():
    r = Result(
        torch.tensor([[0.1, -3.0], [2.0, 0.0]]),
        ("layer", "head"),
        {"layer": ["L0", "L1"], "head": ["H0", "H1"]},
        metric="m",
    )
    assert r.top(2) == [("layer=L0, head=H1", -3.0), ("layer=L1, head=H0", 2.0)]
    fig = r.figure()
    assert isinstance(fig, go.Figure) and fig.data[0].type == "heatmap" and fig.data[0].zmid == 0.0
    bars = Result(torch.tensor([1.0, -1.0]), ("component",), {"component": ["a", "b"]}).figure()
    assert bars.data[0].type == "bar"
    with pytest.raises(ResultError, match="0-D"):
        Result(torch.tensor(1.0), ()).figure()
    folded = Result(
        torch.arange(12.0).reshape(2, 3, 2), ("layer", "pos", "head"), {"layer": ["L0", "L1"], "head": ["H0", "H1"]}
    ).figure()
    assert list(folded.data[0].y) == ["L0H0", "L0H1", "L1H0", "L1H1"] and folded.data[0].z[1][2] == 5.0


def test_provenance_block(toy):
    prov = make_provenance(toy, seed=3)
    assert prov["model"] == "toy-induction" and prov["seed"] == 3 and len(prov["weights_hash"]) == 64
    assert prov["versions"]["torch"].startswith("2.")


def test_result_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from interpkit.results import write_text_atomic

    mask = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "result.json", "{}\n")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
