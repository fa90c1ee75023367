"""Loading every spec form, the Model surface, and the loader's errors (tiny models, no download)."""

from __future__ import annotations

import json

import pytest
import torch

import interpkit as ik
from interpkit.errors import DeviceError, HubUnavailableError, ModelLoadError, ModelNotFoundError, SiteError, TaskError
from interpkit.models import boot_native, load_model, save_native
from tiny_models import tiny_llama_with_tokenizer


def test_bridge_logits_equal_hf(tiny_llama_pair, tiny_gpt2_pair):
    for model, reference in (tiny_llama_pair, tiny_gpt2_pair):
        tokens = torch.randint(0, model.cfg.d_vocab, (3, 11), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.allclose(model(tokens), reference(tokens).logits, atol=1e-5)


def test_config_reads_true_values(tiny_llama, tiny_gpt2):
    c = tiny_llama.cfg
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.d_model, c.d_head, c.d_vocab, c.n_ctx) == (3, 6, 2, 48, 8, 97, 64)
    assert c.group_size == 3 and c.normalization == "RMS" and c.positional == "rotary"
    assert c.rotary_base == 1e4
    assert tiny_gpt2.cfg.n_kv_heads == tiny_gpt2.cfg.n_heads == 4
    assert tiny_gpt2.cfg.normalization == "LN"


def test_models_are_in_eval_mode(tiny_llama, native_tiny, toy):
    for model in (tiny_llama, native_tiny, toy):
        assert not model.bridge.training


def test_hook_names_fold_aliases(tiny_llama):
    names = tiny_llama.hook_names()
    assert len(names) == len(set(names))
    points = [id(tiny_llama.bridge.hook_dict[n]) for n in names]
    assert len(points) == len(set(points)), "two names for one hook point survived folding"
    assert len(names) < len(tiny_llama.bridge.hook_dict)
    for classic in ("blocks.0.hook_resid_pre", "blocks.2.attn.hook_z", "blocks.1.hook_mlp_out", "hook_embed"):
        assert classic in names
    assert "blocks.0.hook_in" not in names  # folded into its classic alias
    assert tiny_llama.resolve_hook("blocks.0.hook_in") == "blocks.0.hook_resid_pre"
    assert "blocks.0.hook_in" in tiny_llama.hook_aliases("blocks.0.hook_resid_pre")


def test_unknown_hook_lists_close_names(tiny_llama):
    with pytest.raises(SiteError, match="blocks.0.hook_resid_pre"):
        tiny_llama.resolve_hook("blocks.0.hook_resid_pree")


def test_native_roundtrip(tmp_path, native_tiny):
    out = save_native(native_tiny, tmp_path / "toy", description="test")
    assert json.loads((out / "config.json").read_text())["format"] == "interpkit-native"
    loaded = load_model(str(out))
    tokens = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), native_tiny(tokens))
    assert loaded.weights_hash and len(loaded.weights_hash) == 64
    assert loaded.info["description"] == "test"


def test_hf_directory_and_objects(tmp_path, tiny_gpt2_pair):
    _, reference = tiny_gpt2_pair
    reference.save_pretrained(tmp_path / "hf")
    from_dir = load_model(str(tmp_path / "hf"))
    tokens = torch.randint(0, 89, (2, 8))
    with torch.no_grad():
        expected = reference(tokens).logits
        assert torch.allclose(from_dir(tokens), expected, atol=1e-5)
    assert from_dir.weights_hash is not None
    import copy

    from_object = load_model(copy.deepcopy(reference))
    from_bridge = load_model(from_object.bridge)
    assert load_model(from_object) is from_object
    with torch.no_grad():
        assert torch.allclose(from_object(tokens), expected, atol=1e-5)
        assert torch.allclose(from_bridge(tokens), expected, atol=1e-5)


def test_unknown_name_suggests_registry(monkeypatch):
    with pytest.raises(ModelNotFoundError, match="toy-induction"):
        load_model("toy-inducton")
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        load_model("./no/such/dir")


def test_hub_id_offline_names_alternatives(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # read once at import (an earlier test imported it): without this the call waits on network timeouts
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="smollm2-135m"):
        load_model("someone/some-model-that-is-not-cached")


