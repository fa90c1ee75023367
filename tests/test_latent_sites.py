"""A spliced dictionary's latents are sites like any other: ``ik.patch`` per latent (and position)
against one literal forward per patch, AtP / IG / exact through ``ik.attribute``, probing, bad
input; the splice's rest hook point adds up with the latents to what it writes."""

from __future__ import annotations

import pytest
import torch

import interpkit as ik
from interpkit.dictionaries import Dictionary, spliced
from interpkit.errors import InterpkitError, SiteError
from interpkit.hooks import hooks
from interpkit.metrics import METRICS
from tiny_models import random_task

N_LATENTS = 24


@pytest.fixture(scope="module")
def setup(tiny_llama):
    d = tiny_llama.cfg.d_model
    sae = Dictionary.random(d_in=d, n_latents=N_LATENTS, k=4, input_site="L1.resid_pre", seed=3)
    tc = Dictionary.random(d_in=d, n_latents=N_LATENTS, k=5, kind="skip_transcoder", seed=4)
    tc = tc.replace(input_site="blocks.1.mlp.hook_in", output_site="L1.mlp", W_skip=0.1 * torch.randn(d, d))
    return tiny_llama, random_task(tiny_llama, n=3, pos=5, seed=7), {"L1.resid_pre": sae, "L1.mlp": tc}


def _run(model, tokens, fwd=()):
    with torch.no_grad(), hooks(model, fwd=list(fwd)):
        return model(tokens)


def literal_latent_patch(model, task, name, per_position, direction="denoise"):
    """(pos?, latent, example): one forward per (latent, position, example), the latent replaced alone."""
    fn = METRICS[task.metric]
    store = {}

    def keep(act, hook, key):
        store[key] = act.clone()

    clean_logits = _run(model, task.clean, [(name, lambda a, hook: keep(a, hook, "clean"))])
    _run(model, task.corrupt, [(name, lambda a, hook: keep(a, hook, "corrupt"))])
    clean_lp = clean_logits[torch.arange(len(task)), task.answer_pos].log_softmax(-1)
    target, source = (task.corrupt, store["clean"]) if direction == "denoise" else (task.clean, store["corrupt"])
    positions = range(task.n_pos) if per_position else [None]
    out = torch.zeros(len(positions), N_LATENTS, len(task))
    for pi, pos in enumerate(positions):
        for i in range(N_LATENTS):
            for b in range(len(task)):

                def patch(z, hook, b=b, i=i, pos=pos):
                    z = z.clone()
                    where = slice(None) if pos is None else pos
                    z[0, where, i] = source[b, where, i]
                    return z

                logits = _run(model, target[b : b + 1], [(name, patch)])
                final = logits[:, task.answer_pos[b]]
                out[pi, i, b] = fn(final, task.answer[b : b + 1], task.wrong[b : b + 1], clean_lp[b : b + 1])[0]
    return out if per_position else out[0]


def literal_whole_patch(model, task, name):
    """The metric per example of the corrupt run with every latent at ``name`` from the clean run (None: unpatched)."""
    fn = METRICS[task.metric]
    store = {}
    fwd = [] if name is None else [(name, lambda a, hook: store.__setitem__("clean", a.clone()))]
    clean_logits = _run(model, task.clean, fwd)
    patch = [] if name is None else [(name, lambda a, hook: store["clean"])]
    logits = _run(model, task.corrupt, patch)
    rows = torch.arange(len(task))
    clean_lp = clean_logits[rows, task.answer_pos].log_softmax(-1)
    return fn(logits[rows, task.answer_pos], task.answer, task.wrong, clean_lp)


@pytest.mark.parametrize("error", [True, False])
@pytest.mark.parametrize("site", ["L1.resid_pre", "L1.mlp"])
def test_patching_latents_matches_one_forward_per_patch(setup, site, error):
    model, task, dictionaries = setup
    with spliced(model, dictionaries, error=error):
        name = model.resolve_hook(f"{ik.sites.resolve(model, site).hook}.latents")
        for per_position in (False, True):
            res = ik.patch(model, task, f"{site}.latents", per_position=per_position)
            ref = literal_latent_patch(model, task, name, per_position)
            assert res.dims == (("pos", "latent") if per_position else ("latent",))
            torch.testing.assert_close(res.extras["per_example"], ref, atol=2e-5, rtol=2e-5)
        noised = ik.patch(model, task, f"{site}.latents", direction="noise", latents=[0, 5, 7])
        ref = literal_latent_patch(model, task, name, False, "noise")[[0, 5, 7]]
        torch.testing.assert_close(noised.extras["per_example"], ref, atol=2e-5, rtol=2e-5)
        assert noised.labels["latent"] == ["0", "5", "7"]


