"""QK attribution: the terms sum to the model's pre-softmax score on every architecture family,
each side's row sums agree with a literal removal of that term from the residual stream, and on
the toy induction model the induction score is (current token) x (previous-token head)."""

from __future__ import annotations

import warnings

import pytest
import torch

import interpkit as ik
from interpkit.attribution import AttributionError
from interpkit.hooks import hooks
from interpkit.models import boot_native
from interpkit.models._load import wrap_hf_model
from tiny_models import (
    NATIVE_TINY,
    tiny_gemma2_hf,
    tiny_gemma_hf,
    tiny_gpt2_hf,
    tiny_llama_hf,
    tiny_neox_hf,
    tiny_olmo2_hf,
    tiny_phi_hf,
    tiny_qwen3_hf,
)

BUILDERS = {
    "gpt2": tiny_gpt2_hf,
    "llama": tiny_llama_hf,
    "gemma": tiny_gemma_hf,
    "gemma2": tiny_gemma2_hf,
    "neox": tiny_neox_hf,
    "phi": tiny_phi_hf,
    "qwen3": tiny_qwen3_hf,
    "olmo2": tiny_olmo2_hf,
}


@pytest.fixture(scope="module", params=[*BUILDERS, "native"])
def any_model(request):
    if request.param == "native":
        return boot_native(NATIVE_TINY, seed=0, spec="native-tiny")
    return wrap_hf_model(BUILDERS[request.param](), None, spec=f"tiny-{request.param}")


def tokens_for(model, n=2, pos=9, seed=1):
    return torch.randint(0, model.cfg.d_vocab, (n, pos), generator=torch.Generator().manual_seed(seed))


def model_scores(model, tokens, layer):
    """The pre-softmax scores read straight off the model's hook (the reference of the sums)."""
    store = {}

    def keep(act, hook):
        store["s"] = act.detach().clone()

    with torch.inference_mode(), hooks(model, fwd=[(f"blocks.{layer}.attn.hook_attn_scores", keep)]):
        model.bridge(tokens)
    return store["s"].double()


def test_terms_sum_to_the_score(any_model):
    model = any_model
    tokens = tokens_for(model)
    layer = model.cfg.n_layers - 1
    hooked = type(model.bridge.blocks[layer].attn).__name__ != "AttentionBridge"
    reference = model_scores(model, tokens, layer) if hooked else None
    for head in range(model.cfg.n_heads):
        for q, k in [(8, 0), (8, 3), (5, 5)]:
            res = ik.attribution.qk(model, tokens, layer, head, query_pos=q, key_pos=k)
            sums = res.extras["per_example"].double().sum((1, 2))
            actual = res.extras["actual"].double() if reference is None else reference[:, head, q, k]
            assert torch.allclose(sums, actual, rtol=1e-4, atol=1e-6), (head, q, k, sums, actual)
            assert res.meta["residual_error"] < 1e-3


def test_labels_name_every_earlier_component(tiny_gpt2, tiny_llama):
    res = ik.attribution.qk(tiny_gpt2, tokens_for(tiny_gpt2), 1, 0, query_pos=-1, key_pos=2)
    assert res.labels["query_term"] == ["embed", "pos_embed", *[f"L0H{h}" for h in range(4)], "L0.mlp", "bias"]
    res = ik.attribution.qk(tiny_llama, tokens_for(tiny_llama), 0, 5, query_pos=-1, key_pos=2)
    assert res.labels["key_term"] == ["embed", "bias"]  # a rotary model learns no positions


