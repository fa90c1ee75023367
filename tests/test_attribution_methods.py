"""Node methods (AtP*, IG), EAP-IG activations, fast exact edges, DLA, honesty checks, dispatch.

Each fast path is checked against a literal computation on a tiny model: the QK fix against the
exactly recomputed pattern, GradDrop against its closed form on last-layer nodes, IG against the
gradient at the path's midpoint and against exact patching, EAP-IG (activations) against a loop
over the steps, batched exact edges against edge-by-edge patching.
"""

from __future__ import annotations

import pytest
import torch

import interpkit as ik
from interpkit.attribution import AttributionError, atp, atp_star, dla, edge_scores, ig, logit_lens
from interpkit.attribution.edge_exact import exact_edge_matrix
from interpkit.attribution.graph import build_graph
from interpkit.hooks import hooks
from interpkit.metrics import evaluate
from interpkit.models.anatomy import split_inputs
from patching_reference import run_cache
from tiny_models import random_task, suffix_off


@pytest.mark.parametrize(("site", "per_position"), [("head_k", True), ("head_k", False), ("head_q", True)])
def test_qk_fix_is_exact_where_the_rest_is_linear(toy, site, per_position):
    """The toy model has no norms and no MLPs: after layer 1's pattern the metric is linear,
    so AtP* (softmax recomputed) equals exact patching while AtP (linearised softmax) does not."""
    task = ik.tasks.load("induction", toy, n=4, seed=0)
    exact = ik.patch(toy, task, site, per_position=per_position, layers=[1])
    star = atp_star(toy, task, site, per_position=per_position, layers=[1], graddrop=False, check=0)
    plain = atp(toy, task, site, per_position=per_position, layers=[1], check=0)
    assert star.scores.shape == exact.scores.shape and star.labels == exact.labels
    assert torch.allclose(star.scores, exact.scores, atol=1e-4)
    if site == "head_k":
        assert (plain.scores - exact.scores).abs().max() > 0.1


def test_qk_fix_key_patch_matches_literal_pattern_change(tiny_llama):
    """GQA + rotary: patch one KV head's key at one position, recompute the pattern by running the
    model, and dot the pattern change with the pattern gradient; AtP* must give the same."""
    model, layer, kv, pos = tiny_llama, 1, 1, 3
    task = random_task(model, n=2, pos=6, seed=3)
    star = atp_star(model, task, "head_k", per_position=True, layers=[layer], graddrop=False, check=0)
    k_name, p_name = f"blocks.{layer}.attn.hook_k", f"blocks.{layer}.attn.hook_pattern"
    clean, _ = run_cache(model, task.clean, [k_name])
    corrupt, _ = run_cache(model, task.corrupt, [k_name, p_name])
    grads = {}
    with torch.enable_grad(), hooks(model, grad=[(p_name, lambda g, name: grads.setdefault(name, g))]):
        evaluate(model(task.corrupt), task).sum().backward()
    model.bridge.zero_grad(set_to_none=True)

    def swap(act, hook):
        new = act.clone()
        new[:, pos, kv] = clean[k_name][:, pos, kv]
        return new

    seen = {}
    with (
        torch.no_grad(),
        hooks(model, fwd=[(k_name, swap), (p_name, lambda act, hook: seen.setdefault("p", act.clone()))]),
    ):
        model(task.corrupt)
    group = model.cfg.n_heads // model.cfg.n_kv_heads
    heads = slice(kv * group, (kv + 1) * group)
    change = ((seen["p"] - corrupt[p_name]) * grads[model.resolve_hook(p_name)])[:, heads].sum((1, 2, 3))
    target = evaluate(model(task.corrupt), task)
    got = star.extras["per_example"][0, pos, kv] - target
    assert torch.allclose(got, change, atol=1e-5)