def test_latents_and_rest_add_up_to_the_write(setup):
    model, task, dictionaries = setup
    tc = dictionaries["L1.mlp"]
    write = model.resolve_hook("blocks.1.hook_mlp_out")
    seen = {}

    def keep(act, hook):
        seen[hook.name] = act.clone()

    with spliced(model, dictionaries):
        names = [f"{write}.latents", f"{write}.rest", write]
        _run(model, task.clean, [(n, keep) for n in names])
    total = seen[f"{write}.latents"] @ tc.W_dec + seen[f"{write}.rest"]
    torch.testing.assert_close(total, seen[write], atol=1e-5, rtol=1e-5)
    assert bool((seen[f"{write}.latents"][:, 0] == 0).all()) or not tc.meta.get("training", {}).get("exclude_first")


def test_node_attribution_over_latents(setup):
    model, task, dictionaries = setup
    with spliced(model, dictionaries):
        exact = ik.patch(model, task, "L1.mlp.latents", per_position=True)
        atp = ik.attribute(model, task, method="atp", level="node", site="L1.mlp.latents", per_position=True, check=6)
        ig = ik.attribute(
            model, task, method="ig", level="node", site="L1.mlp.latents", per_position=True, ig_steps=64, check=0
        )
        star = ik.attribute(model, task, method="atp*", level="node", site="L1.mlp.latents", check=0, graddrop=False)
        via = ik.attribute(model, task, method="exact", level="node", site="L1.mlp.latents", latents=[1, 2])
        two = ik.patch(model, task, "L1.mlp.latents", latents=[1, 2])
    assert atp.dims == exact.dims == ("pos", "latent") and star.dims == ("latent",)
    moved = exact.scores - exact.corrupt_value  # the patch's effect
    assert float(moved.abs().max()) > 1e-4, "the random task must move the metric"
    # a patch of one latent changes the output linearly; the metric is nearly linear in it
    assert torch.corrcoef(torch.stack([(atp.scores - atp.corrupt_value).flatten(), moved.flatten()]))[0, 1] > 0.8
    # IG shares out the patch of every latent at every position at once (completeness)
    with spliced(model, dictionaries):
        name = model.resolve_hook(f"{ik.sites.resolve(model, 'L1.mlp').hook}.latents")
        whole, unpatched = literal_whole_patch(model, task, name), literal_whole_patch(model, task, None)
    shares = (ig.extras["per_example"] - unpatched).sum((0, 1))
    torch.testing.assert_close(shares, whole - unpatched, atol=2e-3, rtol=2e-2)
    assert atp.extras["check"]["n"] == 6 and all("#" in label for label in atp.extras["check"]["labels"])
    torch.testing.assert_close(via.scores, two.scores)


def test_latents_are_cached_and_probed(setup):
    model, task, dictionaries = setup
    with spliced(model, dictionaries, capture=True) as splice:
        cache = ik.cache.run(model, task.clean, sites=["L1.resid_pre.latents", "L1.mlp.rest"])
        _run(model, task.clean)
        sae_latents = splice.latents["L1.resid_pre"]
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(1, model.cfg.d_vocab, (120, 5), generator=g)
        _run(model, prompts)
        latents = splice.latents["L1.mlp"][:, -1]
        active = (latents > 0).float()
        j = int((active.mean(0) - 0.5).abs().argmin())  # the latent closest to active half the time
        labels = active[:, j].long().tolist()
        ds = ik.probing.collect(model, prompts.tolist(), labels, sites=["L1.mlp.latents"], positions="last")
    torch.testing.assert_close(cache["L1.resid_pre.latents"], sae_latents)
    assert cache["L1.mlp.rest"].shape == (len(task), task.n_pos, model.cfg.d_model)
    assert ds.widths == [N_LATENTS] and ds.sites == ["L1.mlp.latents"]
    torch.testing.assert_close(ds.acts[0][ds.example.argsort()].float(), latents.float(), atol=1e-5, rtol=1e-5)
    res = ik.probing.probe(ds, "logistic")  # whether latent j is active is linear in the latents
    assert res.labels["metric"][0] == "accuracy" and float(res.scores[0, 0, 0]) >= 0.9, res.labels


def test_bad_latent_sites(setup):
    model, task, dictionaries = setup
    with pytest.raises(SiteError, match="none is spliced there"):
        ik.patch(model, task, "L1.mlp.latents")
    with spliced(model, dictionaries):
        with pytest.raises(SiteError, match=r"out of range.*0\.\.23"):
            ik.patch(model, task, "L1.mlp.latents", latents=[3, 24])
        with pytest.raises(SiteError, match="latents= applies"):
            ik.patch(model, task, "resid_pre", latents=[0])
        with pytest.raises(SiteError, match="do not apply"):
            ik.patch(model, task, "L1.mlp.latents", layers=[1])
    with pytest.raises(InterpkitError):
        ik.attribute(model, task, method="atp", level="node", site="L1.mlp.latents")


# ---------------------------------------------------------------- latents as nodes of the edge graph