def literal_row_sums(model, tokens, layer, head, q, k, term_vectors, side):
    """The score with one term's vector removed from the residual stream at the query (or key)
    position, ln1's scale frozen at the clean run: one forward per term (the literal reference)."""
    scales = {}

    def keep_scale(act, hook):
        scales["s"] = act.detach().clone()

    with torch.inference_mode(), hooks(model, fwd=[(f"blocks.{layer}.ln1.hook_scale", keep_scale)]):
        model.bridge(tokens)
    clean = model_scores(model, tokens, layer)[0, head, q, k]
    at = q if side == "query" else k
    out = []
    for vec in term_vectors:

        def remove(act, hook, vec=vec):
            act = act.clone()
            act[0, at] -= vec.to(act)
            return act

        def freeze(act, hook):
            return scales["s"].to(act)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the bridge warns that an edited scale changes its numerics
            names = [(f"blocks.{layer}.hook_resid_pre", remove), (f"blocks.{layer}.ln1.hook_scale", freeze)]
            with hooks(model, fwd=names):
                changed = model_scores(model, tokens, layer)[0, head, q, k]
        out.append(float(clean - changed))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_row_and_column_sums_match_literal_removal(name, tiny_gpt2, tiny_llama):
    model = {"gpt2": tiny_gpt2, "llama": tiny_llama}[name]
    tokens = tokens_for(model, n=1)
    layer, head, q, k = model.cfg.n_layers - 1, 1, 7, 2
    res = ik.attribution.qk(model, tokens, layer, head, query_pos=q, key_pos=k)
    cache = ik.cache.run(model, tokens, None)
    decomposed = cache.decompose_resid(layer)
    labels = decomposed.labels["component"]
    for side, axis in (("query", 1), ("key", 0)):
        at = q if side == "query" else k
        names = [lab for lab in labels if not lab.endswith("attn_bias")]
        vectors = [decomposed.scores[labels.index(lab), 0, at] for lab in names]
        literal = literal_row_sums(model, tokens, layer, head, q, k, vectors, side)
        ours = res.scores.double().sum(axis)[[res.labels[f"{side}_term"].index(n) for n in names]]
        assert torch.allclose(ours, literal, rtol=1e-3, atol=1e-5), (side, ours, literal)


