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
    tiny_qwen3_hf,
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


def _wrapped_fixture(build, spec: str):
    """A session fixture: the Hugging Face model ``build()`` makes (see ``tiny_models``), wrapped."""

    @pytest.fixture(scope="session")
    def fixture() -> Model:
        return wrap_hf_model(build(), None, spec=spec)

    fixture.__doc__ = build.__doc__
    return fixture


tiny_neox = _wrapped_fixture(tiny_neox_hf, "tiny-neox")  # parallel attention and MLP, no resid_mid
tiny_phi = _wrapped_fixture(tiny_phi_hf, "tiny-phi")  # one shared norm; its bridge skips hook_mlp_in
tiny_gemma = _wrapped_fixture(tiny_gemma_hf, "tiny-gemma")  # norm gains are 1 + weight
tiny_gemma2 = _wrapped_fixture(tiny_gemma2_hf, "tiny-gemma2")  # norms after attention and MLP too
tiny_qwen3 = _wrapped_fixture(tiny_qwen3_hf, "tiny-qwen3")  # query/key norms (added by anatomy alone)


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


@pytest.fixture
def hooks_only(tiny_llama):
    """``tiny_llama`` with the suffix forward switched off for one test: sweeps run on the hook engine."""
    from tiny_models import suffix_off

    with suffix_off(tiny_llama):
        yield tiny_llama
