"""``ik.dictionaries.spliced`` and ``evaluate`` on tiny random models: outputs unchanged with the error
term, latents captured, patched and ablated, gradients reaching them, and the evaluation metrics on
a dictionary that reconstructs exactly."""

from __future__ import annotations

import pytest
import torch

import interpkit as ik
from interpkit.dictionaries import Dictionary, DictionaryError, evaluate, spliced
from interpkit.hooks import active_hook_count, hooks


def exact_sae(d: int, site: str) -> Dictionary:
    """Latents ``relu(x)`` and ``relu(-x)``, decoder ``[I; -I]``: reconstructs any ``x`` exactly."""
    eye = torch.eye(d)
    w = torch.cat([eye, -eye])
    return Dictionary(
        W_enc=w, b_enc=torch.zeros(2 * d), W_dec=w, b_dec=torch.zeros(d), activation="topk", k=d, center_input=False,
        input_site=site,
    )  # fmt: skip


def tokens(model, batch=2, pos=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.cfg.d_vocab, (batch, pos), generator=g)


@pytest.fixture(scope="module")
def transcoder(tiny_llama):
    d = tiny_llama.cfg.d_model
    tc = Dictionary.random(d_in=d, n_latents=64, k=6, kind="skip_transcoder", seed=1)
    return tc.replace(input_site="blocks.1.mlp.hook_in", output_site="L1.mlp", W_skip=0.1 * torch.randn(d, d))


def test_error_term_leaves_outputs_unchanged(tiny_llama, transcoder):
    ids = tokens(tiny_llama)
    clean = tiny_llama(ids)
    sae = Dictionary.random(d_in=tiny_llama.cfg.d_model, n_latents=96, k=5, input_site="L0.resid_post", seed=2)
    with spliced(tiny_llama, {"L0.resid_post": sae, "L1.mlp": transcoder}, error=True, capture=True) as splice:
        out = tiny_llama(ids)
        assert active_hook_count(tiny_llama) == 3  # resid write; transcoder read + write
    torch.testing.assert_close(out, clean, rtol=1e-4, atol=1e-4)
    assert active_hook_count(tiny_llama) == 0
    assert splice.latents["L0.resid_post"].shape == (2, 7, 96)
    assert splice.latents["L1.mlp"].shape == (2, 7, 64)
    assert int((splice.latents["L1.mlp"] != 0).sum(-1).max()) == 6
    assert splice.errors["L1.mlp"].shape == (2, 7, tiny_llama.cfg.d_model)
    with spliced(tiny_llama, {"L0.resid_post": sae}, error=False):
        assert not torch.allclose(tiny_llama(ids), clean, atol=1e-3)


def test_reconstruction_replaces_the_activation(tiny_llama, transcoder):
    ids = tokens(tiny_llama)
    seen = {}

    def keep(act, hook):
        seen[hook.name] = act.detach().clone()

    names = ["blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out"]
    with hooks(tiny_llama, fwd=[(n, keep) for n in names]):
        tiny_llama(ids)
    x = seen["blocks.1.mlp.hook_in"]
    with spliced(tiny_llama, {"L1.mlp": transcoder}, error=False), hooks(tiny_llama, fwd=[(names[1], keep)]):
        tiny_llama(ids)
    torch.testing.assert_close(seen["blocks.1.hook_mlp_out"], transcoder(x))  # the MLP's output is the transcoder's


