"""Attribution graphs: every edge equals a literal perturbation of the real model, every node's
inputs add up to its pre-activation, neuron graphs score 1, transcoder graphs carry their error,
and the graph's pruning, JSON, interventions and figure behave."""

from __future__ import annotations

import json

import pytest
import torch

import interpkit as ik
from graphs_reference import frozen_model_change, reference
from interpkit.graphs import Graph, GraphError, Node
from interpkit.models._load import wrap_hf_model
from tiny_models import tiny_gpt2_hf, tiny_llama_hf, tiny_neox_hf

PROMPT = [3, 17, 5, 9, 11, 2]
BUILDERS = {"gpt2": tiny_gpt2_hf, "llama": tiny_llama_hf, "neox": tiny_neox_hf}


@pytest.fixture(scope="module", params=list(BUILDERS))
def model64(request):
    """The tiny GPT-2, Llama (GQA, RoPE) and parallel-block NeoX models in float64."""
    return wrap_hf_model(BUILDERS[request.param]().double(), None, spec=f"tiny-{request.param}-f64")


@pytest.fixture(scope="module")
def llama64():
    return wrap_hf_model(tiny_llama_hf().double(), None, spec="tiny-llama-f64")


def full_graph(model, features="neurons", **kw):
    kw = {"max_feature_nodes": 10**6, "dtype": torch.float64, "verify": 0, **kw}
    return ik.graphs.attribute(model, PROMPT, features, **kw)


def targets_and_sources(graph):
    rows = [i for i, n in enumerate(graph.nodes) if n.pre_activation is not None]
    cols = [i for i, n in enumerate(graph.nodes) if n.kind != "logit"]
    return rows, cols


def assert_sums_to_pre(graph, rel=1e-4):
    a = graph.dense().double()
    for i, n in enumerate(graph.nodes):
        if n.pre_activation is None:
            continue
        total = float(a[i].sum()) + n.constant + n.other
        scale = max(abs(n.pre_activation), 1e-3 * (float(a[i].abs().sum()) + abs(n.constant)))
        assert abs(total - n.pre_activation) <= rel * scale, (n.id, total, n.pre_activation)


@pytest.mark.parametrize("skip_first", [False, True])
def test_neuron_graph_matches_the_literal_reference(model64, skip_first):
    graph = full_graph(model64, skip_first_position=skip_first)
    assert any(n.position == 0 for n in graph.nodes if n.kind == "neuron") != skip_first
    assert {n.kind for n in graph.nodes} == {"neuron", "embedding", "logit"}  # exact: no error nodes
    edges, constant, base = reference(model64, graph)
    rows, cols = targets_and_sources(graph)
    ours = graph.dense().double()[rows][:, cols]
    scale = edges.abs().sum(1, keepdim=True) + constant.abs()[:, None]
    assert bool(((ours - edges).abs() <= 1e-4 * scale).all()), float(((ours - edges).abs() / scale).max())
    ours_const = torch.tensor([graph.nodes[i].constant for i in rows], dtype=torch.float64)
    assert torch.allclose(ours_const, constant, rtol=1e-4, atol=1e-4 * float(scale.max()))
    pre = torch.tensor([graph.nodes[i].pre_activation for i in rows], dtype=torch.float64)
    assert torch.allclose(pre, base, rtol=1e-4, atol=1e-6)  # the nodes' values are the model's own
    assert_sums_to_pre(graph)
    for key in ("replacement", "completeness", "pruned_replacement", "pruned_completeness"):
        assert abs(graph.scores[key] - 1.0) < 1e-4, key


