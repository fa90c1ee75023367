"""Tiny random Hugging Face models built from configs (nothing downloaded), shared by tests."""

from __future__ import annotations

import torch


def tiny_llama_hf(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2_hf(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=89, n_positions=64, n_embd=32, n_layer=2, n_head=4, architectures=["GPT2LMHeadModel"]
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


def tiny_llama_with_tokenizer(tokenizer):
    """The tiny Llama with its vocabulary grown to a real tokenizer's, wrapped as a Model."""
    from interpkit.models._load import wrap_hf_model

    hf = tiny_llama_hf()
    hf.resize_token_embeddings(len(tokenizer))
    return wrap_hf_model(hf, tokenizer, spec="tiny-tok")