def test_latent_hooks_patch_and_ablate(tiny_llama):
    ids = tokens(tiny_llama)
    sae = exact_sae(tiny_llama.cfg.d_model, "L1.resid_pre")
    with spliced(tiny_llama, {"L1.resid_pre": sae}, error=False, capture=True) as splice:
        exact = tiny_llama(ids)
        z = splice.latents["L1.resid_pre"].detach().clone()
        splice.ablate("L1.resid_pre", range(2 * tiny_llama.cfg.d_model), positions=[3])
        ablated = tiny_llama(ids)
        splice.reset_hooks()
        splice.add_hook("L1.resid_pre.latents", lambda z, hook: z * 2.0)  # TransformerLens signature
        doubled = tiny_llama(ids)
        with pytest.raises(DictionaryError, match="no splice hook point 'L1.resid_pre.latent'; closest"):
            splice.add_hook("L1.resid_pre.latent", lambda z, hook: z)
    torch.testing.assert_close(exact, tiny_llama(ids), rtol=1e-4, atol=1e-4)  # exact SAE, no error term needed

    def zero_resid(act, hook):
        act = act.clone()
        act[:, 3] = 0
        return act

    with hooks(tiny_llama, fwd=[("blocks.1.hook_resid_pre", zero_resid)]):
        torch.testing.assert_close(ablated, tiny_llama(ids), rtol=1e-4, atol=1e-4)
    with hooks(tiny_llama, fwd=[("blocks.1.hook_resid_pre", lambda act, hook: act * 2)]):
        torch.testing.assert_close(doubled, tiny_llama(ids), rtol=1e-4, atol=1e-4)
    with spliced(tiny_llama, {"L1.resid_pre": sae}, error=False) as splice:
        splice.patch("L1.resid_pre", z[1:2])  # every example gets example 1's latents
        patched = tiny_llama(ids)
    torch.testing.assert_close(
        patched[0, :], tiny_llama(ids[1:2])[0], rtol=1e-4, atol=1e-4
    )  # causal: later layers see ex. 1


def test_gradients_reach_the_latents(tiny_llama):
    sae = Dictionary.random(d_in=tiny_llama.cfg.d_model, n_latents=96, k=8, input_site="L1.resid_pre", seed=3)
    ids = tokens(tiny_llama, batch=1)
    keep = {}

    def grab(z, hook):
        z.retain_grad()
        keep["z"] = z

    with spliced(tiny_llama, {"L1.resid_pre": sae}, error=True) as splice:
        splice.add_hook("L1.resid_pre.latents", grab)
        logits = tiny_llama(ids)
        logits[0, -1, 5].backward()
    grad = keep["z"].grad
    assert grad.shape == (1, 7, 96) and bool(grad.abs().sum() > 0)
    # attribution patching's linear estimate of zeroing the latents of the last position
    z = keep["z"].detach()
    estimate = float(-(grad[0, -1] * z[0, -1]).sum())
    with torch.no_grad(), spliced(tiny_llama, {"L1.resid_pre": sae}, error=True) as splice:
        splice.ablate("L1.resid_pre", range(96), positions=[6])
        actual = float(tiny_llama(ids)[0, -1, 5] - logits[0, -1, 5])
    assert estimate == pytest.approx(actual, rel=0.5, abs=0.05)


def test_bad_splices(tiny_llama):
    d = tiny_llama.cfg.d_model
    wide = Dictionary.random(d_in=d + 1, n_latents=32, k=4, input_site="L1.resid_pre")
    with spliced(tiny_llama, {"L1.resid_pre": wide}), pytest.raises(DictionaryError, match=f"reads width {d + 1}"):
        tiny_llama(tokens(tiny_llama))
    assert active_hook_count(tiny_llama) == 0
    sae = Dictionary.random(d_in=d, n_latents=32, k=4)
    with pytest.raises(DictionaryError, match="cannot splice at 'L9.resid_pre'"):
        spliced(tiny_llama, {"L9.resid_pre": sae}).__enter__()
    with pytest.raises(DictionaryError, match="has no site"):
        spliced(tiny_llama, [sae]).__enter__()
    tc = Dictionary.random(d_in=d, n_latents=32, k=4, kind="transcoder")
    with pytest.raises(DictionaryError, match="has no input_site"):
        spliced(tiny_llama, {"L1.mlp": tc}).__enter__()