def test_latents_as_graph_senders(setup):
    from interpkit.circuits import Circuit
    from interpkit.graph import GraphError, build_graph, sender_hooks, sender_outputs
    from patching_reference import run_cache
    from test_graph_kinds import _literal_edge

    model, task, dictionaries = setup
    tc = dictionaries["L1.mlp"]
    with spliced(model, {"L1.mlp": tc}) as splice:
        graph = build_graph(model, senders=splice.senders())
        labels = [n.label for n in graph.senders]
        assert "L1.mlp#0" in labels and "L1.mlp#rest" in labels and "L0.mlp" in labels and "L1.mlp" not in labels
        # the latents and the rest add up to the MLP output (rows, pos, d_model)
        acts, _ = run_cache(model, task.clean, [*sender_hooks(graph), model.resolve_hook("blocks.1.hook_mlp_out")])
        out = sender_outputs(model, graph, acts)
        lo, hi = labels.index("L1.mlp#0"), labels.index("L1.mlp#rest")
        total = out[:, :, lo : hi + 1].sum(2)
        torch.testing.assert_close(total, acts[model.resolve_hook("blocks.1.hook_mlp_out")], atol=1e-5, rtol=1e-5)
        # exact edges from latents equal one literal forward per edge; EAP is linear in the latents
        exact = ik.attribution.edge_scores(model, task, "exact", direction="noise", graph=graph)
        names = exact.labels["edge"]
        for edge in ["L1.mlp#3->L2H1.q", "L1.mlp#rest->logits", "L0H2->L1.mlp", "L1.mlp#7->L2.mlp"]:
            s, r = graph.edge_index(edge)
            want = _literal_edge(model, task, graph, s, r)
            assert exact.scores[names.index(edge)].item() == pytest.approx(want.item(), abs=1e-5), edge
        eap = ik.attribution.edge_scores(model, task, "eap", direction="noise", graph=graph, check=0)
        plain = ik.attribution.edge_scores(model, task, "eap", direction="noise", check=0)
        for receiver in ["L2H1.q", "L2.mlp", "logits"]:
            parts = sum(eap.scores[names.index(f"L1.mlp#{i}->{receiver}")] for i in range(N_LATENTS))
            parts = parts + eap.scores[names.index(f"L1.mlp#rest->{receiver}")]
            whole = plain.scores[plain.labels["edge"].index(f"L1.mlp->{receiver}")]
            assert parts.item() == pytest.approx(whole.item(), abs=1e-5), receiver
        circ = ik.discover_circuit(model, task, "eap", direction="noise", n_edges=30, graph=graph)
        rep = ik.faithfulness(model, task, [Circuit.full(model, graph), circ], "mean")
        assert rep.scores[0].item() == pytest.approx(1.0)
        assert Circuit.from_dict(circ.to_dict(), model).graph.hash() == graph.hash()
    with spliced(model, {"L1.resid_pre": dictionaries["L1.resid_pre"]}) as splice, pytest.raises(GraphError):
        splice.senders()  # a residual-stream SAE's latents are no senders


def test_chosen_latents_and_the_others_as_one_sender(setup):
    from interpkit.graph import GraphError, build_graph, sender_hooks, sender_outputs
    from patching_reference import run_cache
    from test_graph_kinds import _literal_edge

    model, task, dictionaries = setup
    with spliced(model, {"L1.mlp": dictionaries["L1.mlp"]}) as splice:
        full = build_graph(model, senders=splice.senders())
        graph = build_graph(model, senders=splice.senders({"L1.mlp": [3, 7]}))
        labels = [n.label for n in graph.senders]
        assert [x for x in labels if x.startswith("L1.mlp#")] == ["L1.mlp#3", "L1.mlp#7", "L1.mlp#rest", "L1.mlp#other"]
        mlp_out = model.resolve_hook("blocks.1.hook_mlp_out")
        acts, _ = run_cache(model, task.clean, [*sender_hooks(graph), mlp_out])
        out = sender_outputs(model, graph, acts)
        parts = [labels.index(x) for x in ["L1.mlp#3", "L1.mlp#7", "L1.mlp#rest", "L1.mlp#other"]]
        torch.testing.assert_close(out[:, :, parts].sum(2), acts[mlp_out], atol=1e-5, rtol=1e-5)
        # the chosen latents' edges are those of the full graph; the others' edge is literal
        exact = ik.attribution.edge_scores(model, task, "exact", direction="noise", graph=graph)
        whole = ik.attribution.edge_scores(model, task, "exact", direction="noise", graph=full)
        names, full_names = exact.labels["edge"], whole.labels["edge"]
        for edge in ["L1.mlp#3->L2H1.q", "L1.mlp#7->logits"]:
            got, want = exact.scores[names.index(edge)], whole.scores[full_names.index(edge)]
            assert got.item() == pytest.approx(want.item(), abs=1e-6), edge
        for edge in ["L1.mlp#other->L2H0.q", "L1.mlp#other->logits"]:
            s, r = graph.edge_index(edge)
            assert exact.scores[names.index(edge)].item() == pytest.approx(
                _literal_edge(model, task, graph, s, r).item(), abs=1e-5
            ), edge
        for bad in [{"L1.mlp": [N_LATENTS]}, {0: [1]}]:
            with pytest.raises(GraphError):
                splice.senders(bad)
        with pytest.raises(InterpkitError, match="spliced"):
            splice.senders({"L3.mlp": [1]})