@pytest.mark.parametrize("model_name", ["toy", "tiny_llama"])
def test_graddrop_is_abs_atp_on_last_layer_nodes(model_name, request):
    """Dropping a layer below the node changes nothing; dropping its own layer zeroes it: the
    1/(L-1) normaliser makes GradDrop = |AtP| per example for nodes in the last layer."""
    model = request.getfixturevalue(model_name)
    task = random_task(model, n=3, pos=6, seed=1)
    last = model.cfg.n_layers - 1
    star = atp_star(model, task, "head_out", layers=[last], check=0)
    plain = atp(model, task, "head_out", layers=[last], check=0)
    target = evaluate(model(task.corrupt), task)
    expected = (plain.extras["per_example"] - target).abs().mean(-1)
    assert torch.allclose(star.extras["graddrop"], expected, atol=1e-5)
    everywhere = atp_star(model, task, "head_out", check=0)
    assert (everywhere.extras["graddrop"] >= 0).all() and everywhere.meta["graddrop"]


def test_ig_one_step_is_the_midpoint_gradient(tiny_gpt2):
    model = tiny_gpt2
    task = random_task(model, n=3, pos=6, seed=2)
    res = ig(model, task, "mlp_out", layers=[1], ig_steps=1, check=0)
    name = "blocks.1.hook_mlp_out"
    clean, _ = run_cache(model, task.clean, [name])
    corrupt, _ = run_cache(model, task.corrupt, [name])
    mid = ((clean[name] + corrupt[name]) / 2).requires_grad_(True)
    with torch.enable_grad(), hooks(model, fwd=[(name, lambda act, hook: mid)]):
        (g,) = torch.autograd.grad(evaluate(model(task.corrupt), task).sum(), [mid])
    linear = ((clean[name] - corrupt[name]) * g).sum((1, 2))
    target = evaluate(model(task.corrupt), task)
    assert torch.allclose(res.extras["per_example"][0], target + linear, atol=1e-5)


def test_ig_converges_to_exact_patching(tiny_gpt2):
    model = tiny_gpt2
    task = random_task(model, n=3, pos=6, seed=0)
    exact = ik.patch(model, task, "resid_pre", layers=[1])
    errors = [
        (ig(model, task, "resid_pre", layers=[1], ig_steps=m, check=0).scores - exact.scores).abs().max()
        for m in (1, 4, 16)
    ]
    plain = (atp(model, task, "resid_pre", layers=[1], check=0).scores - exact.scores).abs().max()
    assert errors[2] < errors[1] < errors[0] and errors[2] < plain
    assert errors[2] < 1e-4


