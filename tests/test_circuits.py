"""Circuits: the edge-ablation engine against a literal reference, faithfulness, discovery, files."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from interpkit.attribution.graph import build_graph
from interpkit.circuits import (
    Circuit,
    CircuitError,
    CircuitWarning,
    EdgeRunner,
    acdc,
    curve_figure,
    discover_circuit,
    edge_removal_scores,
    faithfulness,
    faithfulness_curve,
    run_with_edges,
    stability,
)
from interpkit.circuits._discover import greedy_mask, score_matrix, top_n_mask
from interpkit.hooks import hooks
from interpkit.metrics import evaluate
from interpkit.models.anatomy import split_inputs
from interpkit.runtime import derangement
from patching_reference import run_cache
from tiny_models import random_task

ABLATIONS = ("counterfactual", "mean", "zero", "resample")


# ---------------------------------------------------------------------------- literal reference
def _outputs(model, acts):
    """{sender label: its residual write (batch, pos, d_model)}, one sender at a time."""
    c = model.cfg
    out = {"embed": acts["blocks.0.hook_resid_pre"]}
    for layer in range(c.n_layers):
        z = acts[f"blocks.{layer}.attn.hook_z"]
        for h in range(c.n_heads):
            out[f"L{layer}H{h}"] = z[:, :, h] @ model.bridge.blocks[layer].attn.W_O[h]
        if not c.attn_only:
            out[f"L{layer}.mlp"] = acts[f"blocks.{layer}.hook_mlp_out"]
    return out


def _sender_hooks(model):
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(model.cfg.n_layers):
        names.append(f"blocks.{layer}.attn.hook_z")
        if not model.cfg.attn_only:
            names.append(f"blocks.{layer}.hook_mlp_out")
    return names


def _source(model, task, ablation, seed=0):
    names = _sender_hooks(model)
    clean, _ = run_cache(model, task.clean, names)
    corrupt, _ = run_cache(model, task.corrupt, names)
    clean, corrupt = _outputs(model, clean), _outputs(model, corrupt)
    if ablation == "counterfactual":
        return corrupt
    if ablation == "mean":
        return {k: v.mean(0, keepdim=True) for k, v in corrupt.items()}
    if ablation == "zero":
        return {k: torch.zeros_like(v) for k, v in clean.items()}
    perm = derangement(len(task), seed)
    return {k: v[perm] for k, v in clean.items()}


def literal_run(model, task, mask, ablation, metric="logit_diff"):
    """One forward per circuit: each receiver input minus, sender by sender, its removed edges' change."""
    graph = build_graph(model)
    source = _source(model, task, ablation)
    c = model.cfg
    current = {}

    def keep_senders(act, hook):
        name = hook.name
        if name.endswith("hook_resid_pre"):
            current["embed"] = act
        elif name.endswith("hook_z"):
            layer = int(name.split(".")[1])
            for h in range(c.n_heads):
                current[f"L{layer}H{h}"] = act[:, :, h] @ model.bridge.blocks[layer].attn.W_O[h]
        else:
            current[f"L{int(name.split('.')[1])}.mlp"] = act

    def receiver_hook(labels, weight=None):
        def hook(act, hook):
            new = act.clone()
            for slot, label in enumerate(labels):
                r = next(i for i, n in enumerate(graph.receivers) if n.label == label)
                for s, sender in enumerate(graph.senders):
                    if graph.mask[s, r] and not mask[s, r]:
                        change = current[sender.label] - source[sender.label]
                        if weight is not None:  # no per-head input hook: patch after the projection
                            new[:, :, slot] -= change @ weight[slot]
                        elif new.ndim == 4:
                            new[:, :, slot] -= change
                        else:
                            new -= change
            return new

        return hook

    fwd = [(n, keep_senders) for n in _sender_hooks(model)]
    gqa = c.n_kv_heads < c.n_heads
    split = model.anatomy.split_inputs
    for layer in range(c.n_layers):
        for kind in ("q", "k", "v"):
            if kind == "q":
                labels = [f"L{layer}H{h}.q" for h in range(c.n_heads)]
            else:
                labels = [f"L{layer}KV{g}.{kind}" if gqa else f"L{layer}H{g}.{kind}" for g in range(c.n_kv_heads)]
            if split:
                fwd.append((f"blocks.{layer}.hook_{kind}_input", receiver_hook(labels)))
            else:
                weight = getattr(model.bridge.blocks[layer].attn, f"W_{kind.upper()}")
                fwd.append((f"blocks.{layer}.attn.hook_{kind}", receiver_hook(labels, weight)))
        if not c.attn_only:
            fwd.append((f"blocks.{layer}.hook_mlp_in", receiver_hook([f"L{layer}.mlp"])))
    fwd.append((f"blocks.{c.n_layers - 1}.hook_resid_post", receiver_hook(["logits"])))
    with torch.no_grad():
        clean_logits = model(task.clean)
        with split_inputs(model) if split else contextlib.nullcontext(), hooks(model, fwd=fwd):
            logits = model(task.clean)
    return evaluate(logits, task, metric, clean_logits)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "toy", "tiny_neox", "tiny_qwen3"])