def test_induction_score_is_current_token_times_previous_token_head(toy):
    g = torch.Generator().manual_seed(0)
    period = 10
    block = torch.randint(0, toy.cfg.d_vocab, (4, period), generator=g)
    tokens = torch.cat([block, block, block[:, :5]], 1)
    n = tokens.shape[1]
    cache = ik.cache.run(toy, tokens, ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"])
    q = torch.arange(period, n)
    prev = cache["blocks.0.attn.hook_pattern"][:, :, q, q - 1].mean((0, 2))
    induction = cache["blocks.1.attn.hook_pattern"][:, :, q, q - period + 1].mean((0, 2))
    prev_heads = (prev > 0.5).nonzero()[:, 0].tolist()
    assert len(prev_heads) == 1, prev  # one previous-token head, found by score
    (ph,) = prev_heads
    for ih in (induction > 0.5).nonzero()[:, 0].tolist():
        res = ik.attribution.qk(toy, tokens, 1, ih, query_pos=n - 2, key_pos=n - 1 - period)
        (label, value), *_ = res.top(1, by_abs=True)
        assert label == f"query_term=embed, key_term=L0H{ph}"
        assert value > 0.6 * res.meta["score"] > 0


def test_head_loadings_sum_to_the_score_on_each_side(toy):
    task = ik.tasks.load("induction", toy, n=4, seed=0)
    res = ik.attribution.qk_loadings(toy, task, ["L1H0", (1, 2)])
    assert res.dims == ("head", "side", "term") and res.labels["head"] == ["L1H0", "L1H2"]
    sums = res.scores.sum(-1)  # (head, side)
    assert torch.allclose(sums[:, 0], sums[:, 1], atol=1e-4)
    assert torch.allclose(sums[:, 0], res.extras["score"], rtol=1e-4, atol=1e-5)
    fig = res.figure()
    assert fig.data[0].z.shape[0] == 4


def test_figure_folds_hidden_terms_into_rest(tiny_llama):
    res = ik.attribution.qk(tiny_llama, tokens_for(tiny_llama), 2, 3, query_pos=-1)
    fig = res.figure(top=4)
    z = torch.tensor(fig.data[0].z)
    assert z.shape == (5, 5) and list(fig.data[0].y)[-1] == "(rest)"
    assert abs(float(z.sum()) - float(res.scores.sum())) < 1e-4
    cache = ik.cache.run(tiny_llama, tokens_for(tiny_llama), ["blocks.2.attn.hook_pattern"])
    assert res.meta["key_pos"] == cache["blocks.2.attn.hook_pattern"][:, 3, -1].argmax(-1).tolist()


class ReLUTranscoder(torch.nn.Module):
    """A stand-in for the dictionaries package's transcoder: ReLU encoder, linear decoder, skip term."""

    def __init__(self, d_in, d_model, n_latents, seed, skip=True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.randn(n_latents, d_in, generator=g) / d_in**0.5
        self.b_enc = torch.randn(n_latents, generator=g) * 0.1
        self.W_dec = torch.randn(n_latents, d_model, generator=g) / n_latents**0.5
        self.b_dec = torch.randn(d_model, generator=g) * 0.1
        self.W_skip = torch.randn(d_model, d_in, generator=g) * 0.05 if skip else None

    def encode(self, x):
        return torch.relu(x @ self.W_enc.T + self.b_enc)

    def decode(self, z):
        return z @ self.W_dec + self.b_dec


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_transcoder_latents_replace_the_mlp_terms(name, tiny_llama, tiny_gemma2):
    model = {"llama": tiny_llama, "gemma2": tiny_gemma2}[name]
    d = model.cfg.d_model
    tcs = {0: ReLUTranscoder(d, d, 40, seed=0), 1: ReLUTranscoder(d, d, 40, seed=1, skip=False)}
    tokens = tokens_for(model)
    layer = model.cfg.n_layers - 1
    plain = ik.attribution.qk(model, tokens, layer, 1, query_pos=-1, key_pos=4)
    res = ik.attribution.qk(model, tokens, layer, 1, query_pos=-1, key_pos=4, transcoders=tcs)
    labels = res.labels["query_term"]
    assert "L0.mlp" not in labels and {"L0.tc_skip", "L0.tc_error"} <= set(labels)
    assert any(lab.startswith("L0.tc") and lab[5:].isdigit() for lab in labels)
    if layer > 1:
        assert "L1.tc_error" in labels and "L1.tc_skip" not in labels
    scale = float(res.scores.abs().sum())  # a random transcoder's latents and error cancel: float32 noise
    assert torch.allclose(res.scores.sum(), plain.scores.sum(), rtol=1e-4, atol=1e-6 * scale)
    heads = [lab for lab in labels if "H" in lab]
    rows = [plain.labels["query_term"].index(h) for h in heads]
    ours = [labels.index(h) for h in heads]
    assert torch.allclose(res.scores[ours][:, ours], plain.scores[rows][:, rows], atol=1e-6)


def test_bad_input_raises_clear_errors(tiny_llama, toy):
    tokens = tokens_for(tiny_llama)
    with pytest.raises(AttributionError, match="layer 9 is out of range"):
        ik.attribution.qk(tiny_llama, tokens, 9, 0)
    with pytest.raises(AttributionError, match="head 6 is out of range"):
        ik.attribution.qk(tiny_llama, tokens, 1, 6)
    with pytest.raises(AttributionError, match="comes after query position"):
        ik.attribution.qk(tiny_llama, tokens, 1, 0, query_pos=2, key_pos=5)
    with pytest.raises(AttributionError, match="only for a Task"):
        ik.attribution.qk(tiny_llama, tokens, 1, 0, query_pos="answer")
    with pytest.raises(AttributionError, match="outside the prompt"):
        ik.attribution.qk(tiny_llama, tokens, 1, 0, query_pos=20)
    with pytest.raises(AttributionError, match="not a head label"):
        ik.attribution.qk_loadings(tiny_llama, tokens, ["L1X0"])
    with pytest.raises(AttributionError, match="transcoder layers"):
        ik.attribution.qk(tiny_llama, tokens, 1, 0, transcoders={7: object()})
    with pytest.raises(AttributionError, match="attention-only"):
        ik.attribution.qk(toy, [[1, 2, 3]], 1, 0, transcoders={0: object()})