@pytest.mark.parametrize("site", ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out"])
def test_ig_suffix_forward_equals_hooked_forward(site, tiny_llama):
    """IG's rows run on the suffix forward (from just after the site, to the answer columns only);
    the gradients equal those of the hooked model from the layer's resid_pre."""
    task = random_task(tiny_llama, n=3, pos=6, seed=4, ragged=True)
    for per_position, metric in ((False, "logit_diff"), (True, "logprob")):
        options = {"layers": [0, 1], "ig_steps": 2, "check": 0, "per_position": per_position, "metric": metric}
        fast = ig(tiny_llama, task, site, direction="noise", **options)
        with suffix_off(tiny_llama):
            slow = ig(tiny_llama, task, site, direction="noise", **options)
        assert (fast.meta["engine"], slow.meta["engine"]) == ("suffix", "hooks")
        torch.testing.assert_close(fast.extras["per_example"], slow.extras["per_example"], atol=1e-5, rtol=1e-4)


def _interpolated_grads(model, task, hook_name, t, s, steps, receivers):
    """Literal EAP-IG (activations): one full forward/backward per step, sender group replaced."""
    total = {name: 0.0 for name in receivers}
    for k in range(1, steps + 1):
        point = t + k / steps * (s - t)
        kept = {}

        def keep(act, hook, kept=kept):
            kept[hook.name] = act
            return act

        with split_inputs(model), torch.enable_grad():
            fwd = [(hook_name, lambda act, hook, point=point: point), *[(name, keep) for name in receivers]]
            with hooks(model, fwd=fwd):
                value = evaluate(model(task.clean), task).sum()
                grads = torch.autograd.grad(value, [kept[model.resolve_hook(name)] for name in receivers])
        for name, g in zip(receivers, grads, strict=True):
            total[name] = total[name] + g / steps
    return total


def test_eap_ig_activations_equals_literal_loop(tiny_llama):
    model = tiny_llama
    task = random_task(model, n=2, pos=5, seed=0)
    steps = 3
    res = edge_scores(model, task, "eap-ig-act", ig_steps=steps, check=0, direction="noise")
    assert res.meta["variant"] == "activations"
    names = ["blocks.0.attn.hook_z", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_pre"]
    clean, _ = run_cache(model, task.clean, names)
    corrupt, _ = run_cache(model, task.corrupt, names)
    receivers = ["blocks.2.hook_q_input", "blocks.2.hook_k_input", "blocks.1.hook_mlp_in"]
    for group_hook, edges in [
        ("blocks.0.attn.hook_z", [("L0H3", "L2H4.q", 0, 4), ("L0H1", "L2KV1.k", 1, 1)]),
        ("blocks.0.hook_mlp_out", [("L0.mlp", "L2H0.q", 0, 0), ("L0.mlp", "L1.mlp", 2, None)]),
    ]:
        g = _interpolated_grads(model, task, group_hook, clean[group_hook], corrupt[group_hook], steps, receivers)
        for sender, receiver, which, index in edges:
            if sender.startswith("L0H"):
                head = int(sender[3:])
                w_o = model.bridge.blocks[0].attn.W_O[head]
                d = (corrupt[group_hook][:, :, head] - clean[group_hook][:, :, head]) @ w_o
            else:
                d = corrupt[group_hook] - clean[group_hook]
            grad = g[receivers[which]]
            grad = grad[:, :, index] if index is not None else grad
            literal = (d * grad).sum() / len(task)
            got = res.scores[res.labels["edge"].index(f"{sender}->{receiver}")]
            assert got.item() == pytest.approx(literal.item(), rel=1e-3, abs=1e-5), (sender, receiver)


@pytest.mark.parametrize(
    "model_name", ["tiny_neox", "tiny_llama", "tiny_qwen3"]
)  # parallel blocks, then sequential ones
def test_fast_exact_edges_equal_edge_by_edge(model_name, request):
    model = request.getfixturevalue(model_name)
    task = random_task(model, n=2, pos=5, seed=1)
    graph = build_graph(model)
    fast = edge_scores(model, task, "exact", direction="noise").extras["matrix"]
    reference = exact_edge_matrix(model, task, graph, "noise", "logit_diff")
    assert torch.allclose(fast[graph.mask], reference[graph.mask], atol=1e-5)  # same-layer head -> MLP too
    if model.cfg.parallel_attn_mlp:
        return
    # same-layer head -> MLP edge, literally: the MLP reads its input plus the head's output change
    z = "blocks.1.attn.hook_z"
    clean, _ = run_cache(model, task.clean, [z])
    corrupt, _ = run_cache(model, task.corrupt, [z])
    d = (corrupt[z][:, :, 2] - clean[z][:, :, 2]) @ model.bridge.blocks[1].attn.W_O[2]
    with torch.no_grad(), split_inputs(model), hooks(model, fwd=[("blocks.1.hook_mlp_in", lambda act, hook: act + d)]):
        patched = evaluate(model(task.clean), task).mean()
    base = evaluate(model(task.clean), task).mean()
    s, r = graph.edge_index("L1H2->L1.mlp")
    assert fast[s, r].item() == pytest.approx((patched - base).item(), abs=1e-5)


@pytest.mark.parametrize(
    "model_name", ["tiny_gpt2", "tiny_llama", "tiny_gemma", "tiny_gemma2", "tiny_neox", "tiny_qwen3"]
)
def test_dla_sums_to_the_logit_difference(model_name, request):
    model = request.getfixturevalue(model_name)
    task = random_task(model, n=3, pos=6, seed=0, ragged=True)
    actual = evaluate(model(task.clean), task, "logit_diff")
    comp = dla(model, task, by="component")
    assert comp.meta["residual_error"] < 1e-4
    assert comp.scores.sum().item() == pytest.approx(actual.mean().item(), abs=1e-4)
    heads = dla(model, task, by="head")
    assert heads.dims == ("layer", "head") and heads.labels == ik.patch(model, task, "head_out").labels
    layers = dla(model, task, by="layer")
    assert layers.scores[-1].item() == pytest.approx(actual.mean().item(), abs=1e-4)
    pos = dla(model, task, by="position")
    assert torch.allclose(pos.extras["per_example"].sum(0), actual, atol=1e-4)
    lens = logit_lens(model, task)
    assert lens.dims == ("layer", "example") and torch.allclose(lens.scores[-1], actual, atol=1e-4)
    with pytest.raises(AttributionError, match="position"):
        dla(model, task, by="positions")


@pytest.mark.parametrize(
    ("method", "level", "options"),
    [
        ("atp", "node", {}),
        ("atp*", "node", {"site": "head_k"}),
        ("ig", "node", {"ig_steps": 2}),
        ("eap", "edge", {"direction": "noise"}),
        ("eap-ig", "edge", {"ig_steps": 2, "direction": "noise"}),
    ],
)
def test_every_gradient_result_carries_a_check(tiny_llama, method, level, options):
    task = random_task(tiny_llama, n=2, pos=5, seed=0)
    res = ik.attribute(tiny_llama, task, method=method, level=level, **options)
    chk = res.extras["check"]
    total = res.scores.numel()
    assert chk["n"] == min(20, total) and len(chk["labels"]) == chk["n"]
    for key in ("spearman", "pearson"):
        assert -1.0 - 1e-9 <= chk[key] <= 1.0 + 1e-9
    assert "check" not in ik.attribute(tiny_llama, task, method=method, level=level, check=0, **options).extras


def test_attribute_rejects_bad_inputs(tiny_llama):
    task = random_task(tiny_llama, n=2, pos=5, seed=0)
    with pytest.raises(AttributionError, match=r"atp\*"):
        ik.attribute(tiny_llama, task, method="atp_star", level="node")
    with pytest.raises(AttributionError, match="eap-ig-act"):
        ik.attribute(tiny_llama, task, method="eap-ig-acts", level="edge")
    with pytest.raises(AttributionError, match="edge"):
        ik.attribute(tiny_llama, task, method="eap", level="edges")
    for method, level in [("atp", "node"), ("atp*", "node"), ("ig", "node"), ("eap", "edge"), ("eap-ig-act", "edge")]:
        with pytest.raises(AttributionError, match="no gradient path"):
            ik.attribute(tiny_llama, task, method=method, level=level, metric="accuracy", check=0, direction="denoise")
    assert ik.attribute(tiny_llama, task, method="exact", level="node", metric="accuracy").dims == ("layer", "head")
    assert ik.attribute(tiny_llama, task, method="dla", level="node", by="layer").dims == ("layer",)
    # an option the method does not take is named, with the closest valid one, before any work is done
    with pytest.raises(AttributionError, match=r"no option 'steps' \(did you mean ig_steps"):
        ik.attribute(tiny_llama, task, method="ig", level="node", steps=4)
    with pytest.raises(AttributionError, match="'site'.*its options: direction, metric, check"):
        ik.attribute(tiny_llama, task, method="eap", level="edge", site="head_out")


def test_ig_finds_the_previous_token_head_that_atp_misses(toy):
    """DESIGN's verified recipe: with the first block corrupted, the layer-0 previous-token head
    acts through the layer-1 heads' saturated attention; AtP sees a fraction, IG nearly all."""
    task = ik.tasks.load("induction", toy, n=4, seed=0)
    exact = ik.patch(toy, task, "head_out", layers=[0])
    head = exact.scores.sub(exact.corrupt_value).abs().argmax()
    effect = (exact.scores - exact.corrupt_value).reshape(-1)[head]
    linear = (atp(toy, task, "head_out", layers=[0], check=0).scores - exact.corrupt_value).reshape(-1)[head]
    integrated = (ig(toy, task, "head_out", layers=[0], ig_steps=8, check=0).scores - exact.corrupt_value).reshape(-1)[
        head
    ]
    assert abs(effect) > 2.0
    assert abs(linear - effect) > 0.5 * abs(effect)
    assert abs(integrated - effect) < 0.1 * abs(effect)


def test_the_check_samples_the_largest_estimates_and_agrees_with_fresh_exact_patching(tiny_llama):
    """The check reuses the method's runs; its exact values equal exact patching computed from scratch."""
    from interpkit.attribution.edge_exact import exact_edges
    from interpkit.attribution.honesty import THOROUGH

    task = random_task(tiny_llama, n=4, pos=5, seed=2)
    res = ik.attribution.edge_scores(tiny_llama, task, "eap", "noise", check=10)
    chk, labels = res.extras["check"], res.labels["edge"]
    assert chk["n"] == 10 and len(chk["examples"]) == 2
    top = [labels[i] for i in torch.argsort(res.scores.abs(), descending=True)[:5].tolist()]
    assert set(top) <= set(chk["labels"])  # half the sample is the largest scores
    graph = build_graph(tiny_llama)
    pairs = [graph.edge_index(label) for label in chk["labels"]]
    lp = ik.runtime.baseline(tiny_llama, task, "logit_diff")["clean_logprobs"]
    fresh = exact_edges(tiny_llama, task, graph, pairs, "noise", "logit_diff", lp, chk["examples"]).mean(-1)
    torch.testing.assert_close(chk["exact"], fresh.float().cpu(), atol=1e-5, rtol=1e-5)
    node = ik.attribution.atp(tiny_llama, task, site="head_out", check=6).extras["check"]
    patched = ik.patch(tiny_llama, task, "head_out").extras["per_example"].reshape(-1, len(task))
    names = ik.patch(tiny_llama, task, "head_out").labels
    flat = [f"{lay}{h}" for lay in names["layer"] for h in names["head"]]
    rows = [flat.index(label) for label in node["labels"]]
    torch.testing.assert_close(node["exact"], patched[rows][:, node["examples"]].mean(-1), atol=1e-5, rtol=1e-5)
    thorough = ik.attribution.atp(tiny_llama, task, check="thorough")
    n_heads = thorough.scores.numel()  # fewer than THOROUGH[0] on a tiny model: every one is checked
    assert thorough.extras["check"]["n"] == min(THOROUGH[0], n_heads) and len(thorough.extras["check"]["examples"]) == 4
    for bad in (-1, 2.5, "some", True):
        with pytest.raises(AttributionError, match="check must be"):
            ik.attribution.atp(tiny_llama, task, check=bad)


def test_hybrid_patches_its_top_candidates_exactly(tiny_llama):
    task = random_task(tiny_llama, n=3, pos=5, seed=5)
    res = ik.attribution.edge_scores(tiny_llama, task, "hybrid", "noise", rank_by="eap", candidates=12)
    eap = ik.attribution.edge_scores(tiny_llama, task, "eap", "noise", check=0)
    exact = ik.attribution.edge_scores(tiny_llama, task, "exact", "noise")
    labels = res.labels["edge"]
    chosen = [labels.index(label) for label in res.extras["check"]["labels"]]
    top = torch.argsort(eap.scores.abs(), descending=True)[:12].tolist()
    assert sorted(chosen) == sorted(top) and res.meta["candidates"] == 12
    torch.testing.assert_close(res.scores[chosen], exact.scores[chosen], atol=1e-5, rtol=1e-5)
    rest = [i for i in range(len(labels)) if i not in set(chosen)]
    assert torch.equal(res.scores[rest], eap.scores[rest])
    with pytest.raises(AttributionError, match="hybrid ranking method"):
        ik.attribution.hybrid(tiny_llama, task, rank_by="exact")
    with pytest.raises(AttributionError, match="candidates must be"):
        ik.attribution.hybrid(tiny_llama, task, candidates=0)
