"""Tiny random Hugging Face models built from configs (nothing downloaded), shared by tests."""

from __future__ import annotations

import contextlib

import torch

# a native (boot_native) model's config: LayerNorm, 2 layers, 4 heads
NATIVE_TINY = {
    "d_model": 32,
    "d_head": 8,
    "n_layers": 2,
    "n_ctx": 32,
    "n_heads": 4,
    "d_vocab": 61,
    "d_mlp": 64,
    "act_fn": "gelu",
    "normalization_type": "LN",
}


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


def _tiny_hf(arch: str, seed: int, move_norms: bool = False, **fields):
    """A 2-layer, 4-head, d_model 32 Hugging Face model of architecture ``arch`` ("GPTNeoX",
    "Phi", ...), seeded; ``move_norms``: norm weights moved off their init, as training would."""
    import transformers

    shared = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = getattr(transformers, f"{arch}Config")(
        max_position_embeddings=64, architectures=[f"{arch}ForCausalLM"], **shared, **fields
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"{arch}ForCausalLM")(config).eval()
    if move_norms:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.add_(torch.randn_like(param) * 0.3)
    return model


def tiny_neox_hf(seed: int = 0):
    """A GPT-NeoX (Pythia) block: attention and MLP in parallel on the block's input, partial rotary."""
    return _tiny_hf("GPTNeoX", seed, vocab_size=83, rotary_pct=0.5, use_parallel_residual=True)


def tiny_phi_hf(seed: int = 0):
    """A Phi block: one LayerNorm read by attention and MLP in parallel, partial rotary."""
    return _tiny_hf("Phi", seed, vocab_size=79, partial_rotary_factor=0.5)


def tiny_gemma_hf(seed: int = 0):
    """A Gemma block: RMSNorms that multiply by ``1 + weight`` (weights moved off their zero init),
    embeddings scaled by sqrt(d_model), GQA, tied unembedding."""
    return _tiny_hf("Gemma", seed, True, vocab_size=71, num_key_value_heads=2, head_dim=8)


def tiny_gemma2_hf(seed: int = 0):
    """A Gemma 2 block: norms before *and after* attention and MLP (``1 + weight`` gains, moved
    off their init), GQA; soft-capping off, so that direct logit attribution is exact."""
    return _tiny_hf(
        "Gemma2",
        seed,
        True,
        vocab_size=67,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
    )


def tiny_qwen3_hf(seed: int = 0):
    """A Qwen3 block: RMS norms on each head's queries and keys after their projections (moved off their
    init), GQA, rotary. interpkit learns nothing new for it but what its anatomy reads off the bridge."""
    return _tiny_hf("Qwen3", seed, True, vocab_size=73, num_key_value_heads=2, head_dim=8)


def tiny_llama_with_tokenizer(tokenizer):
    """The tiny Llama with its vocabulary grown to a real tokenizer's, wrapped as a Model."""
    from interpkit.models._load import wrap_hf_model

    hf = tiny_llama_hf()
    hf.resize_token_embeddings(len(tokenizer))
    return wrap_hf_model(hf, tokenizer, spec="tiny-tok")


def random_task(model, n=3, pos=6, seed=0, ragged=False):
    """A seeded task of random token prompts and answers for ``model`` (parity tests need no meaning).

    ``ragged``: the first example is two tokens shorter (right padding, per-example answer positions).
    """
    from interpkit.tasks import from_token_lists

    g = torch.Generator().manual_seed(seed)
    v = model.cfg.d_vocab
    clean = torch.randint(0, v, (n, pos), generator=g).tolist()
    corrupt = torch.randint(0, v, (n, pos), generator=g).tolist()
    if ragged:
        clean[0], corrupt[0] = clean[0][:-2], corrupt[0][:-2]
    answers = torch.randint(0, v, (2, n), generator=g).tolist()
    return from_token_lists("rand", model, clean, corrupt, answers[0], answers[1])


def tiny_olmo2_hf(seed: int = 0):
    """An OLMo2 block: no norm before attention or MLP, norms after both, RMS query/key norms over
    all heads at once (gains moved off their init), GQA."""
    return _tiny_hf("Olmo2", seed, True, vocab_size=71, num_key_value_heads=2)


@contextlib.contextmanager
def suffix_off(model):
    """``model`` with the suffix forward switched off while the block runs: sweeps and IG use the hook engine."""
    verdicts = model.anatomy.verdicts
    saved = verdicts.get("suffix")
    verdicts["suffix"] = False
    try:
        yield model
    finally:
        verdicts.pop("suffix")
        if saved is not None:
            verdicts["suffix"] = saved