def test_engine_matches_literal_reference(name, request):
    model = request.getfixturevalue(name)
    task = random_task(model, n=3, pos=5, seed=1)
    graph = build_graph(model)
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, *graph.mask.shape, generator=g) < torch.tensor([0.2, 0.6, 0.9])[:, None, None]
    masks &= graph.mask
    for ablation in ABLATIONS:
        fast = run_with_edges(model, task, masks, ablation, batch_size=4).scores  # 9 rows in 3 chunks
        full = run_with_edges(model, task, graph.mask, ablation).scores[0]
        for i in range(len(masks)):
            slow = literal_run(model, task, masks[i], ablation)
            torch.testing.assert_close(fast[i], slow, atol=1e-5, rtol=0, msg=f"{name} {ablation} circuit {i}")
            assert not torch.allclose(fast[i], full, atol=1e-4)  # the removed edges did change something


def test_full_graph_is_the_model_and_counterfactual_empty_is_the_corrupt_run(tiny_llama):
    task = random_task(tiny_llama, n=3, pos=5, seed=2)
    graph = build_graph(tiny_llama)
    runner = EdgeRunner(tiny_llama, task, "counterfactual")
    values = runner(torch.stack([graph.mask, torch.zeros_like(graph.mask)]))
    with torch.no_grad():
        clean = evaluate(tiny_llama(task.clean), task)
        corrupt = evaluate(tiny_llama(task.corrupt), task)
    torch.testing.assert_close(values[0], clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(values[1], corrupt, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_faithfulness_full_is_one_and_empty_is_zero(tiny_gpt2, ablation):
    task = random_task(tiny_gpt2, n=4, pos=5, seed=3)
    full, empty = Circuit.full(tiny_gpt2), Circuit(tiny_gpt2, [])
    gen = torch.Generator().manual_seed(0)  # seeded: an unlucky global draw can prune to nothing
    half = Circuit.from_mask(tiny_gpt2, torch.rand(build_graph(tiny_gpt2).mask.shape, generator=gen) < 0.5)
    rep = faithfulness(tiny_gpt2, task, [full, empty, half], ablation, n_boot=200)
    assert rep.kind == "faithfulness" and rep.dims == ("circuit",)
    assert rep.scores[0].item() == 1.0 and rep.scores[1].item() == 0.0
    assert rep.meta["ablation"] == ablation and rep.meta["n_edges"][:2] == [len(full), 0]
    assert rep.extras["per_example_metric"].shape == (3, 4)
    lo, hi = rep.meta["ci95"][2]
    assert lo <= rep.scores[2].item() <= hi and rep.meta["stderr"][2] > 0
    assert rep.meta["m_circuit"][0] == pytest.approx(rep.meta["m_full"])


# ---------------------------------------------------------------------------- the Circuit object
def test_prune_drops_unreachable_edges_to_a_fixpoint(toy):
    chain = ["embed->L0H1.q", "L0H1->L1H2.k", "L1H2->logits"]
    assert Circuit(toy, chain).prune().edges == chain
    # L1H3 never reaches logits, L0H2 is never reached from embed.
    assert Circuit(toy, [*chain, "embed->L1H3.q", "L0H2->L1H2.v"]).prune().edges == chain
    # Without the last edge nothing reaches logits; removing L0H1->L1H2.k strands embed->L0H1.q.
    assert len(Circuit(toy, chain[:2]).prune()) == 0
    # A head is reached through any of its inputs and reaches on through its output.
    assert len(Circuit(toy, ["embed->L1H0.v", "L1H0->logits"]).prune()) == 2


def test_prune_under_grouped_query_attention(tiny_llama):
    # 6 heads share 2 KV heads: KV0 serves heads 0-2, KV1 heads 3-5.
    kept = ["embed->L0H0.q", "L0H0->L1KV0.k", "L1H1->logits", "L0H0->logits"]
    assert Circuit(tiny_llama, kept).prune().edges == Circuit(tiny_llama, kept).edges
    stranded = ["embed->L0H0.q", "L0H0->L1KV1.k", "L1H1->logits"]
    assert Circuit(tiny_llama, stranded).prune().edges == []
    assert Circuit(tiny_llama, kept).nodes == ["embed", "L0H0", "L1H1", "L1KV0", "logits"]


def test_circuit_set_protocol_json_round_trip_and_errors(toy, tiny_gpt2, tmp_path):
    circ = Circuit(toy, ["L1H2->logits", "embed->L1H2.q"], scores={"L1H2->logits": 1.5, "embed->L1H2.q": -0.25})
    assert len(circ) == 2 and "L1H2->logits" in circ and "L1H1->logits" not in circ
    assert circ.edges == ["embed->L1H2.q", "L1H2->logits"]  # graph order
    path = circ.save(tmp_path / "sub" / "circ.json")
    back = Circuit.load(path, model=toy)
    assert back == circ and back.scores == circ.scores and back.to_dict() == circ.to_dict()
    assert not list(path.parent.glob(".*tmp"))  # atomic write left nothing behind
    with pytest.raises(CircuitError, match="another model"):
        Circuit.load(path, model=tiny_gpt2)
    data = json.loads(path.read_text())
    data["edges"].append("L1H2->L0H1.q")
    path.write_text(json.dumps(data))
    with pytest.raises(CircuitError, match=r"L1H2->L0H1\.q"):
        Circuit.load(path)
    with pytest.raises(CircuitError, match="L9H9->logits"):
        Circuit(toy, ["L9H9->logits"])
    with pytest.raises(CircuitError, match="another model"):
        faithfulness(tiny_gpt2, random_task(tiny_gpt2), circ, ablation="mean")


def test_figure_draws_edges_with_hover(toy):
    import plotly.graph_objects as go

    circ = Circuit(toy, ["embed->L0H1.q", "L0H1->L1H2.k", "L1H2->logits"], scores={"L0H1->L1H2.k": -2.0})
    fig = circ.figure()
    assert isinstance(fig, go.Figure)
    hover = [t for trace in fig.data if trace.text is not None for t in trace.text]
    assert any("L0H1->L1H2.k" in t and "-2" in t for t in hover)


# ---------------------------------------------------------------------------- discovery
def test_discovery_input_errors(tiny_gpt2):
    task = random_task(tiny_gpt2)
    with pytest.raises(CircuitError, match="greedy"):
        discover_circuit(tiny_gpt2, task, select="greedyy", n_edges=3, direction="noise")
    with pytest.raises(CircuitError, match="eap-ig"):
        discover_circuit(tiny_gpt2, task, "eap-igg", n_edges=3, direction="noise")
    with pytest.raises(CircuitError, match="n_edges or a target"):
        discover_circuit(tiny_gpt2, task, "eap", n_edges=3, target=0.9, direction="noise")
    with pytest.raises(CircuitError, match="target faithfulness must be"):
        discover_circuit(tiny_gpt2, task, "eap", target=0.0, direction="noise")
    with pytest.raises(CircuitError, match="n_edges must be an int"):
        discover_circuit(tiny_gpt2, task, "eap", n_edges=2.5, direction="noise")
    with pytest.raises(CircuitError, match="n_edges"):
        discover_circuit(tiny_gpt2, task, "eap", n_edges=3, threshold=0.1, direction="noise")
    with pytest.raises(CircuitError, match="threshold"):
        discover_circuit(tiny_gpt2, task, "eap", select="threshold", direction="noise")
    with pytest.raises(CircuitError, match="tau"):
        discover_circuit(tiny_gpt2, task, select="acdc")


def test_default_size_reaches_the_target_or_says_it_does_not(tiny_gpt2):
    """No n_edges: the smallest top-n circuit reaching the target faithfulness, the curve searched in its meta."""
    task = random_task(tiny_gpt2, n=3, pos=5, seed=4)
    scores = edge_removal_scores(tiny_gpt2, task, "counterfactual")
    circ = discover_circuit(tiny_gpt2, task, scores=scores, target=0.8)
    meta = circ.meta
    assert meta["reached"] and meta["faithfulness"] >= 0.8 and meta["ablation"] == "counterfactual"
    curve = dict(zip(meta["curve"]["sizes"], meta["curve"]["faithfulness"], strict=True))
    k = meta["n_edges_chosen"]
    assert curve[k] == meta["faithfulness"] and all(v < 0.8 for size, v in curve.items() if size < k)
    assert k - 1 in curve or k == 1  # the bracket was narrowed to one edge
    rep = faithfulness(tiny_gpt2, task, circ, "counterfactual")
    assert float(rep.scores[0]) == pytest.approx(meta["faithfulness"], abs=1e-5)
    with pytest.warns(CircuitWarning, match="no circuit size reaches faithfulness 1.5"):
        best = discover_circuit(tiny_gpt2, task, scores=scores, target=1.5)
    assert not best.meta["reached"] and "no size reached" in best.meta["note"]


def test_selections_on_given_scores(tiny_gpt2):
    task = random_task(tiny_gpt2, n=3, pos=5, seed=4)
    scores = edge_removal_scores(tiny_gpt2, task, "mean")
    graph = build_graph(tiny_gpt2)
    matrix = score_matrix(tiny_gpt2, scores)
    top = top_n_mask(graph, matrix, 12)
    cutoff = matrix[top].abs().min()
    assert int(top.sum()) == 12 and int((matrix.abs()[graph.mask] > cutoff).sum()) <= 12
    circ = discover_circuit(tiny_gpt2, task, scores=scores, n_edges=12)
    assert set(circ.edges) <= set(Circuit.from_mask(tiny_gpt2, top).edges) and circ == circ.prune()
    by_threshold = discover_circuit(tiny_gpt2, task, select="threshold", threshold=float(cutoff), scores=scores)
    assert by_threshold == circ
    greedy = greedy_mask(graph, matrix, 12)
    assert int(greedy.sum()) == 12
    # Grown from logits: every chosen edge's receiver component reaches logits through chosen edges.
    from interpkit.circuits._circuit import reaches_logits

    assert bool(reaches_logits(graph, greedy)[greedy.any(0)].all())
    assert len(discover_circuit(tiny_gpt2, task, select="greedy", n_edges=12, scores=scores)) <= 12


def test_acdc_tau_zero_keeps_what_matters_and_huge_tau_keeps_nothing(tiny_gpt2):
    task = random_task(tiny_gpt2, n=2, pos=4, seed=5)
    kept = acdc(tiny_gpt2, task, tau=0.0)
    effects = edge_removal_scores(tiny_gpt2, task, "counterfactual", metric="kl")
    matters = {e for e, v in zip(effects.labels["edge"], effects.scores.tolist(), strict=True) if v > 1e-4}
    assert matters and matters <= set(kept.edges)
    kl = run_with_edges(tiny_gpt2, task, kept, "counterfactual", metric="kl")
    assert float(kl.scores.mean()) < 1e-5  # nothing removed that raises the KL to the full model
    assert kept.meta["n_forwards"] >= 1 and kept.meta["tau"] == 0.0
    assert len(discover_circuit(tiny_gpt2, task, select="acdc", tau=1e9)) == 0


def test_curve_and_stability(tiny_gpt2, tmp_path):
    import plotly.graph_objects as go

    from interpkit.results import Result

    task = random_task(tiny_gpt2, n=4, pos=5, seed=6)
    scores = edge_removal_scores(tiny_gpt2, task, "mean")
    total = build_graph(tiny_gpt2).n_edges
    calls = []
    real = EdgeRunner.__call__

    def counting(self, masks, *, batch_size=None):
        calls.append(masks.shape[0])
        return real(self, masks, batch_size=batch_size)

    EdgeRunner.__call__ = counting
    try:
        curve = faithfulness_curve(tiny_gpt2, task, scores, sizes=[0, 5, 20, 20, 60, total], ablation="mean")
    finally:
        EdgeRunner.__call__ = real
    assert calls == [5]  # full, empty, 5, 20, 60: sizes 0 and total are the normalisation's runs, 20 repeats
    assert curve.scores[2] == curve.scores[3]
    assert curve.kind == "faithfulness_curve" and curve.scores.shape == (6,)
    assert curve.scores[0].item() == 0.0 and curve.scores[-1].item() == 1.0
    assert curve.meta["cpr"] > 0 and curve.meta["cmd"] >= 0 and curve.meta["fractions"][-1] == 1.0
    assert isinstance(curve_figure(curve), go.Figure)
    back = Result.from_json(curve.to_json(tmp_path / "curve.json"))
    assert back.meta["cpr"] == curve.meta["cpr"] and torch.equal(back.scores, curve.scores)
    default = faithfulness_curve(tiny_gpt2, task, scores, ablation="mean")
    assert default.meta["sizes"][0] == 0 and default.meta["sizes"][-1] == total
    with pytest.raises(CircuitError, match="sizes"):
        faithfulness_curve(tiny_gpt2, task, scores, sizes=[total + 1], ablation="mean")
    stab = stability(tiny_gpt2, task, "eap", n_boot=3, n_edges=15, direction="noise")
    assert stab.kind == "circuit_stability" and stab.scores.shape == (3,)
    assert 0.0 <= stab.meta["mean_pairwise_jaccard"] <= 1.0 and stab.extras["pairwise_jaccard"].shape == (3, 3)
    assert torch.all(stab.extras["pairwise_jaccard"].diagonal() == 1.0)
    assert Result.from_json(stab.to_json(tmp_path / "stab.json")).meta == stab.meta


# ---------------------------------------------------------------------------- the shipped toy
@pytest.fixture(scope="module")
def induction(toy):
    from interpkit.attribution.head_scores import head_patterns, previous_token_scores
    from interpkit.tasks import load

    task = load("induction", toy, n=16, seed=0)  # the first block is corrupted: both heads visible
    prev = int(previous_token_scores(head_patterns(toy, task.clean))[0].argmax())
    return task, prev


def _check_induction_circuit(toy, task, prev, circ):
    keys = [e for e in circ.edges if e.startswith(f"L0H{prev}->L1H") and e.endswith(".k")]
    assert keys, f"no previous-token head (L0H{prev}) -> induction head key edge in {circ.edges}"
    rep = faithfulness(toy, task, circ, ablation="counterfactual", n_boot=100)
    assert rep.scores[0].item() >= 0.9, rep.meta
    return rep


def test_toy_induction_circuit_by_edge_ablation(toy, induction):
    task, prev = induction
    scores = edge_removal_scores(toy, task, "counterfactual")
    circ = discover_circuit(toy, task, scores=scores, n_edges=30)
    assert len(circ) <= 30
    _check_induction_circuit(toy, task, prev, circ)
    # Counterfactual ranking leaves out the query's token (embed -> L1Hy.q), identical in the clean
    # and corrupt prompts; mean ablation needs it, so a mean-ablation ranking finds it.
    assert faithfulness(toy, task, circ, ablation="mean", n_boot=0).scores[0].item() < 0.5
    by_mean = discover_circuit(toy, task, scores=edge_removal_scores(toy, task, "mean"), n_edges=30)
    assert faithfulness(toy, task, by_mean, ablation="mean", n_boot=0).scores[0].item() >= 0.9
    _check_induction_circuit(toy, task, prev, by_mean)
    # ACDC recovers the same mechanism without any scores.
    found = discover_circuit(toy, task, "acdc", tau=0.05)
    _check_induction_circuit(toy, task, prev, found)
    assert len(found) < 30


def test_toy_induction_circuit_by_eap_ig(toy, induction):
    # The toy's bridge has no per-head q/k/v input hooks: gradients come through hook_q/k/v, projected.
    assert not toy.anatomy.split_inputs
    task, prev = induction
    # the toy's attention saturates: few integration steps misrank edges (5 steps: faithfulness 0.78)
    _check_induction_circuit(
        toy, task, prev, discover_circuit(toy, task, "eap-ig", n_edges=30, ig_steps=20, direction="noise")
    )


def literal_acdc(model, task, tau, metric, ablation):
    """Conmy et al.'s Algorithm 1 as written: one edge, one forward, one decision at a time."""
    runner = EdgeRunner(model, task, ablation, metric=metric)
    graph = runner.graph
    current = graph.mask.clone()

    def value(mask):
        return float(runner(mask[None]).mean())

    now = value(current)
    for r in reversed(range(len(graph.receivers))):
        for s in reversed(range(len(graph.senders))):
            if not current[s, r]:
                continue
            trial = current.clone()
            trial[s, r] = False
            new = value(trial)
            if (new - now if metric == "kl" else abs(new - now)) < tau:
                current, now = trial, new
    return Circuit.from_mask(model, current).prune()


@pytest.mark.parametrize(("metric", "tau", "ablation"), [("kl", 3e-5, "counterfactual"), ("logit_diff", 1e-3, "mean")])
def test_batched_acdc_equals_the_sequential_algorithm(tiny_gpt2, metric, tau, ablation):
    task = random_task(tiny_gpt2, n=2, pos=4, seed=7)
    fast = acdc(tiny_gpt2, task, tau=tau, metric=metric, ablation=ablation)
    slow = literal_acdc(tiny_gpt2, task, tau, metric, ablation)
    assert 0 < len(fast) < build_graph(tiny_gpt2).n_edges
    assert fast.edges == slow.edges
