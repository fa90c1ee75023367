"""An attribution graph as a circuit of the edge graph: over spliced transcoders, its features are
nodes of their own; faithfulness of the graph's circuit equals one literal forward of the spliced
model with every other latent (and the rest of layers without error nodes) silenced."""

from __future__ import annotations

import pytest
import torch

import interpkit as ik
from interpkit.dictionaries import Dictionary, spliced
from interpkit.graphs import GraphError
from interpkit.hooks import hooks
from interpkit.metrics import evaluate

PROMPT = [3, 17, 5, 9, 11, 2]


@pytest.fixture(scope="module")
def setup(tiny_llama):
    d = tiny_llama.cfg.d_model
    tcs = {}
    for layer in range(tiny_llama.cfg.n_layers):
        tc = Dictionary.random(d_in=d, n_latents=16, k=4, kind="transcoder", seed=10 + layer)
        tcs[layer] = tc.replace(input_site=f"blocks.{layer}.mlp.hook_in", output_site=f"L{layer}.mlp")
    with torch.no_grad():
        top2 = tiny_llama(torch.tensor([PROMPT]))[0, -1].topk(2).indices.tolist()
    task = ik.tasks.from_token_lists("graph", tiny_llama, [PROMPT], [PROMPT], [top2[0]], [top2[1]])
    graph = ik.graphs.attribute(tiny_llama, PROMPT, tcs, max_feature_nodes=10**6, verify=0)
    return tiny_llama, task, tcs, graph


def literal_metric(model, task, splice, graph):
    """One forward of the spliced model with the latents outside ``graph`` zeroed."""
    keep = {}
    for n in graph.nodes:
        if n.kind == "feature":
            keep.setdefault(n.layer, []).append(n.feature)
    fwd = []
    for e in splice.entries.values():
        layer = int(e.write_hook.split(".")[1])
        mask = torch.zeros(e.dictionary.n_latents)
        mask[keep.get(layer, [])] = 1

        def only(act, hook, mask=mask):
            return act * mask.to(act.dtype)

        fwd.append((e.latents_hook, only))
    with torch.no_grad(), hooks(model, fwd=fwd):
        logits = model(task.clean)
    return evaluate(logits, task).mean().item()


def test_graph_circuits_equal_literal_silencing(setup):
    model, task, tcs, graph = setup
    pruned = graph.prune(node_threshold=0.5, edge_threshold=0.9)
    assert len([n for n in pruned.nodes if n.kind == "feature"]) < len([n for n in graph.nodes if n.kind == "feature"])
    by_site = {f"L{layer}.mlp": tc for layer, tc in tcs.items()}
    with spliced(model, by_site, error=True, skip_first=True) as splice:
        full, small = graph.circuit(model, splice), pruned.circuit(model, splice)
        assert set(small.edges) < set(full.edges)
        assert not any("#other" in e for e in full.edges)
        assert small.meta["features"] == len([n for n in pruned.nodes if n.kind == "feature"])
        with pytest.raises(ik.circuits.CircuitError, match="another graph"):
            ik.faithfulness(model, task, [full, small], "zero")
        for circ, g in [(full, graph), (small, pruned)]:
            rep = ik.faithfulness(model, task, circ, "zero", n_boot=10)
            assert rep.meta["m_circuit"][0] == pytest.approx(literal_metric(model, task, splice, g), abs=1e-4)
            if g is graph:  # the unpruned graph holds every active latent and every error: the whole model
                assert rep.scores[0].item() == pytest.approx(1.0, abs=1e-4)


def test_graph_circuit_bad_inputs(setup, tiny_llama):
    model, _, tcs, graph = setup
    neurons = ik.graphs.attribute(tiny_llama, PROMPT, max_feature_nodes=20, verify=0)
    every = {f"L{layer}.mlp": tc for layer, tc in tcs.items()}
    with spliced(model, every, skip_first=True) as splice, pytest.raises(GraphError, match="neuron graph"):
        neurons.circuit(model, splice)
    # the graph has features at layers the splice lacks (the edge graph's error, a base class)
    with spliced(model, {"L0.mlp": tcs[0]}, skip_first=True) as splice, pytest.raises(ik.graph.GraphError, match="L0"):
        graph.circuit(model, splice)
    with spliced(model, every, skip_first=False) as splice, pytest.raises(GraphError, match="skip_first=True"):
        graph.circuit(model, splice)
    assert issubclass(GraphError, ik.graph.GraphError)


@pytest.mark.parametrize("skip_first", [True, False])
def test_neuron_graph_circuit_equals_literal_silencing(tiny_llama, skip_first):
    model = tiny_llama
    graph = ik.graphs.attribute(model, PROMPT, max_feature_nodes=40, verify=0, skip_first_position=skip_first)
    with torch.no_grad():
        top2 = model(torch.tensor([PROMPT]))[0, -1].topk(2).indices.tolist()
    task = ik.tasks.from_token_lists("graph", model, [PROMPT], [PROMPT], [top2[0]], [top2[1]])
    circ = graph.circuit(model)
    assert any(e.startswith("L1.mlp#") and "#other" not in e for e in circ.edges)
    assert not any("#other" in e for e in circ.edges)
    keep = {}
    for n in graph.nodes:
        if n.kind == "neuron":
            keep.setdefault(n.layer, []).append(n.feature)
    fwd = []
    for layer in range(model.cfg.n_layers):
        mask = torch.zeros(model.cfg.d_mlp)
        mask[keep.get(layer, [])] = 1

        def only(act, hook, mask=mask):
            out = act * mask.to(act.dtype)
            if skip_first:
                out[:, 0] = act[:, 0]  # the graph held the first position constant
            return out

        fwd.append((f"blocks.{layer}.mlp.hook_post", only))
    with torch.no_grad(), hooks(model, fwd=fwd):
        want = evaluate(model(task.clean), task).mean().item()
    rep = ik.faithfulness(model, task, circ, "zero", n_boot=10)
    assert rep.meta["m_circuit"][0] == pytest.approx(want, abs=1e-4)
    with pytest.raises(GraphError, match="needs no splice"):
        graph.circuit(model, object())


def test_neuron_senders_bad_input(tiny_llama, toy):
    from interpkit.graph import neuron_senders

    for bad, match in [({9: [1]}, "layers 0"), ({0: [tiny_llama.cfg.d_mlp]}, "out of range")]:
        with pytest.raises(ik.graph.GraphError, match=match):
            neuron_senders(tiny_llama, bad)
    with pytest.raises(ik.graph.GraphError, match="no MLPs"):
        neuron_senders(toy, {0: [1]})
