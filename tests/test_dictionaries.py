"""``ik.dictionaries.Dictionary`` and its files: the forward pass against literal references, and
every layout (interpkit, SAELens, sparsify, circuit-tracer) written and read back bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import interpkit as ik
from interpkit.dictionaries import Dictionary, DictionaryError, load, load_transcoders, save_transcoders


def random_dictionary(activation="topk", kind="sae", d_in=12, n=40, d_out=None, seed=0, **fields):
    g = torch.Generator().manual_seed(seed)
    d_out = d_in if kind == "sae" else (d_out or d_in + 3)
    return Dictionary(
        W_enc=torch.randn(n, d_in, generator=g),
        b_enc=torch.randn(n, generator=g) * 0.1,
        W_dec=torch.randn(n, d_out, generator=g),
        b_dec=torch.randn(d_out, generator=g),
        W_skip=torch.randn(d_out, d_in, generator=g) if kind == "skip_transcoder" else None,
        threshold=torch.rand(n, generator=g) if activation in ("jumprelu", "batchtopk") else None,
        activation=activation,
        k=5 if activation in ("topk", "topk_raw", "batchtopk") else None,
        kind=kind,
        center_input=kind == "sae",
        input_site="L1.resid_pre" if kind == "sae" else "blocks.1.mlp.hook_in",
        output_site=None if kind == "sae" else "L1.mlp",
        **fields,
    )


def literal_encode(d: Dictionary, x: torch.Tensor) -> torch.Tensor:
    """One token at a time, as the papers write it."""
    out = torch.zeros(x.shape[0], d.n_latents)
    for t in range(x.shape[0]):
        xin = x[t] - d.b_dec if d.center_input else x[t]
        pre = torch.stack([xin @ d.W_enc[i] + d.b_enc[i] for i in range(d.n_latents)])
        if d.rescale_by_decoder_norm:
            pre = pre * d.W_dec.norm(dim=-1)
        if d.activation == "relu":
            out[t] = pre.clamp_min(0)
        elif d.activation in ("jumprelu", "batchtopk"):
            out[t] = torch.where(pre > d.threshold, pre.clamp_min(0), torch.zeros(()))
        else:
            source = pre if d.activation == "topk_raw" else pre.clamp_min(0)
            order = sorted(range(d.n_latents), key=lambda i: -float(source[i]))[: d.k]
            for i in order:
                out[t, i] = source[i]
    return out


ACTIVATIONS = ["topk", "batchtopk", "jumprelu", "relu", "topk_raw"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kind", ["sae", "skip_transcoder"])
def test_forward_equals_the_literal_definition(activation, kind):
    d = random_dictionary(activation, kind)
    x = torch.randn(7, d.d_in)
    z = d.encode(x)
    torch.testing.assert_close(z, literal_encode(d, x), rtol=1e-5, atol=1e-5)
    expected = z @ d.W_dec + d.b_dec + (x @ d.W_skip.T if d.W_skip is not None else 0)
    torch.testing.assert_close(d(x), expected, rtol=1e-5, atol=1e-5)
    assert d(x[None]).shape == (1, 7, d.d_out)  # leading dimensions pass through


def test_sparse_encode_decode_and_decoder_norm_rescaling():
    d = random_dictionary("topk").replace(rescale_by_decoder_norm=True)
    x = torch.randn(2, 5, d.d_in)
    torch.testing.assert_close(d.encode(x), literal_encode(d, x.reshape(-1, d.d_in)).reshape(2, 5, -1))
    values, indices = d.encode_topk(x)
    assert values.shape == indices.shape == (2, 5, d.k)
    torch.testing.assert_close(d.decode_topk(values, indices), d.decode(d.encode(x)), rtol=1e-5, atol=1e-5)


def test_bad_dictionaries_and_inputs_raise_clearly():
    with pytest.raises(DictionaryError, match=r"k=41 must lie in 1..n_latents=40"):
        random_dictionary("topk").replace(k=41)
    with pytest.raises(DictionaryError, match="unknown activation 'gelu'"):
        random_dictionary().replace(activation="gelu")
    with pytest.raises(DictionaryError, match=r"b_dec has shape \(3,\)"):
        random_dictionary().replace(b_dec=torch.zeros(3))
    with pytest.raises(DictionaryError, match="expects 12"):
        random_dictionary().encode(torch.randn(2, 13))
    with pytest.raises(DictionaryError, match="unknown dictionary format 'onnx'"):
        random_dictionary().save("/tmp/never", format="onnx")


# ------------------------------------------------------------------------------------------ layouts
def _same(a: Dictionary, b: Dictionary) -> None:
    assert a.tensors().keys() == b.tensors().keys()
    for name, t in a.tensors().items():
        assert torch.equal(t, b.tensors()[name]), name
    for field in ("activation", "k", "kind", "center_input", "rescale_by_decoder_norm", "input_site", "output_site"):
        assert getattr(a, field) == getattr(b, field), field


CASES = [
    ("interpkit", "topk", "sae"),
    ("interpkit", "batchtopk", "sae"),
    ("interpkit", "relu", "skip_transcoder"),
    ("interpkit", "topk_raw", "transcoder"),
    ("saelens", "topk", "sae"),
    ("saelens", "jumprelu", "sae"),
    ("saelens", "relu", "sae"),
    ("saelens", "relu", "transcoder"),
    ("saelens", "relu", "skip_transcoder"),
    ("saelens", "jumprelu", "transcoder"),
    ("sparsify", "topk", "sae"),
    ("sparsify", "topk", "skip_transcoder"),
]


@pytest.mark.parametrize(("fmt", "activation", "kind"), CASES)
def test_layouts_round_trip_bit_for_bit(tmp_path, fmt, activation, kind):
    d = random_dictionary(activation, kind, d_out=12)
    d.save(tmp_path / "d", format=fmt)
    back = load(tmp_path / "d")
    _same(d, back)
    assert back.meta["source_format"] == fmt
    x = torch.randn(4, d.d_in)
    assert torch.equal(back(x), d(x))


def test_saelens_folder_round_trips_its_files_exactly(tmp_path):
    """A folder as SAELens 6 writes it: reading and writing it back leaves the weights and config unchanged."""
    g = torch.Generator().manual_seed(1)
    d_in, d_sae = 10, 24
    weights = {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }
    cfg = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.18.0", "hook_name": "blocks.3.hook_resid_post", "model_name": "gpt2"},
        "k": 6,
        "rescale_acts_by_decoder_norm": True,
        "architecture": "topk",
    }
    src = tmp_path / "src"
    src.mkdir()
    save_file(weights, str(src / "sae_weights.safetensors"))
    (src / "cfg.json").write_text(json.dumps(cfg))
    d = load(src)
    assert (d.activation, d.k, d.rescale_by_decoder_norm, d.input_site) == ("topk", 6, True, "blocks.3.hook_resid_post")
    d.save(tmp_path / "out", format="saelens")
    again = load_file(str(tmp_path / "out" / "sae_weights.safetensors"))
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)
    assert json.loads((tmp_path / "out" / "cfg.json").read_text()) == cfg
    # SAELens's TopK: x - b_dec, times decoder norms, top-k after ReLU; decode divides by the norms
    x = torch.randn(3, d_in)
    pre = ((x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]) * weights["W_dec"].norm(dim=-1)
    top = pre.topk(6, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    expected = (z / weights["W_dec"].norm(dim=-1)) @ weights["W_dec"] + weights["b_dec"]
    torch.testing.assert_close(d(x), expected, rtol=1e-5, atol=1e-5)


def test_old_saelens_config_and_unsupported_settings(tmp_path):
    d = random_dictionary("relu")
    d.save(tmp_path / "d", format="saelens")
    cfg = json.loads((tmp_path / "d" / "cfg.json").read_text())
    old = {
        "d_in": cfg["d_in"],
        "d_sae": cfg["d_sae"],
        "hook_point": "blocks.1.hook_resid_pre",
        "activation_fn_str": "relu",
    }
    (tmp_path / "d" / "cfg.json").write_text(json.dumps(old))
    back = load(tmp_path / "d")
    assert back.activation == "relu" and back.input_site == "blocks.1.hook_resid_pre" and back.center_input
    (tmp_path / "d" / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(DictionaryError, match="normalize_activations='layer_norm' is not supported"):
        load(tmp_path / "d")
    with pytest.raises(DictionaryError, match="SAELens has no layout for a topk transcoder"):
        random_dictionary("topk", "transcoder").save(tmp_path / "tc", format="saelens")
    with pytest.raises(DictionaryError, match="sparsify stores TopK coders only"):
        random_dictionary("relu").save(tmp_path / "sp", format="sparsify")


def test_sparsify_folder_names_give_sites(tmp_path):
    d = random_dictionary("topk").replace(input_site=None, output_site=None)
    d.save(tmp_path / "layers.7", format="sparsify")
    cfg = json.loads((tmp_path / "layers.7" / "cfg.json").read_text())
    del cfg["interpkit"]
    (tmp_path / "layers.7" / "cfg.json").write_text(json.dumps(cfg))
    assert load(tmp_path / "layers.7").input_site == "L7.resid_post"
    tc = random_dictionary("topk", "transcoder", d_out=12).replace(input_site=None, output_site=None)
    tc.save(tmp_path / "layers.2.mlp", format="sparsify")
    back = load(tmp_path / "layers.2.mlp")
    assert (back.input_site, back.output_site) == ("blocks.2.mlp.hook_in", "L2.mlp")


def test_corrupt_and_missing_files(tmp_path):
    d = random_dictionary()
    d.save(tmp_path / "d")
    weights = tmp_path / "d" / "dictionary.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DictionaryError, match="not a readable safetensors file"):
        load(tmp_path / "d")
    with pytest.raises(DictionaryError, match="holds no dictionary"):
        load(tmp_path)
    (tmp_path / "junk").write_text("x")
    with pytest.raises(DictionaryError, match="neither a dictionary folder"):
        load(tmp_path / "junk")


# ------------------------------------------------------------------------------------------ circuit-tracer
def test_circuit_tracer_sets_round_trip(tmp_path):
    tcs = {layer: random_dictionary("topk_raw", "skip_transcoder", d_out=12, seed=layer) for layer in range(3)}
    tcs = {
        layer: d.replace(input_site=f"blocks.{layer}.mlp.hook_in", output_site=f"blocks.{layer}.hook_mlp_out")
        for layer, d in tcs.items()
    }
    save_transcoders(tcs, tmp_path / "set")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == [
        "config.yaml",
        "layer_0.safetensors",
        "layer_1.safetensors",
        "layer_2.safetensors",
    ]
    back = load_transcoders(tmp_path / "set")
    assert list(back) == [0, 1, 2]
    for layer in tcs:
        _same(tcs[layer], back[layer])
    one = load(tmp_path / "set" / "layer_1.safetensors")
    _same(tcs[1], one)
    with pytest.raises(DictionaryError, match="holds 3 per-layer transcoders"):
        load(tmp_path / "set")
    with pytest.raises(DictionaryError, match="circuit-tracer's activations"):
        save_transcoders({0: random_dictionary("topk", "transcoder")}, tmp_path / "bad")


def test_circuit_tracer_older_layout_and_defaults(tmp_path):
    """JumpReLU thresholds, a (d, n) decoder (older release), no config: default hooks."""
    g = torch.Generator().manual_seed(0)
    n, d = 20, 8
    tensors = {
        "W_enc": torch.randn(n, d, generator=g),
        "W_dec": torch.randn(d, n, generator=g),
        "b_enc": torch.randn(n, generator=g),
        "b_dec": torch.randn(d, generator=g),
        "activation_function.threshold": torch.rand(n, generator=g),
    }
    (tmp_path / "tc").mkdir()
    save_file(tensors, str(tmp_path / "tc" / "layer_4.safetensors"))
    tc = load_transcoders(tmp_path / "tc")[4]
    assert (tc.activation, tc.kind, tc.input_site, tc.output_site) == (
        "jumprelu",
        "transcoder",
        "blocks.4.mlp.hook_in",
        "blocks.4.hook_mlp_out",
    )
    assert torch.equal(tc.W_dec, tensors["W_dec"].T)
    x = torch.randn(3, d)
    pre = x @ tensors["W_enc"].T + tensors["b_enc"]
    expected = (pre * (pre > tensors["activation_function.threshold"])) @ tensors["W_dec"].T + tensors["b_dec"]
    torch.testing.assert_close(tc(x), expected)


def test_folder_of_per_layer_subfolders(tmp_path):
    for layer in (0, 2):
        random_dictionary("topk", "transcoder", seed=layer).replace(
            input_site=f"blocks.{layer}.mlp.hook_in", output_site=f"L{layer}.mlp"
        ).save(tmp_path / f"layer_{layer}")
    found = load_transcoders(tmp_path)
    assert list(found) == [0, 2] and found[2].output_site == "L2.mlp"
    with pytest.raises(DictionaryError, match="holds no per-layer transcoders"):
        load_transcoders(tmp_path / "layer_0")


def test_reexported_from_interpkit():
    assert ik.dictionaries.Dictionary is Dictionary and "dictionaries" in ik.__all__