def test_skip_first_keeps_position_zero(tiny_llama):
    ids = tokens(tiny_llama)
    sae = Dictionary.random(d_in=tiny_llama.cfg.d_model, n_latents=32, k=2, input_site="L0.resid_post")
    with spliced(tiny_llama, {"L0.resid_post": sae}, error=False, skip_first=True):
        out = tiny_llama(ids)
    torch.testing.assert_close(out[:, 0], tiny_llama(ids)[:, 0])
    assert not torch.allclose(out[:, 1:], tiny_llama(ids)[:, 1:], atol=1e-3)


# ------------------------------------------------------------------------------------------ evaluate
def test_evaluate_an_exact_and_a_poor_dictionary(tiny_llama, transcoder):
    ids = tokens(tiny_llama, batch=6, pos=12)
    d = tiny_llama.cfg.d_model
    exact = exact_sae(d, "L1.resid_pre")
    res = evaluate(tiny_llama, {"L1.resid_pre": exact, "L1.mlp": transcoder}, ids, batch_size=4)
    assert res.dims == ("dictionary", "metric") and res.labels["dictionary"] == ["L1.resid_pre", "L1.mlp"]
    m = {
        site: dict(zip(res.labels["metric"], res.scores[i].tolist(), strict=True))
        for i, site in enumerate(res.labels["dictionary"])
    }
    assert m["L1.resid_pre"]["fvu"] == pytest.approx(0.0, abs=1e-9)
    assert m["L1.resid_pre"]["delta_loss"] == pytest.approx(0.0, abs=1e-5)
    assert m["L1.resid_pre"]["ce_recovered_zero"] == pytest.approx(1.0, abs=1e-4)
    assert m["L1.resid_pre"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["L1.resid_pre"]["rel_bias"] == pytest.approx(1.0) and m["L1.resid_pre"]["l2_ratio"] == pytest.approx(1.0)
    assert m["L1.mlp"]["l0"] == pytest.approx(6.0) and m["L1.mlp"]["fvu"] > 0.1
    assert 0 <= m["L1.mlp"]["dead"] <= 1 and m["L1.mlp"]["kl"] > 0
    assert res.extras["ce_tokens"] == 6 * 10  # predictions from positions 1..10 of 12
    assert res.extras["all"]["delta_loss"] == pytest.approx(m["L1.mlp"]["delta_loss"], abs=1e-3)
    # the metrics against a literal computation of one of them
    seen = {}
    grab = [
        ("blocks.1.mlp.hook_in", lambda a, hook: seen.update(x=a)),
        ("blocks.1.hook_mlp_out", lambda a, hook: seen.update(y=a)),
    ]
    with torch.no_grad(), hooks(tiny_llama, fwd=grab):
        tiny_llama(ids)
    x, y = seen["x"].reshape(-1, d), seen["y"].reshape(-1, d)
    fvu = float((transcoder(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert m["L1.mlp"]["fvu"] == pytest.approx(fvu, rel=1e-4)


def test_evaluate_report_and_store_metrics(tiny_llama, tmp_path):
    from interpkit.dictionaries import report

    g = torch.Generator().manual_seed(0)
    data = [torch.randint(1, 97, (15,), generator=g).tolist() for _ in range(20)]
    store = ik.cache.harvest(tiny_llama, data, ["L1.resid_pre"], tmp_path / "acts", dtype="float32", progress=False)
    exact = exact_sae(tiny_llama.cfg.d_model, "blocks.1.hook_resid_pre")
    res = evaluate(None, {"L1.resid_pre": exact}, store=store, window=200)
    assert res.extras["window_tokens"]["L1.resid_pre"] == 200
    assert float(res.scores[0, res.labels["metric"].index("fvu")]) == pytest.approx(0.0, abs=1e-9)
    path = report(res, tmp_path / "report.html")
    assert "firing frequency" in path.read_text()
    wide = Dictionary.random(d_in=5, n_latents=8, k=2, input_site="blocks.1.hook_resid_pre")
    with pytest.raises(DictionaryError, match="reads width 5"):
        evaluate(None, {"L1.resid_pre": wide}, store=store)
