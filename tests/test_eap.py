"""Edge attribution: the graph, EAP against its literal formula and against exact edge patching."""

from __future__ import annotations

import pytest
import torch

from interpkit.attribution import AttributionError, edge_scores
from interpkit.attribution.graph import build_graph
from interpkit.hooks import hooks
from interpkit.metrics import evaluate
from interpkit.models.anatomy import split_inputs
from patching_reference import run_cache
from tiny_models import random_task


def _task(model, n=2, pos=5, seed=0):
    return random_task(model, n, pos, seed)


def test_graph_shape(tiny_llama, toy):
    g = build_graph(tiny_llama)  # 3 layers, 6 heads, 2 KV heads, MLPs
    assert len(g.senders) == 1 + 3 * 6 + 3
    assert len(g.receivers) == 3 * (6 + 2 + 2 + 1) + 1
    labels = g.edge_labels()
    assert "embed->L0H0.q" in labels and "L0H3->L1KV1.k" in labels and "L1H2->L1.mlp" in labels
    assert "L1H2->L1H0.q" not in labels and "L2.mlp->L2.mlp" not in labels
    assert "L2.mlp->logits" in labels
    assert g.edge_index("L0H3->L1KV1.k") == (4, 6 + 2 + 2 + 1 + 6 + 1)
    toy_graph = build_graph(toy)  # 2 layers, 4 heads, attention only, no GQA: heads name their k/v
    assert "L0H1->L1H3.k" in toy_graph.edge_labels() and not any(".mlp" in e for e in toy_graph.edge_labels())


def test_parallel_blocks_have_no_same_layer_head_to_mlp_edges(tiny_neox):
    assert tiny_neox.cfg.parallel_attn_mlp
    labels = build_graph(tiny_neox).edge_labels()  # attention and MLP both read the block's input
    assert "L1H2->L1.mlp" not in labels and "L0H2->L1.mlp" in labels and "embed->L0.mlp" in labels
    assert "L0.mlp->L1H0.q" in labels and "L0.mlp->L1.mlp" in labels and "L1.mlp->logits" in labels
    task = _task(tiny_neox)
    eap = edge_scores(tiny_neox, task, "eap", check=0, direction="noise")
    assert "L1H2->L1.mlp" not in eap.labels["edge"]
    from interpkit.circuits._circuit import ModelIdentity, graph_hash

    identity = ModelIdentity.of(tiny_neox)  # what a circuit file records rebuilds the parallel graph
    assert identity.parallel_attn_mlp and graph_hash(identity.graph()) == identity.graph_hash


def _edge_patch(model, task, sender, head_kind, receiver_head, eps):
    """Literal: target clean run with one receiver input moved by eps * (sender's output change)."""
    layer_s, head_s = sender
    z = f"blocks.{layer_s}.attn.hook_z"
    clean, _ = run_cache(model, task.clean, [z])
    corrupt, _ = run_cache(model, task.corrupt, [z])
    w_o = model.bridge.blocks[layer_s].attn.W_O[head_s]
    delta = (corrupt[z][:, :, head_s] - clean[z][:, :, head_s]) @ w_o  # (batch, pos, d_model)
    name = f"blocks.2.hook_{head_kind}_input"

    def move(act, hook):
        new = act.clone()
        new[:, :, receiver_head] = act[:, :, receiver_head] + eps * delta
        return new

    with torch.no_grad(), split_inputs(model), hooks(model, fwd=[(name, move)]):
        return evaluate(model(task.clean), task).mean()


@pytest.mark.parametrize(("kind", "head", "label"), [("q", 4, "L2H4.q"), ("k", 1, "L2KV1.k"), ("v", 0, "L2KV0.v")])
def test_eap_is_the_edge_derivative(tiny_llama, kind, head, label):
    task = _task(tiny_llama)
    eap = edge_scores(tiny_llama, task, "eap", direction="noise")
    edge = f"L0H3->{label}"
    score = eap.scores[eap.labels["edge"].index(edge)].item()
    eps = 1e-3
    base = evaluate(tiny_llama(task.clean), task).mean()
    derivative = ((_edge_patch(tiny_llama, task, (0, 3), kind, head, eps) - base) / eps).item()
    assert score == pytest.approx(derivative, rel=3e-2, abs=3e-3)


def test_exact_edges_equal_literal_edge_patching(tiny_llama):
    task = _task(tiny_llama, seed=1)
    exact = edge_scores(tiny_llama, task, "exact", direction="noise")
    base = evaluate(tiny_llama(task.clean), task).mean()
    for kind, head, label in [("q", 4, "L2H4.q"), ("k", 1, "L2KV1.k")]:
        literal = (_edge_patch(tiny_llama, task, (0, 3), kind, head, 1.0) - base).item()
        assert exact.scores[exact.labels["edge"].index(f"L0H3->{label}")].item() == pytest.approx(literal, abs=1e-5)


