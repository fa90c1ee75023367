"""Property tests over random tiny models: the batched engine equals the literal reference, and
the residual decomposition sums to the residual stream, whatever the architecture.

Models are random-init Hugging Face Llamas (RMSNorm, rotary, grouped-query attention) and GPT-2s
(LayerNorm, learned positions, biases) built from a drawn config; nothing is downloaded. The
examples are derandomized so CI draws the same ones every run.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import interpkit as ik
import interpkit.cache as ikc
from patching_reference import literal_patch
from tiny_models import random_task

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True, database=None)

configs = st.tuples(
    st.sampled_from(["llama", "gpt2"]),
    st.integers(1, 3),  # n_layers
    st.integers(1, 2),  # n_kv_heads (query heads for gpt2)
    st.integers(1, 3),  # query heads per key/value head (GQA ratio; llama only)
    st.sampled_from([4, 8]),  # d_head
    st.integers(0, 3),  # seed
)


@functools.lru_cache(maxsize=16)
def build(arch: str, n_layers: int, n_kv: int, ratio: int, d_head: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from interpkit.models._load import wrap_hf_model

    torch.manual_seed(seed)
    if arch == "llama":
        n_heads = n_kv * ratio
        config = LlamaConfig(
            vocab_size=53,
            hidden_size=n_heads * d_head,
            intermediate_size=2 * n_heads * d_head,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv,
            head_dim=d_head,
            max_position_embeddings=32,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
            tie_word_embeddings=seed % 2 == 0,
            architectures=["LlamaForCausalLM"],
        )
        hf = LlamaForCausalLM(config)
    else:
        n_heads = n_kv * ratio
        config = GPT2Config(
            vocab_size=53,
            n_positions=32,
            n_embd=n_heads * d_head,
            n_layer=n_layers,
            n_head=n_heads,
            architectures=["GPT2LMHeadModel"],
        )
        hf = GPT2LMHeadModel(config)
    return wrap_hf_model(hf.eval(), None, spec=f"prop-{arch}-{n_layers}-{n_kv}-{ratio}-{d_head}-{seed}")


SITES = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out", "head_q", "head_k", "head_v"]


@pytest.mark.slow
@SETTINGS
@given(
    config=configs,
    site=st.sampled_from([*SITES, "head_pattern"]),
    per_position=st.booleans(),
    direction=st.sampled_from(["denoise", "noise"]),
    n=st.integers(1, 3),
    pos=st.integers(2, 5),
    batch_size=st.one_of(st.none(), st.integers(1, 7)),
    task_seed=st.integers(0, 99),
)
def test_engine_equals_literal_reference(config, site, per_position, direction, n, pos, batch_size, task_seed):
    model = build(*config)
    task = random_task(model, n=n, pos=pos, seed=task_seed)
    per_position = per_position and site != "head_pattern"
    fast = ik.patch(model, task, site=site, per_position=per_position, direction=direction, batch_size=batch_size)
    slow = literal_patch(model, task, site, per_position=per_position, direction=direction)
    torch.testing.assert_close(fast.scores, slow, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@SETTINGS
@given(config=configs, layer_frac=st.floats(0, 1), n=st.integers(1, 3), pos=st.integers(1, 6), seed=st.integers(0, 99))
def test_decomposition_sums_to_the_residual(config, layer_frac, n, pos, seed):
    model = build(*config)
    n_layers = model.cfg.n_layers
    layer = round(layer_frac * n_layers)  # 0..n_layers (n_layers = the final residual stream)
    tokens = torch.randint(0, model.cfg.d_vocab, (n, pos), generator=torch.Generator().manual_seed(seed))
    cache = ikc.run(model, tokens)
    parts = cache.decompose_resid(layer)
    target = cache[f"blocks.{layer}.hook_resid_pre" if layer < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"]
    assert parts.scores.shape[1:] == target.shape
    n_heads = model.cfg.n_heads
    assert sum(lab.startswith("L") and "H" in lab for lab in parts.labels["component"]) == layer * n_heads
    torch.testing.assert_close(parts.scores.sum(0), target.to(parts.scores.dtype), atol=1e-4, rtol=1e-4)
