"""A node kind registered from outside the package runs through every edge engine unchanged.

The kind here splits each MLP's output into the writes of four groups of its hidden neurons
(``hook_post @ W_out`` restricted to each group). Nothing in src/ knows it: EAP, EAP-IG, exact edge
patching, circuit discovery and faithfulness run on it through the graph's kind interface alone.
"""

from __future__ import annotations

import pytest
import torch

import interpkit as ik
from interpkit.circuits import Circuit
from interpkit.graph import GraphError, Node, SenderKind, build_graph, register_kind, sender_hooks, sender_outputs
from interpkit.hooks import hooks
from interpkit.models.anatomy import split_inputs
from patching_reference import run_cache
from tiny_models import random_task

GROUPS = 4


class NeuronGroups(SenderKind):
    """Each MLP's output as the writes of ``GROUPS`` contiguous groups of its hidden neurons."""

    name, stage, component_kind = "neuron_groups", 1, "mlp"

    def exists(self, cfg):
        return not cfg.attn_only

    def nodes(self, cfg, layer):
        return [Node(f"L{layer}.mlp[{g}]", self.name, layer, g, 1, f"L{layer}.mlp") for g in range(GROUPS)]

    def hook(self, layer):
        return f"blocks.{layer}.mlp.hook_post"

    def outputs(self, model, layer, act):  # (rows, pos, d_mlp) -> (rows, pos, GROUPS, d_model)
        w_out = model.anatomy.mlp(layer).W_out.to(act.device, act.dtype)
        return torch.einsum("bpgn,gnd->bpgd", act.unflatten(-1, (GROUPS, -1)), w_out.unflatten(0, (GROUPS, -1)))


KIND = register_kind(NeuronGroups(), replace=True)
SENDERS = ["embed", "head", "neuron_groups"]


@pytest.fixture(scope="module")
def setup(tiny_llama):
    task = random_task(tiny_llama, n=3, pos=6, seed=3)
    return tiny_llama, task, build_graph(tiny_llama, senders=SENDERS), build_graph(tiny_llama)


def test_the_groups_add_up_to_the_mlp_output(setup):
    model, task, graph, default = setup
    assert len(graph.senders) == len(default.senders) + (GROUPS - 1) * model.cfg.n_layers
    acts, _ = run_cache(model, task.clean, [*sender_hooks(graph), *sender_hooks(default)])
    mine, theirs = sender_outputs(model, graph, acts), sender_outputs(model, default, acts)
    for layer in range(model.cfg.n_layers):
        g = next(g for g in graph.sender_groups if g.kind is KIND and g.layer == layer)
        d = next(g for g in default.sender_groups if g.kind.name == "mlp" and g.layer == layer)
        b_out = model.anatomy.mlp(layer).b_out
        total = mine[:, :, g.lo : g.hi].sum(2) + (0 if b_out is None else b_out)
        torch.testing.assert_close(total, theirs[:, :, d.lo], atol=1e-5, rtol=1e-5)
    with pytest.raises(GraphError, match="both write the mlp output"):
        build_graph(model, senders=["embed", "head", "mlp", "neuron_groups"])


def _literal_edge(model, task, graph, s, r):
    """One edge patched for real, one forward per example: noising, the receiver's own input copy moved."""
    sender, receiver = graph.senders[s], graph.receivers[r]
    group = next(g for g in graph.sender_groups if g.lo <= s < g.hi)
    name = group.kind.hook(group.layer)
    clean, _ = run_cache(model, task.clean, [name])
    corrupt, _ = run_cache(model, task.corrupt, [name])
    out = group.kind.outputs(model, group.layer, corrupt[name]) - group.kind.outputs(model, group.layer, clean[name])
    delta = out[:, :, s - group.lo]  # (batch, pos, d_model)
    rg = next(g for g in graph.receiver_groups if g.lo <= r < g.hi)
    hook = rg.kind.hook(model, rg.layer, "split")
    values = []
    for b in range(len(task)):

        def add(act, hook, b=b):
            new = act.clone()
            if new.ndim == 4:
                new[0, :, r - rg.lo] += delta[b]
            else:
                new[0] += delta[b]
            return new

        with torch.no_grad(), split_inputs(model), hooks(model, fwd=[(hook, add)]):
            logits = model(task.clean[b : b + 1])
        final = logits[0, task.answer_pos[b]]
        values.append(final[task.answer[b]] - final[task.wrong[b]])
    base = ik.metrics.clean_and_corrupt(model, task)["clean_per_example"]
    assert receiver.label and sender.label
    return (torch.stack(values) - base).mean()


def test_exact_edges_and_eap_run_on_the_new_kind(setup):
    model, task, graph, _ = setup
    exact = ik.attribution.edge_scores(model, task, "exact", direction="noise", graph=graph)
    labels = exact.labels["edge"]
    assert exact.meta["graph"]["senders"] == SENDERS
    for edge in ["L0.mlp[2]->L1H3.q", "L1.mlp[0]->L2KV1.k", "L2.mlp[3]->logits", "L0H1->L1.mlp"]:
        s, r = graph.edge_index(edge)
        want = _literal_edge(model, task, graph, s, r)
        assert exact.scores[labels.index(edge)].item() == pytest.approx(want.item(), abs=1e-5), edge
    # edges between built-in nodes score the same in both graphs
    plain = ik.attribution.edge_scores(model, task, "exact", direction="noise", check=0)
    for edge in ["L0H1->L1H3.q", "embed->L2.mlp"]:
        assert exact.scores[labels.index(edge)] == pytest.approx(plain.scores[plain.labels["edge"].index(edge)].item())
    # EAP is linear in each sender's change: a layer's groups add up to its whole MLP's score
    eap = ik.attribution.edge_scores(model, task, "eap", direction="noise", graph=graph, check=8)
    eap_plain = ik.attribution.edge_scores(model, task, "eap", direction="noise", check=0)
    for receiver in ["L1H3.q", "L2.mlp", "logits"]:
        groups = sum(eap.scores[labels.index(f"L0.mlp[{g}]->{receiver}")] for g in range(GROUPS))
        whole = eap_plain.scores[eap_plain.labels["edge"].index(f"L0.mlp->{receiver}")]
        assert groups.item() == pytest.approx(whole.item(), abs=1e-5)
    assert eap.extras["check"]["n"] == 8
    ig = ik.attribution.edge_scores(model, task, "eap-ig", direction="noise", graph=graph, ig_steps=2, check=0)
    act = ik.attribution.edge_scores(model, task, "eap-ig-act", direction="noise", graph=graph, ig_steps=2, check=0)
    assert ig.labels == act.labels == exact.labels


def test_discovery_and_faithfulness_on_the_new_kind(setup):
    model, task, graph, _ = setup
    circ = ik.discover_circuit(model, task, "eap", direction="noise", n_edges=25, graph=graph)
    assert circ.graph.kinds["senders"] == SENDERS and len(circ) <= 25
    rep = ik.faithfulness(model, task, [Circuit.full(model, graph), Circuit(model, [], graph=graph), circ], "mean")
    assert rep.scores[0].item() == pytest.approx(1.0) and rep.scores[1].item() == pytest.approx(0.0)
    # a circuit file records its node kinds and rebuilds the same graph
    again = Circuit.from_dict(circ.to_dict(), model)
    assert again == circ and again.graph.hash() == graph.hash()
    assert len(circ.figure().data) > 0  # the figure lays out nodes of any kind
