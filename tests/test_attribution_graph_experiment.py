"""experiments/attribution_graph.py end to end on a tiny random Llama with the embedded model's
tokenizer, with neurons and with random ``ik.dictionaries`` transcoders (the embedded-model run is documented in the
script and measured in the report, not a test)."""

from __future__ import annotations

import json

import torch

from experiment_scripts import load_script
from interpkit.dictionaries import Dictionary
from interpkit.models._load import wrap_hf_model


def tiny_text_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    return wrap_hf_model(LlamaForCausalLM(config).eval(), tokenizer, spec="tiny-text-llama")


def test_attribution_graph_experiment_end_to_end(embedded_tokenizer, tmp_path):
    script = load_script("attribution_graph")
    model = tiny_text_llama(embedded_tokenizer)
    tcs = [
        Dictionary.random(d_in=32, n_latents=48, k=6, kind="transcoder", seed=s).replace(
            input_site=f"blocks.{s}.mlp.hook_in", output_site=f"L{s}.mlp"
        )
        for s in range(2)
    ]
    cfg = script.Config(model=model, max_feature_nodes=32, transcoders=tcs, verify=3, induction_n=2, out=str(tmp_path))
    summary = script.main(cfg)
    assert set(summary["graphs"]) == {
        f"{p}_{k}" for p in ("factual", "induction") for k in ("neurons", "transcoders", "untrained")
    }
    neurons = summary["graphs"]["factual_neurons"]
    assert neurons["scores"]["replacement"] > 0.9999 and neurons["scores"]["completeness"] > 0.9999
    assert summary["graphs"]["factual_transcoders"]["scores"]["replacement"] < 1.0
    live = summary["graphs"]["factual_transcoders"]["circuit_faithfulness_zero"]
    assert set(live) == {"unpruned", "pruned"} and all(abs(v) < 1e6 for v in live.values())
    assert "circuit_faithfulness_zero" not in summary["graphs"]["factual_untrained"]
    assert set(neurons["circuit_faithfulness_zero"]) == {"unpruned", "pruned"}
    assert len(neurons["verification"]["nodes"]) == 3
    assert summary["qk"]["head"].startswith("L") and summary["qk"]["residual_error"] < 1e-3
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["spec"]["config"]["max_feature_nodes"] == 32
    for name in summary["graphs"]:
        assert (tmp_path / f"viewer_{name}.html").is_file()
        doc = json.loads((tmp_path / f"graph_{name}.json").read_text())
        assert {"metadata", "qParams", "nodes", "links"} <= set(doc)
    assert "Attribution graphs" in (tmp_path / "report.html").read_text()
