"""``load_model(..., device_map=...)``: block-split plans, dispatch, its errors (CPU only, tiny models).

Every device here is the CPU, so these tests check the plans, the dispatch code path (hooks on
every module, the realised map recorded) and that a dispatched model computes exactly what the
plain one does. Splitting over real GPUs is checked by ``benchmarks/gpu_suite.py`` on a machine
with two or more.
"""

from __future__ import annotations

import pytest
import torch

import interpkit as ik
from interpkit.cli import main
from interpkit.errors import DeviceError
from interpkit.models import boot_native, load_model, save_native
from interpkit.models._device_map import (
    Layout,
    check_device_map,
    find_module,
    layout,
    resolve_plan,
    split_blocks,
    split_plan,
)
from interpkit.models._dispatch import _move_inputs, dispatch
from interpkit.models._load import wrap_hf_model
from interpkit.runtime._suffix import SuffixRunner
from tiny_models import NATIVE_TINY, random_task, tiny_llama_hf


def _fresh_llama():
    # dispatch changes a model in place, so these tests never touch the shared session fixtures
    return wrap_hf_model(tiny_llama_hf(), None, spec="tiny-llama")


def _hooked(model, name):
    """Whether the bridge component at ``name`` and the module it wraps both move their inputs."""
    module = find_module(model.bridge.original_model, name)
    return bool(module._forward_pre_hooks) and bool(module._modules["_original_component"]._forward_pre_hooks)


# ---------------------------------------------------------------------------- plans
@pytest.mark.parametrize(("n_layers", "n_devices"), [(30, 4), (30, 1), (7, 7), (5, 2), (62, 8)])
def test_split_blocks_is_contiguous_and_balanced(n_layers, n_devices):
    plan = split_blocks(n_layers, n_devices)
    assert len(plan) == n_layers
    assert plan == sorted(plan) and plan[0] == 0 and plan[-1] == n_devices - 1  # contiguous, all devices used
    sizes = [plan.count(d) for d in range(n_devices)]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_split_plan_30_layers_over_4_devices():
    lay = Layout(
        ("model.embed_tokens", "model.rotary_emb"),
        tuple(f"model.layers.{i}" for i in range(30)),
        ("model.norm", "lm_head"),
    )
    devices = [f"cuda:{i}" for i in range(4)]
    plan = split_plan(lay, devices)
    ranges = {d: [i for i in range(30) if plan[f"model.layers.{i}"] == d] for d in devices}
    assert [(r[0], r[-1]) for r in ranges.values()] == [(0, 7), (8, 15), (16, 22), (23, 29)]
    assert plan["model.embed_tokens"] == "cuda:0"
    assert plan["model.norm"] == plan["lm_head"] == "cuda:3"
    tied = split_plan(Layout(lay.before, lay.blocks, lay.after, {"lm_head": "model.embed_tokens"}), devices)
    assert tied["lm_head"] == "cuda:0" and tied["model.norm"] == "cuda:3"  # one tensor lives on one device


def test_split_blocks_errors():
    with pytest.raises(DeviceError, match="at most 2"):
        split_blocks(2, 4)
    with pytest.raises(DeviceError, match="at least 1"):
        split_blocks(3, 0)


def test_layout_of_real_models(tiny_llama, tiny_gpt2, native_tiny):
    llama = layout(tiny_llama.bridge.original_model, 3)
    assert llama.before == ("model.embed_tokens", "model.rotary_emb")  # weightless: runs before the blocks
    assert llama.blocks == ("model.layers.0", "model.layers.1", "model.layers.2")
    assert llama.after == ("model.norm", "lm_head") and not llama.tied
    gpt2 = layout(tiny_gpt2.bridge.original_model, 2)
    assert gpt2.before == ("transformer.wte", "transformer.wpe") and gpt2.after == ("transformer.ln_f", "lm_head")
    assert gpt2.tied == {"lm_head": "transformer.wte"}  # GPT-2 ties its unembedding to the embedding
    native = layout(native_tiny.bridge.original_model, 2)
    assert (native.before, native.blocks, native.after) == (
        ("tok_embed", "pos"),
        ("layers.0", "layers.1"),
        ("ln_out", "head"),
    )


