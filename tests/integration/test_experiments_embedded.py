"""The demo and causal tracing on the embedded SmolLM2-135M, with small settings (66 s and 12 s alone).

Checks the facts the design rests on: an IOI logit difference of several nats for the right
name, induction heads scoring far above chance, direct logit attribution summing to the model's
logit difference, and causal tracing's restoration of the final state giving back the clean run.
"""

from __future__ import annotations

import json

import pytest

from experiment_scripts import load_script

pytestmark = pytest.mark.slow


def test_demo_on_the_embedded_model(smollm2, tmp_path):
    script = load_script("demo")
    cfg = script.DemoConfig(
        model=smollm2,
        n=2,  # the demo's default is 4; 2 halves the head patching and the circuit's runs
        n_induction=4,
        per_position=False,
        layers_per_step=30,
        ig_steps=2,  # the circuit part, small: one size besides the empty and the full graph
        circuit_fractions="0.02",
        out=str(tmp_path),
        threads=0,
    )
    report = script.main(cfg)
    ioi, induction = report["tasks"]["ioi"], report["tasks"]["induction"]
    assert ioi["clean"] > 2.0 > ioi["corrupt"]
    assert sum(v for _, v in ioi["dla_all"]) == pytest.approx(ioi["clean"], abs=1e-2)
    assert induction["top_induction_heads"][0][1] > 0.5
    assert json.loads((tmp_path / "result.json").read_text())["spec"]["weights_hash"]
    assert (tmp_path / "report.html").stat().st_size > 1_000_000  # plotly embedded
    assert report["tasks"]["probe"]["best_accuracy"] > 0.85  # subject number is decodable at the last token
    circ = report["tasks"]["ioi_circuit"]
    assert circ["curve"]["0"] == 0.0 and circ["curve"][str(circ["n_edges_graph"])] == 1.0
    assert circ["n_edges_graph"] > 50_000 and 0 < circ["circuit_edges"] <= circ["circuit_top_k"]


def test_causal_tracing_on_the_embedded_model(smollm2, tmp_path):
    script = load_script("factual_tracing")
    facts = tmp_path / "facts.jsonl"  # short prompts with the subject near the end: few positions to restore
    facts.write_text(
        "".join(
            json.dumps({"subject": country, "relation": "The capital of {} is", "object": city}) + "\n"
            for country, city in [("France", " Paris"), ("Japan", " Tokyo"), ("Italy", " Rome")]
        )
    )
    cfg = script.Config(model=smollm2, n=1, samples=1, window=4, facts=str(facts), out=str(tmp_path))
    summary = script.main(cfg)
    fact = summary["facts"][0]
    assert fact["p_clean"] > 0.3 and fact["p_clean"] > fact["p_corrupt"]
    resid = fact["resid_effect"]  # (pos, layer)
    assert resid[-1][-1] == pytest.approx(fact["p_clean"] - fact["p_corrupt"], abs=1e-4)
