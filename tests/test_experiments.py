"""Experiment scripts: their analysis against slow references, and each script end to end on tiny models.

The scripts live in ``experiments/`` (not a package); they are imported from their files. The
end-to-end runs use the shipped toy models (or a random native model while a toy is missing) and
small settings, so they take seconds; the embedded-model runs are in ``test_experiments_embedded.py``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import interpkit as ik
from experiment_scripts import load_script
from interpkit.hooks import hooks
from interpkit.models import boot_native, save_native
from interpkit.models._load import TOYS_DIR, wrap_hf_model


@pytest.fixture(scope="module")
def induction_model_spec(tmp_path_factory) -> str:
    """The shipped toy-induction model, or a random model of its shape while it is not shipped yet."""
    if (TOYS_DIR / "toy-induction" / "config.json").is_file():
        return "toy-induction"
    fields = {"d_model": 64, "d_head": 16, "n_layers": 2, "n_ctx": 64, "n_heads": 4, "d_vocab": 128, "attn_only": True}
    return str(save_native(boot_native(fields, seed=0), tmp_path_factory.mktemp("toy") / "random-toy"))


@pytest.fixture(scope="module")
def tiny_text_model(embedded_tokenizer) -> ik.Model:
    """A random 2-layer Llama with the embedded model's tokenizer (text tasks without the big model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(embedded_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    return wrap_hf_model(LlamaForCausalLM(config).eval(), embedded_tokenizer, spec="tiny-text-llama")


# ------------------------------------------------------------------------------------------ induction heads
def test_induction_heads_end_to_end(induction_model_spec, tmp_path):
    script = load_script("induction_heads")
    cfg = script.Config(model=induction_model_spec, n=8, length=6, out=str(tmp_path))
    summary = script.main(cfg)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["spec"]["seed"] == 0 and result["spec"]["weights_hash"]
    assert len(result["heads"]) == 8 and {"previous_token", "induction", "ablation_effect"} <= set(result["heads"][0])
    assert "js-plotly-plot" in (tmp_path / "report.html").read_text()
    if induction_model_spec == "toy-induction":
        assert summary["induction_heads"] and all(h.startswith("L1") for h in summary["induction_heads"])
        joint = summary["joint_ablations"]
        assert joint["induction heads"]["normalised"] < joint["control (lowest-scoring heads)"]["normalised"]


# ---------------------------------------------------------------------------------------- modular addition
def test_fourier_basis_is_orthonormal_and_finds_planted_frequencies():
    script = load_script("modular_addition")
    basis, names = script.fourier_basis(13)
    assert torch.allclose(basis @ basis.T, torch.eye(13, dtype=torch.float64), atol=1e-10)
    assert names[:3] == ["const", "cos 1", "sin 1"]
    torch.manual_seed(0)
    # columns: cos and sin of frequency 3 (rows 5, 6 of the basis) and of frequency 6 (rows 11, 12), little noise
    w_e = basis[[5, 6, 11, 12]].T + 0.01 * torch.randn(13, 4, dtype=torch.float64)
    spectrum = script.embedding_spectrum(w_e)
    assert spectrum.sum().item() == pytest.approx(1.0)
    assert spectrum[2].item() == pytest.approx(0.5, abs=0.01)
    assert script.key_frequencies(spectrum, factor=2.0) in ([3, 6], [6, 3])


def test_restricted_and_excluded_losses_on_a_planted_algorithm():
    script = load_script("modular_addition")
    p = 11
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    c = torch.arange(p)
    angle = lambda k: 2 * math.pi * k / p * ((a + b).flatten()[:, None] - c[None, :]).double()  # noqa: E731
    logits = 4 * (torch.cos(angle(2)) + torch.cos(angle(5)))  # (p*p, p): the Fourier algorithm, two key freqs
    labels = (a + b).flatten() % p
    losses = script.restricted_and_excluded(logits, labels, [2, 5])
    assert losses["restricted"].mean() == pytest.approx(losses["full"].mean().item(), abs=1e-9)
    assert losses["excluded"].mean() == pytest.approx(math.log(p), abs=1e-6)  # nothing left: uniform logits
    partial = script.restricted_and_excluded(logits, labels, [2])
    assert partial["full"].mean() < partial["restricted"].mean() < math.log(p)