class ReLUTranscoder(torch.nn.Module):
    """A stand-in for the dictionaries package's transcoder (ReLU, optional skip term)."""

    def __init__(self, d, n_latents, seed, skip=True, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W_enc = (torch.randn(n_latents, d, generator=g) / d**0.5).to(dtype)
        self.b_enc = (torch.randn(n_latents, generator=g) * 0.1).to(dtype)
        self.W_dec = (torch.randn(n_latents, d, generator=g) * 0.05).to(dtype)
        self.b_dec = (torch.randn(d, generator=g) * 0.01).to(dtype)
        self.W_skip = (torch.randn(d, d, generator=g) * 0.05).to(dtype) if skip else None

    def encode(self, x):
        return torch.relu(x @ self.W_enc.T + self.b_enc)

    def decode(self, z):
        return z @ self.W_dec + self.b_dec


class TopKTranscoder(ReLUTranscoder):
    """Sparse: the ``k`` largest pre-activations per position (a layer's contraction then runs per position)."""

    def __init__(self, d, n_latents, seed, k=3, **kw):
        super().__init__(d, n_latents, seed, **kw)
        self.k = k

    def encode(self, x):
        pre = x @ self.W_enc.T + self.b_enc
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


@pytest.mark.parametrize(
    ("skip_first", "kind"), [(False, ReLUTranscoder), (True, ReLUTranscoder), (True, TopKTranscoder)]
)
def test_transcoder_graph_matches_the_literal_reference(llama64, skip_first, kind):
    d = llama64.cfg.d_model
    tcs = {0: kind(d, 64, 0), 2: kind(d, 64, 2, skip=False)}  # layer 1: all error
    graph = full_graph(llama64, tcs, skip_first_position=skip_first)
    kinds = [n.kind for n in graph.nodes]
    assert kinds.count("error") == 3 * len(PROMPT) and "feature" in kinds  # one per layer and position
    edges, constant, _ = reference(llama64, graph, transcoders=tcs)
    rows, cols = targets_and_sources(graph)
    ours = graph.dense().double()[rows][:, cols]
    scale = edges.abs().sum(1, keepdim=True) + constant.abs()[:, None]
    assert bool(((ours - edges).abs() <= 1e-4 * scale).all()), float(((ours - edges).abs() / scale).max())
    assert_sums_to_pre(graph)
    assert 0.0 < graph.scores["replacement"] < 1.0 and 0.0 < graph.scores["completeness"] < 1.0


def test_float32_default_and_partial_graphs_keep_the_sums(tiny_gpt2, tiny_llama):
    graph = ik.graphs.attribute(tiny_gpt2, PROMPT, max_feature_nodes=10**6, verify=0)
    assert graph.meta["dtype"] == "float32" and graph.meta["exact_rows"]
    assert_sums_to_pre(graph)
    small = ik.graphs.attribute(tiny_llama, PROMPT, max_feature_nodes=40, verify=0)
    assert sum(n.kind == "neuron" for n in small.nodes) == 40
    assert any(abs(n.other) > 0 for n in small.nodes if n.other is not None)  # the features left out
    assert_sums_to_pre(small)
    tight = ik.graphs.attribute(tiny_llama, PROMPT, max_feature_nodes=60, row_budget_bytes=40_000, verify=0)
    assert not tight.meta["exact_rows"]
    assert_sums_to_pre(tight)


def test_first_features_visited_are_those_the_logit_rows_rank_highest(tiny_llama):
    full = ik.graphs.attribute(tiny_llama, PROMPT, max_feature_nodes=10**6, verify=0)
    a = full.dense()
    logits = [i for i, n in enumerate(full.nodes) if n.kind == "logit"]
    probs = torch.tensor([full.nodes[i].probability for i in logits])
    normal = a.abs() / a.abs().sum(1, keepdim=True).clamp_min(1e-10)
    through_logits = probs @ normal[logits]
    features = [i for i, n in enumerate(full.nodes) if n.kind == "neuron"]
    expected = {full.nodes[features[int(j)]].id for j in through_logits[features].topk(30).indices}
    part = ik.graphs.attribute(tiny_llama, PROMPT, max_feature_nodes=30, batch_size=64, verify=0)
    assert {n.id for n in part.nodes if n.kind == "neuron"} == expected


def test_prune_keeps_tokens_logits_and_connected_features(tiny_llama):
    graph = ik.graphs.attribute(tiny_llama, PROMPT, max_feature_nodes=300, verify=0)
    pruned = graph.prune()
    kinds = pruned.kinds()
    assert kinds.count("embedding") == len(PROMPT) and kinds.count("logit") == kinds.count("logit")
    assert len(pruned) < len(graph)
    a = pruned.dense()
    for i, n in enumerate(pruned.nodes):
        if n.kind == "neuron":
            assert bool(a[i].any()) and bool(a[:, i].any()), n.id
    assert len(graph.prune(1.0, 1.0)) >= len(pruned)
    with pytest.raises(GraphError, match="node_threshold"):
        graph.prune(node_threshold=1.5)


def test_json_round_trip_in_circuit_tracer_schema(tiny_llama, tmp_path):
    graph = ik.graphs.attribute(tiny_llama, PROMPT, max_feature_nodes=50, verify=3)
    data = graph.to_json(tmp_path / "graph.json", slug="t")
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    meta = data["metadata"]
    assert {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version"} <= set(
        meta
    )
    node = data["nodes"][0]
    for key in ("node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp", "influence"):
        assert key in node
    assert {d["layer"] for d in data["nodes"] if d["feature_type"] == "embedding"} == {"E"}
    assert next(d["is_target_logit"] for d in data["nodes"] if d["feature_type"] == "logit") is True
    assert set(data["links"][0]) == {"source", "target", "weight"}
    back = Graph.from_json(tmp_path / "graph.json")
    assert [n.id for n in back.nodes] == [n.id for n in graph.nodes]
    assert torch.equal(back.dense().float(), graph.dense().float())
    assert back.scores == graph.scores and back.verification["nodes"] == graph.verification["nodes"]
    stripped = json.loads((tmp_path / "graph.json").read_text())  # as circuit-tracer itself would write it
    for d in stripped["nodes"]:
        for key in [k for k in d if k.startswith("ik_")]:
            del d[key]
    del stripped["metadata"]["interpkit"]
    foreign = Graph.from_json(stripped)
    assert [(n.kind, n.layer, n.feature) for n in foreign.nodes] == [(n.kind, n.layer, n.feature) for n in graph.nodes]
    with pytest.raises(GraphError, match="not a circuit-tracer graph"):
        Graph.from_json({"nodes": []})


def test_predict_propagates_through_features_in_layer_order():
    nodes = [
        Node("E_1_0", "embedding", -1, 0, 1),
        Node("0_0_0", "neuron", 0, 0, 0, activation=2.0, pre_activation=4.0),
        Node("1_0_0", "neuron", 1, 0, 0, activation=1.0, pre_activation=2.0),
        Node("3_5_0", "logit", 2, 0, 5, pre_activation=0.0, probability=1.0),
    ]
    a = torch.zeros(4, 4)
    a[1, 0], a[2, 1], a[3, 1], a[3, 2] = 4.0, 1.0, 3.0, 2.0
    graph = Graph(nodes, a.to_sparse(), [1], ["x"], meta={"n_layers": 2})
    # ablating node 1 (rho -1): node 2's pre-activation falls by 1 (rho -1/2); logit by 3 + 2 * 1/2
    assert torch.allclose(ik.graphs.predict(graph, [[1], [2], [1, 2]], 0.0), torch.tensor([-4.0, -2.0, -5.0]))


@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_full_graph_predictions_equal_the_replacement_model_run_literally(model64, scale):
    graph = full_graph(model64)
    for node in graph.top_nodes(3):
        res = ik.graphs.intervene(model64, graph, [node.id], scale)
        literal = frozen_model_change(model64, graph, node, scale)
        predicted, replacement = float(res.scores[0]), float(res.scores[1])
        assert abs(replacement - literal) <= 1e-6 + 1e-4 * abs(literal), (node.id, replacement, literal)
        assert abs(predicted - literal) <= 1e-6 + 1e-4 * abs(literal), (node.id, predicted, literal)


def test_interventions_in_the_real_model(tiny_llama):
    graph = ik.graphs.attribute(tiny_llama, PROMPT, max_feature_nodes=200, verify=5)
    check = graph.verification
    assert len(check["nodes"]) == 5 and {"spearman_frozen", "sign_agreement_unfrozen"} <= set(check)
    top = graph.top_nodes(1)[0]
    same = ik.graphs.intervene(tiny_llama, graph, [top.id], 1.0)
    assert torch.allclose(same.scores, torch.zeros(4), atol=1e-5)
    res = ik.graphs.intervene(tiny_llama, graph, top.id, 0.0)
    assert res.labels["estimate"] == ["predicted", "replacement", "actual_frozen", "actual_unfrozen"]
    # the frozen-attention actual, by hand: the neuron zeroed at its position, every pattern held
    store = {}
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(tiny_llama.cfg.n_layers)]

    def keep(act, hook):
        store[hook.name] = act.clone()

    ids = torch.tensor(PROMPT)[None]
    with torch.inference_mode(), ik.hooks.hooks(tiny_llama, fwd=[(n, keep) for n in names]):
        clean = tiny_llama.bridge(ids)[0, -1]

    def zero(act, hook):
        act = act.clone()
        act[0, top.position, top.feature] = 0.0
        return act

    fwd = [(n, lambda act, hook, n=n: store[n]) for n in names]
    fwd.append((f"blocks.{top.layer}.mlp.hook_post", zero))
    with torch.inference_mode(), ik.hooks.hooks(tiny_llama, fwd=fwd):
        changed = tiny_llama.bridge(ids)[0, -1]
    target = graph.nodes[graph.kinds().index("logit")].feature
    by_hand = (changed[target] - changed.mean()) - (clean[target] - clean.mean())
    assert abs(float(res.scores[2]) - float(by_hand)) < 1e-5
    with pytest.raises(GraphError, match="feature or neuron nodes"):
        ik.graphs.intervene(tiny_llama, graph, ["E_3_0"], 0.0)
    with pytest.raises(GraphError, match="unknown graph node"):
        ik.graphs.intervene(tiny_llama, graph, ["no_such_node"], 0.0)