def test_receivers_a_bridge_does_not_read_are_refused_not_scored_zero(tiny_phi):
    """Phi's bridge feeds its MLP from the shared norm, never through hook_mlp_in: patching an
    edge there would change nothing and score 0, so exact edges refuse it, as EAP does."""
    task = _task(tiny_phi)
    with pytest.raises(AttributionError, match=r"cannot reach the receiver inputs \['blocks.0.hook_mlp_in'\]"):
        edge_scores(tiny_phi, task, "exact", direction="noise")
    with pytest.raises(AttributionError, match="no gradient reached"):
        edge_scores(tiny_phi, task, "eap", direction="noise")
    graph = build_graph(tiny_phi)
    heads_only = [graph.edge_index(e) for e in ("L0H1->L1H2.q", "L0H0->L1H3.v", "embed->L1H0.k")]
    from interpkit.attribution.edge_exact import exact_edges

    clean_lp = tiny_phi(task.clean)[torch.arange(len(task)), task.answer_pos].log_softmax(-1)
    change = exact_edges(tiny_phi, task, graph, heads_only, "noise", "logit_diff", clean_lp)
    assert change.isfinite().all() and change.abs().max() > 0  # head inputs are read: those edges work


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt2", "tiny_neox", "tiny_qwen3"])
def test_eap_ig_one_step_is_eap_from_the_other_end(model_name, request):
    """IG with one step evaluates the gradient at the source end of the path: there it is minus
    EAP in the opposite direction (same gradient point, opposite activation difference)."""
    model = request.getfixturevalue(model_name)
    task = _task(model, n=3, seed=2)
    ig1 = edge_scores(model, task, "eap-ig", ig_steps=1, direction="noise")
    flipped = edge_scores(model, task, "eap", direction="denoise")
    assert torch.allclose(ig1.scores, -flipped.scores, atol=1e-5)
    ig = edge_scores(model, task, "eap-ig", ig_steps=4, direction="noise")
    assert ig.scores.shape == ig1.scores.shape and ig.meta["ig_steps"] == 4


def test_split_inputs_restores_flags(tiny_llama):
    tokens = torch.tensor([[1, 2, 3]])
    before = tiny_llama(tokens)
    with split_inputs(tiny_llama):
        inside = tiny_llama(tokens)
    assert torch.allclose(before, inside, atol=1e-5)
    assert not tiny_llama.bridge.cfg.use_split_qkv_input


def test_attribute_dispatch(tiny_llama):
    import interpkit as ik
    from interpkit.attribution import AttributionError

    task = _task(tiny_llama)
    assert ik.attribute(tiny_llama, task, method="eap", level="edge", direction="noise").dims == ("edge",)
    assert ik.attribute(tiny_llama, task, method="atp", level="node", site="mlp_out").dims == ("layer",)
    with pytest.raises(AttributionError, match="eap-ig"):
        ik.attribute(tiny_llama, task, method="eap_ig", level="edge")
    with pytest.raises(AttributionError, match="node"):
        ik.attribute(tiny_llama, task, method="atp", level="nodes")


def test_edges_on_a_bridge_without_split_inputs(toy):
    """The toy's attention class has no per-head input hooks: head inputs are reached through
    ``attn.hook_q/k/v`` (exact there: no norm before attention). Exact edges then equal the circuits
    engine's single-edge removal, and EAP is the derivative of a literal move of one head's query/key."""
    from interpkit.circuits import edge_removal_scores

    assert not toy.anatomy.split_inputs
    task = random_task(toy, n=3, pos=8, seed=3)
    exact = edge_scores(toy, task, "exact", direction="noise")
    removal = edge_removal_scores(toy, task, "counterfactual")  # noising one edge: the same patch
    torch.testing.assert_close(exact.scores, removal.scores, atol=1e-4, rtol=1e-4)

    eap = edge_scores(toy, task, "eap", direction="noise")
    clean, _ = run_cache(toy, task.clean, ["blocks.0.attn.hook_z"])
    corrupt, _ = run_cache(toy, task.corrupt, ["blocks.0.attn.hook_z"])
    w_o = toy.bridge.blocks[0].attn.W_O[2]
    delta = (corrupt["blocks.0.attn.hook_z"][:, :, 2] - clean["blocks.0.attn.hook_z"][:, :, 2]) @ w_o
    base = evaluate(toy(task.clean), task).mean()
    eps = 1e-3
    for kind in ("q", "k"):
        w = getattr(toy.bridge.blocks[1].attn, f"W_{kind.upper()}")[1]  # (d_model, d_head)

        def move(act, hook, w=w):
            new = act.clone()
            new[:, :, 1] = act[:, :, 1] + eps * delta @ w
            return new

        with torch.no_grad(), hooks(toy, fwd=[(f"blocks.1.attn.hook_{kind}", move)]):
            moved = evaluate(toy(task.clean), task).mean()
        score = eap.scores[eap.labels["edge"].index(f"L0H2->L1H1.{kind}")].item()
        assert score == pytest.approx(((moved - base) / eps).item(), rel=3e-2, abs=3e-3)


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt2", "tiny_gemma"])
def test_gradients_through_the_norm_equal_per_head_copies(model_name, request):
    """One ordinary forward, gradients at hook_q/k/v mapped back through W and the norm's Jacobian,
    equals the per-head-copy ("split") gradients, also along an EAP-IG embedding path."""
    from interpkit.attribution._gradients import gradient_mode, receiver_gradients
    from interpkit.runtime import baseline

    model = request.getfixturevalue(model_name)
    assert gradient_mode(model) == "normed"
    task = _task(model, n=3, pos=6, seed=4)
    lp = baseline(model, task, "logit_diff")["clean_logprobs"]
    clean, _ = run_cache(model, task.clean, ["blocks.0.hook_resid_pre"])
    corrupt, _ = run_cache(model, task.corrupt, ["blocks.0.hook_resid_pre"])
    e_c, e_k = clean["blocks.0.hook_resid_pre"], corrupt["blocks.0.hook_resid_pre"]
    path = torch.stack([e_c + a * (e_k - e_c) for a in (0.25, 0.5, 1.0)])
    for embed_path in (None, path):
        fast = receiver_gradients(model, task, task.clean, "logit_diff", lp, embed_path, mode="normed")
        slow = receiver_gradients(model, task, task.clean, "logit_diff", lp, embed_path, mode="split")
        torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-4)