def test_modular_addition_train_save_and_analyse(tmp_path):
    script = load_script("modular_addition")
    cfg = script.Config(p=7, train=True, epochs=40, out=str(tmp_path), stop_test_loss=0.0)
    result = script.main(cfg)
    saved = tmp_path / "model"
    config = json.loads((saved / "config.json").read_text())
    assert config["format"] == "interpkit-native" and config["training"]["epochs_run"] == 40
    assert config["training"]["curve"]["epoch"][0] == 0
    model = ik.load_model(str(saved))
    assert model.cfg.d_vocab == 8 and model.cfg.n_layers == 1
    tokens, _ = script.all_pairs(7)
    script.check_fast_forward(model, tokens)  # the fast training forward equals the bridge's
    assert 0.0 <= result["test_accuracy"] <= 1.0 and len(result["spectrum"]) == 3
    assert (tmp_path / "report.html").is_file()


@pytest.mark.skipif(not (TOYS_DIR / "modadd-113").is_dir(), reason="modadd-113 is not shipped yet")
def test_shipped_modular_addition_model_generalises(tmp_path):
    script = load_script("modular_addition")
    result = script.main(script.Config(p=113, out=str(tmp_path)))
    assert result["test_accuracy"] > 0.99
    assert 2 <= len(result["key_frequencies"]) <= 10
    assert result["restricted_loss_test"] < 0.5 * result["chance_loss"]
    assert result["excluded_loss_train"] > result["full_loss_train"] + 1.0


# ----------------------------------------------------------------------------------------- factual tracing
def slow_restored_prob(model, fact, noise, clean_acts, restore):
    """One restoration by a plain full forward: noise on the subject embeddings, clean values put back."""
    start, stop = fact.span

    def add_noise(act, hook):
        out = act.clone()
        out[:, start:stop] += noise
        return out

    def put_back(pos):
        def fn(act, hook):
            out = act.clone()
            out[:, pos] = clean_acts[hook.name][:, pos]
            return out

        return fn

    fwd = [("hook_embed", add_noise)] + [(name, put_back(pos)) for name, pos in restore]
    with torch.inference_mode(), hooks(model, fwd=fwd):
        return float(model(fact.tokens[None])[0, -1].softmax(-1)[fact.answer_id])