def test_transcoder_splice_reproduces_the_prompt(llama64):
    from interpkit.graphs._splice import Splice

    d = llama64.cfg.d_model
    tcs = [ReLUTranscoder(d, 32, s) for s in range(llama64.cfg.n_layers)]
    graph = ik.graphs.attribute(llama64, PROMPT, tcs, max_feature_nodes=100, verify=4)
    assert graph.meta["features"] == "transcoders" and len(graph.verification["nodes"]) == 4
    ids = torch.tensor(PROMPT)[None]
    with torch.inference_mode():
        clean = llama64.bridge(ids)[0, -1].double()
    for frozen in (True, False):
        spliced = Splice(llama64, ids, dict(enumerate(tcs)), frozen).run(ids, [[]], graph, 0.0)
        assert torch.allclose(spliced[0], clean, atol=1e-10)
    top = graph.top_nodes(1)[0].id
    assert torch.allclose(ik.graphs.intervene(llama64, graph, [top], 1.0).scores, torch.zeros(4), atol=1e-9)
    restored = Graph.from_json(graph.to_json())
    with pytest.raises(GraphError, match="pass them as features"):
        ik.graphs.intervene(llama64, restored, [top], 0.0)
    assert ik.graphs.intervene(llama64, restored, [top], 0.0, features=tcs).scores.shape == (4,)


