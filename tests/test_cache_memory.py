"""``ik.cache.run`` and ActivationCache's analyses on tiny random models (LayerNorm and RMSNorm, GQA)."""

from __future__ import annotations

import pytest
import torch

import interpkit.cache as ikc
from interpkit.errors import InterpkitError, SiteError
from interpkit.hooks import active_hook_count, hooks
from interpkit.models import boot_native
from interpkit.models._load import wrap_hf_model
from tiny_models import tiny_gpt2_hf


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine run many times faster on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gpt2_biased():
    """Tiny GPT-2 with every bias and norm weight randomised, so no term of the decomposition is zero."""
    hf = tiny_gpt2_hf(seed=1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
    return wrap_hf_model(hf, None, spec="tiny-gpt2-biased")


@pytest.fixture(scope="module")
def attn_only():
    fields = {"d_model": 32, "d_head": 8, "n_layers": 2, "n_ctx": 32, "n_heads": 4, "d_vocab": 50, "attn_only": True}
    return boot_native({**fields, "normalization_type": "LN"}, seed=3, spec="attn-only")


@pytest.fixture(params=["tiny_llama", "gpt2_biased", "native_tiny", "attn_only"])
def any_model(request):
    return request.getfixturevalue(request.param)


def _tokens(model, batch=3, pos=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=g)


def _logits(model, tokens):
    with torch.inference_mode():
        return model(tokens)


# ---------------------------------------------------------------------------- selection
def test_keeps_only_what_was_asked(tiny_llama):
    tokens = _tokens(tiny_llama)
    cache = ikc.run(tiny_llama, tokens, ["L1.resid_pre", "L0H4", "L2H5.k", "blocks.2.hook_mlp_out"])
    assert sorted(cache.keys()) == sorted(["blocks.1.hook_resid_pre", "L0H4", "L2H5.k", "blocks.2.hook_mlp_out"])
    assert cache["L1.resid_pre"].shape == (3, 9, 48)
    assert cache["L0H4"].shape == (3, 9, 8)
    assert cache["L2H5.k"].shape == (3, 9, 8)  # key head 5 // 3 = 1 under GQA
    full = ikc.run(tiny_llama, tokens, ["blocks.0.attn.hook_z", "blocks.2.attn.hook_k"])
    torch.testing.assert_close(cache["L0H4"], full["blocks.0.attn.hook_z"][:, :, 4])
    torch.testing.assert_close(cache["L2H5.k"], full["blocks.2.attn.hook_k"][:, :, 1])
    assert torch.equal(full["L0H4"], cache["L0H4"])  # a head sliced out of a whole cached hook
    assert torch.equal(cache["blocks.1.hook_resid_pre"], cache["L1.resid_pre"])
    assert "L1.resid_pre" in cache and "L1.resid_mid" not in cache
    assert active_hook_count(tiny_llama) == 0


def test_wildcards_dtype_device(tiny_llama):
    cache = ikc.run(tiny_llama, _tokens(tiny_llama), "L*.resid_post", dtype="float16", device="cpu")
    assert cache.keys() == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    assert all(t.dtype == torch.float16 and t.device.type == "cpu" for t in cache.acts.values())


def test_positions(tiny_llama):
    tokens = _tokens(tiny_llama)
    full = ikc.run(tiny_llama, tokens, ["L1.resid_pre", "L1H2.pattern"])
    x, pattern = full["L1.resid_pre"], full["L1H2.pattern"]
    for positions, index in [(-1, [8]), (slice(2, 5), [2, 3, 4]), ([0, 7], [0, 7]), (torch.tensor([3]), [3])]:
        part = ikc.run(tiny_llama, tokens, ["L1.resid_pre", "L1H2.pattern"], positions=positions)
        torch.testing.assert_close(part["L1.resid_pre"], x[:, index])
        torch.testing.assert_close(part["L1H2.pattern"], pattern[:, index])  # query positions; all keys kept
    per_example = torch.tensor([[1], [4], [8]])
    part = ikc.run(tiny_llama, tokens, ["L1.resid_pre", "L1H2.pattern"], positions=per_example)
    torch.testing.assert_close(part["L1.resid_pre"][:, 0], x[torch.arange(3), per_example[:, 0]])
    torch.testing.assert_close(part["L1H2.pattern"][:, 0], pattern[torch.arange(3), per_example[:, 0]])
    with pytest.raises(ikc.CacheError, match="outside"):
        ikc.run(tiny_llama, tokens, "L1.resid_pre", positions=9)
    with pytest.raises(ikc.CacheError, match="rows"):
        ikc.run(tiny_llama, tokens, "L1.resid_pre", positions=torch.zeros(2, 1, dtype=torch.long))


def test_run_leaves_the_model_alone(tiny_llama):
    tokens = _tokens(tiny_llama)
    before = _logits(tiny_llama, tokens)
    ikc.run(tiny_llama, tokens, ["L0.resid_post"])  # stops the forward pass early
    with torch.inference_mode():  # gradients are taken even inside the caller's inference mode
        inside = ikc.run(tiny_llama, tokens, ["L0.resid_post"], with_grad=lambda logits: logits[:, -1, 0])
    assert inside.grad("L0.resid_post")[:, -1].abs().sum() > 0
    assert torch.equal(_logits(tiny_llama, tokens), before)
    assert active_hook_count(tiny_llama) == 0
    assert all(p.grad is None for p in tiny_llama.bridge.parameters())


def test_bad_sites(tiny_llama):
    with pytest.raises(SiteError, match="closest") as err:
        ikc.run(tiny_llama, _tokens(tiny_llama), ["L1.resid_pree"])
    assert isinstance(err.value, InterpkitError)
    with pytest.raises(SiteError, match="out of range"):
        ikc.run(tiny_llama, _tokens(tiny_llama), ["L7.resid_pre"])
    with pytest.raises(SiteError, match="matches no"):
        ikc.run(tiny_llama, _tokens(tiny_llama), ["L*.resid_nowhere"])
    with pytest.raises(ikc.CacheError, match="did not fire"):
        ikc.run(tiny_llama, _tokens(tiny_llama), ["blocks.0.attn.hook_result"])
    cache = ikc.run(tiny_llama, _tokens(tiny_llama), ["L0.resid_pre"])
    with pytest.raises(ikc.CacheError, match="closest: blocks.0.hook_resid_pre"):
        cache["blocks.0.hook_resid_prex"]


def test_texts_are_padded_and_masked(tiny_llama_with_tok):
    texts = ["The cat sat on the mat", "Hi"]
    cache = ikc.run(tiny_llama_with_tok, texts, ["L2.resid_post"])
    assert cache.attention_mask is not None and cache.attention_mask.sum(1).tolist()[1] < cache.tokens.shape[1]
    alone = ikc.run(tiny_llama_with_tok, texts[1], ["L2.resid_post"])
    n = alone.tokens.shape[1]
    torch.testing.assert_close(cache["L2.resid_post"][1, :n], alone["L2.resid_post"][0], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_llama_with_tok(embedded_tokenizer):
    from tiny_models import tiny_llama_with_tokenizer

    return tiny_llama_with_tokenizer(embedded_tokenizer)


# ---------------------------------------------------------------------------- gradients
def _finite_difference(model, tokens, hook, index, metric, eps=1e-3):
    delta = torch.zeros(())

    def nudge(act, hook):
        act = act.clone()
        act[index] += delta
        return act

    values = []
    for d in (eps, -eps):
        delta.fill_(d)
        with torch.no_grad(), hooks(model, fwd=[(hook, nudge)]):
            values.append(float(metric(model(tokens)).sum()))
    return (values[0] - values[1]) / (2 * eps)


def test_gradients_match_finite_differences(tiny_llama):
    tokens = _tokens(tiny_llama)
    answer, wrong = torch.tensor([3, 5, 7]), torch.tensor([1, 1, 2])
    cache = ikc.run(tiny_llama, tokens, ["L1.resid_pre", "L0H3"], with_grad="logit_diff", answers=(answer, wrong))

    def metric(logits):
        last = logits[:, -1]
        return last[torch.arange(3), answer] - last[torch.arange(3), wrong]

    torch.testing.assert_close(cache.metric, metric(_logits(tiny_llama, tokens)), atol=1e-5, rtol=1e-5)
    for site, hook, index, grad_index in [
        ("L1.resid_pre", "blocks.1.hook_resid_pre", (1, 4, 7), (1, 4, 7)),
        ("L0H3", "blocks.0.attn.hook_z", (2, 6, 3, 5), (2, 6, 5)),
    ]:
        expected = _finite_difference(tiny_llama, tokens, hook, index, metric)
        assert cache.grad(site)[grad_index].item() == pytest.approx(expected, rel=2e-2, abs=1e-4)
    same = ikc.run(tiny_llama, tokens, ["L1.resid_pre"], with_grad=metric)
    torch.testing.assert_close(same.grad("L1.resid_pre"), cache.grad("L1.resid_pre"))
    one = ikc.run(tiny_llama, tokens[1:2], ["L1.resid_pre"], with_grad="logit_diff", answers=(5, 1))
    torch.testing.assert_close(one.grad("L1.resid_pre")[0], cache.grad("L1.resid_pre")[1], atol=1e-6, rtol=1e-4)


def test_gradients_from_a_task_at_answer_positions(tiny_llama):
    from interpkit.tasks._task import from_token_lists

    task = from_token_lists(
        "t", tiny_llama, [[1, 2, 3, 4], [5, 6, 7]], [[1, 2, 9, 4], [5, 9, 7]], answer=[10, 11], wrong=[12, 13]
    )
    cache = ikc.run(tiny_llama, task, ["L2.resid_mid"], positions="answer", with_grad="logprob")
    assert cache["L2.resid_mid"].shape == (2, 1, 48)
    full = ikc.run(tiny_llama, task, ["L2.resid_mid"], with_grad="logprob")
    torch.testing.assert_close(cache.grad("L2.resid_mid")[:, 0], full.grad("L2.resid_mid")[[0, 1], [3, 2]])
    assert full.grad("L2.resid_mid")[1, 3].abs().max() == 0  # padding after the answer gets no gradient
    with pytest.raises(ikc.CacheError, match="no useful gradient"):
        ikc.run(tiny_llama, task, ["L0.resid_pre"], with_grad="accuracy")
    with pytest.raises(ikc.CacheError, match="needs the answers"):
        ikc.run(tiny_llama, task.clean, ["L0.resid_pre"], with_grad="logit_diff")


# ---------------------------------------------------------------------------- analyses
def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_decomposition_sums_to_the_residual(any_model):
    cache = ikc.run(any_model, _tokens(any_model))
    n = any_model.cfg.n_layers
    parts = cache.decompose_resid()
    assert _rel(parts.scores.sum(0), cache[f"L{n - 1}.resid_post"]) < 1e-4
    for layer in range(n):
        sub = cache.decompose_resid(layer)
        assert _rel(sub.scores.sum(0), cache[f"L{layer}.resid_pre"]) < 1e-4
    labels = parts.labels["component"]
    assert labels[0] == "embed" and f"L{n - 1}H{any_model.cfg.n_heads - 1}" in labels
    assert ("pos_embed" in labels) == (any_model.cfg.positional == "standard")
    assert (f"L{n - 1}.mlp" in labels) == (not any_model.cfg.attn_only)


def test_head_results_and_accumulated_resid(any_model):
    cache = ikc.run(any_model, _tokens(any_model))
    heads = cache.stack_head_results()
    c = any_model.cfg
    assert heads.scores.shape == (c.n_layers * c.n_heads, 3, 9, c.d_model)
    per_layer = heads.scores.reshape(c.n_layers, c.n_heads, 3, 9, c.d_model).sum(1)
    _, b_o = any_model.anatomy.head_out
    for layer in range(c.n_layers):
        bias = 0 if b_o is None else b_o[layer]
        assert _rel(per_layer[layer] + bias, cache[f"blocks.{layer}.hook_attn_out"]) < 1e-5
    acc = cache.accumulated_resid()
    assert acc.labels["component"][-1] == f"L{c.n_layers - 1}.resid_post"
    assert torch.equal(acc.scores[1], cache["L1.resid_pre"])
    if not c.attn_only:
        mid = cache.accumulated_resid(layer=1, mid=True)
        assert mid.labels["component"] == ["L0.resid_pre", "L0.resid_mid", "L1.resid_pre"]


def test_logit_lens_ends_at_the_model_logits(any_model):
    tokens = _tokens(any_model)
    lens = ikc.run(any_model, tokens).logit_lens()
    torch.testing.assert_close(lens.scores[-1], _logits(any_model, tokens), atol=1e-4, rtol=1e-4)


def test_direct_logit_attribution_equals_the_logit_difference(any_model):
    tokens = _tokens(any_model)
    logits = _logits(any_model, tokens)
    answer = torch.tensor([1, 2, 3])
    wrong = torch.tensor([4, 5, 6])
    cache = ikc.run(any_model, tokens)
    dla = cache.logit_attrs(answer, wrong)
    rows = torch.arange(3)[:, None]
    true = logits[rows, torch.arange(9), answer[:, None]] - logits[rows, torch.arange(9), wrong[:, None]]
    torch.testing.assert_close(dla.scores.sum(0), true, atol=1e-4, rtol=1e-4)
    assert dla.labels["component"][-1] == "bias" and dla.dims == ("component", "batch", "pos")
    single = cache.logit_attrs(answer)  # logit(answer) itself, at every position
    torch.testing.assert_close(
        single.scores.sum(0), logits[rows, torch.arange(9), answer[:, None]], atol=1e-4, rtol=1e-4
    )
    last = ikc.run(any_model, tokens, positions=-1).logit_attrs(answer, wrong)
    torch.testing.assert_close(last.scores[..., 0], dla.scores[..., -1], atol=1e-5, rtol=1e-4)


def test_analyses_name_what_is_missing(tiny_llama):
    cache = ikc.run(tiny_llama, _tokens(tiny_llama), ["L0.resid_pre"])
    with pytest.raises(ikc.CacheError, match=r"hook_embed, blocks\.0\.attn\.hook_z.*blocks\.2\.hook_mlp_out"):
        cache.decompose_resid()
    with pytest.raises(ikc.CacheError, match="layer 9 is out of range"):
        cache.accumulated_resid(9)