def test_truncated_gguf_is_a_clear_error(tmp_path):
    from interpkit.models._load import embedded_gguf_path

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(embedded_gguf_path().read_bytes()[: 1 << 20])
    with pytest.raises(ModelLoadError, match="broken.gguf"):
        load_model(str(bad))
    (tmp_path / "garbage.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="garbage.gguf"):
        load_model(str(tmp_path / "garbage.gguf"))


def test_corrupt_safetensors_is_a_clear_error(tmp_path, native_tiny):
    out = save_native(native_tiny, tmp_path / "toy")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_model(str(out))


def test_directory_without_model(tmp_path):
    with pytest.raises(ModelLoadError, match="neither"):
        load_model(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="not a model"):
        load_model(str(tmp_path / "notes.txt"))


def test_bad_device_and_dtype():
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="cpu"):
            load_model("toy-induction", device="cuda")
    with pytest.raises(DeviceError, match="available here"):
        load_model("toy-induction", device="tpu")
    with pytest.raises(DeviceError, match="bfloat16"):
        load_model("toy-induction", dtype="int8")
    with pytest.raises(DeviceError):
        load_model("toy-induction", dtype=3)


def test_dtype_cast():
    model = load_model("toy-induction", dtype="bf16")
    assert model.dtype == torch.bfloat16
    out = model(torch.tensor([[1, 2, 3, 1, 2]]))
    assert out.dtype == torch.bfloat16


def test_token_checks(tiny_llama):
    with pytest.raises(TaskError, match="n_ctx=64"):
        tiny_llama(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(TaskError, match=r"\[0, 97\)"):
        tiny_llama(torch.tensor([[1, 200]]))
    with pytest.raises(TaskError, match="no tokenizer"):
        tiny_llama.to_tokens("hello")


def test_generate_matches_hf_greedy(tiny_llama_pair):
    model, reference = tiny_llama_pair
    prompt = torch.tensor([[5, 17, 3, 42, 8]])
    expected = reference.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, max_new_tokens=12, stop_at_eos=False)
    uncached = model.generate(prompt, max_new_tokens=12, stop_at_eos=False, use_cache=False)
    assert torch.equal(cached.cpu(), expected)
    assert torch.equal(uncached.cpu(), expected)


def test_generate_sampling_is_seeded(tiny_llama):
    prompt = torch.tensor([[5, 17, 3]])
    a = tiny_llama.generate(prompt, max_new_tokens=6, temperature=1.0, seed=3, stop_at_eos=False)
    b = tiny_llama.generate(prompt, max_new_tokens=6, temperature=1.0, seed=3, stop_at_eos=False)
    assert torch.equal(a, b) and a.shape == (1, 9)


def test_wrap_tokenizer_bos_policy(embedded_tokenizer):
    model = tiny_llama_with_tokenizer(embedded_tokenizer)
    assert model.prepend_bos is False  # SmolLM2's tokenizer adds no BOS
    plain = model.to_tokens("hello world")
    with_bos = model.to_tokens("hello world", prepend_bos=True)
    assert with_bos[0, 0].item() == embedded_tokenizer.bos_token_id
    assert torch.equal(with_bos[0, 1:], plain[0])
    assert model.to_str_tokens("hello world") == ["hello", " world"]
    batch = model.to_tokens(["a", "hello world"], padding_side="left")
    assert batch.shape == (2, 2) and batch[0, 0].item() == embedded_tokenizer.pad_token_id
    with pytest.raises(TaskError, match="single token"):
        model.to_single_token(" Mississippi-River")


def test_boot_native_is_seeded():
    fields = {"d_model": 16, "d_head": 4, "n_layers": 1, "n_ctx": 8, "n_heads": 4, "d_vocab": 11, "attn_only": True}
    a, b = boot_native(fields, seed=1), boot_native(fields, seed=1)
    c = boot_native(fields, seed=2)
    tokens = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(a(tokens), b(tokens))
        assert not torch.equal(a(tokens), c(tokens))


def test_list_models_names_registry():
    names = {m["name"]: m for m in ik.models.list_models()}
    assert {"smollm2-135m", "toy-induction"} <= set(names)
    assert names["toy-induction"]["available"]
