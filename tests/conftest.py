"""Shared fixtures: tiny random models built in code (nothing downloaded) and the shipped toy."""

from __future__ import annotations

import copy

import pytest
import torch

from interpkit.models import Model, boot_native, load_model
from interpkit.models._load import wrap_hf_model
from tiny_models import (
    NATIVE_TINY,
    tiny_gemma2_hf,
    tiny_gemma_hf,
    tiny_gpt2_hf,
    tiny_llama_hf,
    tiny_neox_hf,
    tiny_phi_hf,
)

# Tiny models run ~10x faster on one thread than on two contended ones; integration tests on the
# embedded model lose little by it.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts on one thread: a test that ran code choosing threads (the demo's threads=0)
    would otherwise change the kernels, and so the last bits, of every test after it."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama_pair() -> tuple[Model, torch.nn.Module]:
    """A Llama-like model (RMSNorm, rotary, GQA 6 heads / 2 KV heads) and an untouched HF copy."""
    hf = tiny_llama_hf()
    reference = copy.deepcopy(hf)
    return wrap_hf_model(hf, None, spec="tiny-llama"), reference


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_pair) -> Model:
    return tiny_llama_pair[0]


@pytest.fixture(scope="session")
def tiny_gpt2_pair() -> tuple[Model, torch.nn.Module]:
    """A GPT-2-like model (LayerNorm, learned positions) and an untouched HF copy."""
    hf = tiny_gpt2_hf()
    reference = copy.deepcopy(hf)
    return wrap_hf_model(hf, None, spec="tiny-gpt2"), reference


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_pair) -> Model:
    return tiny_gpt2_pair[0]


@pytest.fixture(scope="session")
def tiny_neox() -> Model:
    """A GPT-NeoX-like model: parallel attention and MLP (no resid_mid), LayerNorm, partial rotary."""
    return wrap_hf_model(tiny_neox_hf(), None, spec="tiny-neox")


@pytest.fixture(scope="session")
def tiny_phi() -> Model:
    """A Phi-like model: one LayerNorm shared by parallel attention and MLP (its bridge skips hook_mlp_in)."""
    return wrap_hf_model(tiny_phi_hf(), None, spec="tiny-phi")


@pytest.fixture(scope="session")
def tiny_gemma() -> Model:
    """A Gemma-like model: its norms' gain is 1 + weight."""
    return wrap_hf_model(tiny_gemma_hf(), None, spec="tiny-gemma")


@pytest.fixture(scope="session")
def tiny_gemma2() -> Model:
    """A Gemma-2-like model: post-attention and post-MLP norms (the residual gets normed outputs)."""
    return wrap_hf_model(tiny_gemma2_hf(), None, spec="tiny-gemma2")


@pytest.fixture(scope="session")
def native_tiny() -> Model:
    return boot_native(NATIVE_TINY, seed=0, spec="native-tiny")


@pytest.fixture(scope="session")
def toy() -> Model:
    return load_model("toy-induction")


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """The embedded model's tokenizer alone (no weights), for text tasks on tiny models."""
    from interpkit.models._gguf import gguf_tokenizer
    from interpkit.models._load import embedded_gguf_path

    return gguf_tokenizer(embedded_gguf_path())