def test_int_map_plans_over_gpus(monkeypatch, tiny_llama):
    with pytest.raises(DeviceError, match=r"device_map=2 .*0 CUDA device\(s\); available here: cpu"):
        check_device_map(2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert check_device_map(2) == 2
    plan = resolve_plan(tiny_llama.bridge.original_model, 3, 2)
    assert {k: str(v) for k, v in plan.items()} == {
        "model.embed_tokens": "cuda:0",
        "model.rotary_emb": "cuda:0",
        "model.layers.0": "cuda:0",
        "model.layers.1": "cuda:0",
        "model.layers.2": "cuda:1",
        "model.norm": "cuda:1",
        "lm_head": "cuda:1",
    }
    auto = resolve_plan(tiny_llama.bridge.original_model, 3, "auto")  # in memory: every GPU, at most one per block
    assert sorted({str(v) for v in auto.values()}) == ["cuda:0", "cuda:1", "cuda:2"]


# ---------------------------------------------------------------------------- dispatch
def test_dispatched_model_computes_what_the_plain_one_does():
    plain = _fresh_llama()
    names = layout(plain.bridge.original_model, 3)
    full_map = dict.fromkeys((*names.before, *names.blocks, *names.after), "cpu")
    dispatched = load_model(_fresh_llama(), device_map=full_map)
    assert not any(_hooked(plain, name) for name in full_map)
    assert all(_hooked(dispatched, name) for name in full_map)  # the dispatch path ran
    assert dispatched.bridge.original_model._forward_hooks  # logits back to the tokens' device
    assert dispatched.info["device_map"] == full_map
    assert dispatched.devices == (torch.device("cpu"),) and dispatched.layer_device(2) == torch.device("cpu")
    tokens = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(dispatched(tokens), plain(tokens))
    task = random_task(plain, n=3, pos=6, ragged=True)
    for site, per_position in (("head_out", False), ("resid_pre", True), ("mlp_out", False)):
        a = ik.patch(plain, task, site=site, per_position=per_position)
        b = ik.patch(dispatched, task, site=site, per_position=per_position)
        assert a.meta["engine"] == b.meta["engine"]
        assert torch.equal(a.scores, b.scores), site
    assert b.provenance["device_map"] == full_map
    b_ablate = ik.patching.ablate(dispatched, task, ["L1H0", "L2.mlp"], ablation="mean")
    assert torch.equal(ik.patching.ablate(plain, task, ["L1H0", "L2.mlp"], ablation="mean").scores, b_ablate.scores)


def test_block_split_over_three_devices_equals_plain():
    # the int-n plan, with the CPU standing in for each of three GPUs
    plain, split = _fresh_llama(), _fresh_llama()
    plan = split_plan(layout(split.bridge.original_model, 3), ["cpu", "cpu", "cpu"])
    dispatch(split, {name: torch.device(d) for name, d in plan.items()})
    assert all(_hooked(split, f"model.layers.{i}") for i in range(3))
    task = random_task(plain, n=2, pos=5)
    assert torch.equal(ik.patch(plain, task, site="head_out").scores, ik.patch(split, task, site="head_out").scores)
    path = ik.patching.path_patch(split, task, receivers=["logits"], senders="heads", direction="noise")
    assert torch.equal(
        path.scores,
        ik.patching.path_patch(plain, task, receivers=["logits"], senders="heads", direction="noise").scores,
    )


def test_native_and_hf_directories_with_a_device_map(tmp_path):
    native = save_native(boot_native(NATIVE_TINY, seed=0), tmp_path / "native")
    plain, mapped = load_model(str(native)), load_model(str(native), device_map="cpu")
    assert mapped.info["device_map"] == {"": "cpu"} and "device_map" not in plain.info
    tokens = torch.randint(0, 61, (2, 7))
    with torch.no_grad():
        assert torch.equal(mapped(tokens), plain(tokens))
    tiny_llama_hf().save_pretrained(tmp_path / "hf")
    reference = load_model(str(tmp_path / "hf"))
    names = layout(reference.bridge.original_model, 3)
    for device_map in ("cpu", "auto", dict.fromkeys((*names.before, *names.blocks, *names.after), "cpu")):
        model = load_model(str(tmp_path / "hf"), device_map=device_map)  # through from_pretrained
        assert model.info["device_map"] and set(model.info["device_map"].values()) == {"cpu"}
        with torch.no_grad():
            assert torch.equal(model(tokens), reference(tokens)), device_map
    half = load_model(str(tmp_path / "hf"), device_map="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16


def test_input_mover_moves_nested_tensors_but_not_skipped_keys():
    pre_hook = _move_inputs(torch.device("meta"), ["cache"])
    t = torch.ones(2)
    args, kwargs = pre_hook(None, (t, [t, 3]), {"mask": t, "cache": t, "n": 1})
    assert args[0].is_meta and args[1][0].is_meta and args[1][1] == 3
    assert kwargs["mask"].is_meta and kwargs["cache"] is t and kwargs["n"] == 1


def test_moving_a_dispatched_model_gathers_it():
    model = load_model(_fresh_llama(), device_map={"": "cpu", "model.layers.1": "cpu"})
    assert _hooked(model, "model.layers.1")
    model.to("cpu")
    assert not _hooked(model, "model.layers.1") and "device_map" not in model.info
    assert not model.bridge.original_model._forward_hooks and not model.bridge.original_model._forward_pre_hooks
    offloaded = load_model(_fresh_llama(), device_map="cpu")
    norm = offloaded.bridge.original_model.model.norm._modules["_original_component"]
    norm.weight = torch.nn.Parameter(torch.empty_like(norm.weight, device="meta"))  # as accelerate offloads
    with pytest.raises(DeviceError, match="offloaded"):
        offloaded.to("cpu")


def test_split_models_fall_back_to_the_hook_engine(monkeypatch):
    model = load_model(_fresh_llama(), device_map="cpu")
    task = random_task(model, n=2, pos=5)
    assert SuffixRunner.check(model)
    expected = ik.patch(model, task, site="resid_pre", per_position=True)
    assert expected.meta["engine"] == "suffix"
    two = (torch.device("cpu"), torch.device("meta"))  # what a model over two devices reports
    monkeypatch.setattr(type(model), "devices", property(lambda self: two))
    assert not SuffixRunner.check(model)  # even after a check that said yes
    res = ik.patch(model, task, site="resid_pre", per_position=True)
    assert res.meta["engine"] == "hooks"
    assert torch.allclose(res.scores, expected.scores, atol=1e-5)


# ---------------------------------------------------------------------------- errors
def test_bad_device_maps_name_the_value_and_the_choices(tiny_llama, tiny_gpt2):
    with pytest.raises(DeviceError, match="not both"):
        load_model("toy-induction", device="cpu", device_map="cpu")
    with pytest.raises(DeviceError, match=r"'balance'.*Did you mean 'balanced'.*'auto'"):
        load_model("toy-induction", device_map="balance")
    for bad in (True, 1.5, {}, {"": "disk"}, {3: "cpu"}, 0):
        with pytest.raises(DeviceError, match="device_map"):
            check_device_map(bad)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="available here: cpu"):
            load_model("toy-induction", device_map="cuda")
        with pytest.raises(DeviceError, match=r"device_map\['model.layers.0'\] = 7.*available here: cpu"):
            check_device_map({"model.layers.0": 7})
    root = tiny_llama.bridge.original_model
    with pytest.raises(DeviceError, match=r"'model.layer.0'.*closest: model.layers.0"):
        resolve_plan(root, 3, {"model.layer.0": torch.device("cpu")})
    with pytest.raises(DeviceError, match="places no module holding 'model.layers.1"):
        resolve_plan(root, 3, {"model.embed_tokens": torch.device("cpu"), "model.layers.0": torch.device("cpu")})
    split_tie = {"": torch.device("cpu"), "lm_head": torch.device("cuda", 0)}
    with pytest.raises(DeviceError, match="tied weights"):
        resolve_plan(tiny_gpt2.bridge.original_model, 2, split_tie)


def test_cli_device_map(capsys):
    assert main(["hooks", "--model", "toy-induction", "--device-map", "cpu", "--filter", "hook_z"]) == 0
    assert capsys.readouterr().out.split() == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert main(["sites", "--model", "toy-induction", "--device-map", '{"": "cpu"}', "--kind", "z"]) == 0
    capsys.readouterr()
    assert main(["hooks", "--model", "toy-induction", "--device", "cpu", "--device-map", "cpu"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["hooks", "--model", "toy-induction", "--device-map", "{oops"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    if torch.cuda.device_count() < 3:
        assert main(["hooks", "--model", "toy-induction", "--device-map", "3"]) == 2
        assert "device_map=3" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="with two GPUs the check runs for real")
def test_gpu_suite_multi_gpu_check_skips_without_two_gpus():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
    run = subprocess.run(
        [sys.executable, str(script), "--only", "multi-gpu"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "multi-GPU check: skipped" in run.stdout