def test_causal_tracing_fast_path_matches_full_forwards(tiny_text_model):
    script = load_script("factual_tracing")
    model = tiny_text_model
    tokens, span = script.subject_span(model, "The {} is located in the city of", "Eiffel Tower")
    assert "".join(model.to_str_tokens(tokens[span[0] : span[1]])).strip() == "Eiffel Tower"
    fact = script.Fact("The Eiffel Tower is located in the city of", "Eiffel Tower", " Paris", tokens, span,
                       model.to_single_token(" Paris"))  # fmt: skip
    cfg = script.Config(samples=1, window=2, batch_size=7, noise=3.0)
    gen = torch.Generator().manual_seed(0)
    trace = script.trace_fact(model, fact, sigma=0.5, cfg=cfg, gen=gen)
    noise = torch.randn(span[1] - span[0], model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 1.5

    names = [model.resolve_hook(t.format(l=lay)) for t in script.KINDS.values() for lay in range(3)]
    clean = {}

    def keep(act, hook):
        clean[hook.name] = act.clone()

    with torch.inference_mode(), hooks(model, fwd=[(n, keep) for n in names]):
        p_clean = float(model(tokens[None])[0, -1].softmax(-1)[fact.answer_id])
    p_corrupt = slow_restored_prob(model, fact, noise, clean, [])
    assert trace["p_clean"] == pytest.approx(p_clean, abs=1e-6)
    assert trace["p_corrupt"] == pytest.approx(p_corrupt, abs=1e-6)
    last = len(tokens) - 1
    hook = model.resolve_hook
    checks = [
        ("resid", 1, span[0], [(hook("blocks.1.hook_resid_post"), span[0])]),
        ("resid", 2, last, [(hook("blocks.2.hook_resid_post"), last)]),
        ("mlp", 1, span[1] - 1, [(hook(f"blocks.{lay}.hook_mlp_out"), span[1] - 1) for lay in (0, 1)]),
        ("attn", 0, last, [(hook(f"blocks.{lay}.hook_attn_out"), last) for lay in (0, 1)]),
    ]
    for kind, layer, pos, restore in checks:
        expected = slow_restored_prob(model, fact, noise, clean, restore) - p_corrupt
        assert trace["effects"][kind][pos, layer] == pytest.approx(expected, abs=1e-5), (kind, layer, pos)
    # restoring the last layer's residual at the last position restores the clean output exactly
    assert trace["effects"]["resid"][last, 2] == pytest.approx(p_clean - p_corrupt, abs=1e-6)
    assert torch.all(trace["effects"]["resid"][: span[0]] == 0)  # before the subject nothing changes


def test_token_categories_follow_the_paper():
    script = load_script("factual_tracing")
    cats = script.token_categories(9, (2, 5))
    assert cats == [None, None, 0, 1, 2, 3, 4, 4, 5]
    assert script.token_categories(4, (1, 2)) == [None, 0, 3, 5]  # a one-token subject is its first token


def test_factual_tracing_end_to_end(tiny_text_model, tmp_path):
    script = load_script("factual_tracing")
    summary = script.main(script.Config(model=tiny_text_model, n=2, samples=1, window=2, out=str(tmp_path)))
    assert len(summary["facts"]) == 2 and set(summary["average_by_category"]) == {"resid", "mlp", "attn"}
    assert len(summary["average_by_category"]["resid"]) == len(script.CATEGORIES)
    report = (tmp_path / "report.html").read_text()
    assert report.count('class="plotly-graph-div"') == 6


# ------------------------------------------------------------------------------------------------- demo
def test_demo_on_a_token_model(induction_model_spec, tmp_path):
    script = load_script("demo")
    cfg = script.DemoConfig(model=induction_model_spec, n_induction=4, induction_length=6, out=str(tmp_path), threads=1)
    report = script.main(cfg)
    assert set(report["tasks"]) == {"induction"}
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["spec"]["weights_hash"] and saved["seconds"]["total"] > 0
    html = (tmp_path / "report.html").read_text()
    assert "Attention on a repeated random sequence" in html and "skipped" in html


def test_demo_ioi_part_on_a_tiny_text_model(tiny_text_model, tmp_path):
    script = load_script("demo")
    cfg = script.DemoConfig(
        model=tiny_text_model,
        n=2,
        n_per_position=2,
        n_induction=2,
        induction_length=5,
        layers_per_step=2,
        top_heads=2,
        out=str(tmp_path),
        threads=1,
    )
    report = script.main(cfg)
    ioi = report["tasks"]["ioi"]
    assert set(report["tasks"]) == {"induction", "ioi", "ioi_circuit", "probe"} and len(ioi["head_patching_top"]) == 8
    # direct logit attribution sums to the model's own logit difference
    assert sum(value for _, value in ioi["dla_all"]) == pytest.approx(ioi["clean"], abs=1e-3)
    html = (tmp_path / "report.html").read_text()
    # 2 score maps, picker, heads, resid, DLA bars + grid, lens, circuit curve + graph, probe accuracy by layer
    assert html.count('class="plotly-graph-div"') == 11
    circ = report["tasks"]["ioi_circuit"]
    assert circ["curve"]["0"] == 0.0 and circ["curve"][str(circ["n_edges_graph"])] == 1.0
    assert 0 < circ["circuit_edges"] <= circ["circuit_top_k"] < circ["n_edges_graph"]
    assert circ["faithfulness"] == pytest.approx(circ["curve"][str(circ["circuit_top_k"])], abs=1e-4)
    assert set(report["tasks"]["probe"]["accuracy_by_site"]) == {f"L{i}.resid_post" for i in range(3)}
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["spec"]["config"]["model"] == "tiny-text-llama"


# ------------------------------------------------------------------------------------------- IOI circuit
def test_ioi_circuit_end_to_end(tiny_text_model, tmp_path):
    script = load_script("ioi_circuit")
    methods = {"eap", "eap-ig:2", "eap-ig-act:2", "hybrid"}
    cfg = script.Config(
        model=tiny_text_model, n=3, node_methods="atp,exact", edge_methods=",".join(sorted(methods)),
        hybrid_candidates=16, sample_top=4, sample_random=8, n_boot=2, overlap_k=20, stability_edges=20,
        out=str(tmp_path),
    )  # fmt: skip
    summary = script.main(cfg)
    assert set(summary["node"]) == {"atp", "exact"} and set(summary["edge"]) == methods
    assert -1.0 <= summary["node"]["atp"]["check"]["spearman"] <= 1.0
    agree = summary["agreement"]
    assert agree["n"] == len(agree["labels"]) == len(agree["exact"]) and agree["n_random"] == 8
    for method in methods:  # every method against the same exact sample
        assert all(math.isnan(agree[method][k]) or -1.0 <= agree[method][k] <= 1.0 for k in ("spearman", "pearson"))
    assert set(summary["circuits"]) == methods
    for by_ablation in summary["circuits"].values():
        assert set(by_ablation) == {"mean", "counterfactual"}
        for row in by_ablation.values():
            curve = dict(zip(row["curve"]["sizes"], row["curve"]["faithfulness"], strict=True))
            assert curve[0] == 0.0 and curve[row["top_k"]] == pytest.approx(row["faithfulness"], abs=1e-4)
            assert row["reached"] == (row["faithfulness"] >= cfg.target) and row["n_edges"] <= row["top_k"]
    best = summary["recommendation"]
    assert best["method"] in methods and best["ablation"] in {"mean", "counterfactual"} and best["reason"]
    assert (tmp_path / "circuit.json").is_file() and "eap vs eap-ig:2" in summary["overlap"]
    assert summary["stability"]["n_boot"] == 2
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["spec"]["config"]["model"] == "tiny-text-llama"
    html = (tmp_path / "report.html").read_text()
    assert html.count('class="plotly-graph-div"') >= 2 + 2 + 1  # node maps, one curve figure per ablation, circuit


def test_ioi_circuit_agreement_sample_is_exact_patching(tiny_text_model):
    """The shared sample's exact values are exact edge patching: the hybrid's candidates carry the same numbers."""
    script = load_script("ioi_circuit")
    model = tiny_text_model
    task = ik.tasks.load("ioi", model, n=3, seed=0, templates=[0])
    cfg = script.Config(model=model, n=3, hybrid_candidates=40, sample_top=6, sample_random=10)
    scores = {
        m: ik.attribution.edge_scores(model, task, m, "noise", check=0, candidates=40)
        if m == "hybrid"
        else ik.attribution.edge_scores(model, task, m, "noise", check=0)
        for m in ("eap", "hybrid")
    }
    agree = script.agreement(model, task, scores, cfg)
    exact = dict(zip(agree["labels"], agree["exact"], strict=True))
    candidates = set(scores["hybrid"].extras["check"]["labels"])
    hybrid = dict(zip(scores["hybrid"].labels["edge"], scores["hybrid"].scores.tolist(), strict=True))
    shared = [e for e in exact if e in candidates]
    assert len(shared) >= 6  # the hybrid's own top edges are sampled and are candidates
    for edge in shared:
        assert exact[edge] == pytest.approx(hybrid[edge], abs=1e-5)