def test_figure_draws_every_node(tiny_gpt2):
    graph = ik.graphs.attribute(tiny_gpt2, PROMPT, max_feature_nodes=100, verify=0).prune()
    fig = graph.figure()
    assert len(fig.data[-1].x) == len(graph)


def test_bad_input_raises_clear_errors(tiny_llama, toy, tmp_path):
    with pytest.raises(GraphError, match="one prompt"):
        ik.graphs.attribute(tiny_llama, [PROMPT, PROMPT])
    with pytest.raises(GraphError, match="attention-only"):
        ik.graphs.attribute(toy, [1, 2, 3])
    with pytest.raises(GraphError, match="features="):
        ik.graphs.attribute(tiny_llama, PROMPT, "neuronz")
    with pytest.raises(GraphError, match="W_dec"):
        ik.graphs.attribute(tiny_llama, PROMPT, {0: ReLUTranscoder(7, 4, 0)})
    with pytest.raises(GraphError, match="layers \\[5\\]"):
        ik.graphs.attribute(tiny_llama, PROMPT, {5: ReLUTranscoder(48, 4, 0)})
    with pytest.raises(GraphError, match="lacks encode"):
        ik.graphs.attribute(tiny_llama, PROMPT, {0: object()})
    with pytest.raises(GraphError, match="outside the vocabulary"):
        ik.graphs.attribute(tiny_llama, PROMPT, target_logits=[1000])
    with pytest.raises(GraphError, match="max_feature_nodes"):
        ik.graphs.attribute(tiny_llama, PROMPT, max_feature_nodes=-1)
    with pytest.raises(GraphError, match="interpkit.dictionaries"):
        ik.graphs.attribute(tiny_llama, PROMPT, str(tmp_path))  # a folder needs the dictionaries package
