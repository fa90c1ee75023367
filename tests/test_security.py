"""Security: model directories never run code, bad weights and configs are refused at load, and
two threads sharing one Model get the results each would get alone (issue 14, section 5, items
1, 5, 7 and 13).
"""

from __future__ import annotations

import builtins
import json
import re
import threading
from pathlib import Path

import pytest
import torch

import interpkit as ik
from interpkit.errors import InterpkitError, ModelLoadError
from interpkit.models import boot_native, load_model, save_native
from tiny_models import NATIVE_TINY, tiny_llama_hf

SRC = Path(ik.__file__).parent


# ------------------------------------------------------------------------------ item 1: no code from a model dir
def _evil_dir(folder: Path, where: str) -> Path:
    """A tiny Llama directory whose ``where`` config (``tokenizer`` or ``model``) names code of its own
    in an ``auto_map``; that code would write ``MARKER`` when imported."""
    tiny_llama_hf().save_pretrained(folder)
    marker = folder / "MARKER"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    if where == "tokenizer":
        code += "from transformers import PreTrainedTokenizer\nclass EvilTokenizer(PreTrainedTokenizer):\n    pass\n"
        (folder / "tokenization_evil.py").write_text(code)
        auto_map = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
        (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": auto_map}))
    else:
        code += "from transformers import LlamaForCausalLM\nclass Evil(LlamaForCausalLM):\n    pass\n"
        (folder / "modeling_evil.py").write_text(code)
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
        (folder / "config.json").write_text(json.dumps(config))
    return marker


@pytest.mark.parametrize("where", ["tokenizer", "model"])
def test_a_model_directory_never_runs_its_own_code(tmp_path, monkeypatch, where):
    marker = _evil_dir(tmp_path / "evil", where)
    asked: list[str] = []

    def answer_yes(prompt: str = "") -> str:  # a user who would type "y" at transformers' prompt
        asked.append(prompt)
        return "y"

    monkeypatch.setattr(builtins, "input", answer_yes)
    with pytest.raises(ModelLoadError, match=r"auto_map.*never runs code"):
        load_model(str(tmp_path / "evil"))
    assert not marker.exists(), "code from the model directory ran"
    assert asked == [], "a terminal prompt was shown"


def test_every_from_pretrained_call_refuses_remote_code():
    calls = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"\b(Auto\w+)\.from_pretrained\(", text):
            depth, end = 0, m.end() - 1
            for end in range(m.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path.relative_to(SRC), text[m.start() : end + 1]))
    assert len(calls) >= 4
    bad = [f"{p}: {call}" for p, call in calls if "trust_remote_code=False" not in call]
    assert bad == []


# ------------------------------------------------------------------------------ item 13: pickles
def test_a_pickle_that_torch_refuses_is_a_model_load_error(tmp_path):
    """A ``.bin``-only directory is read with ``torch.load(weights_only=True)``: an object that is not
    a tensor is refused by torch, and the refusal is a ModelLoadError, not a raw UnpicklingError."""
    folder = tmp_path / "binonly"
    hf = tiny_llama_hf()
    hf.config.save_pretrained(folder)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["extra"] = Path("/etc/passwd")  # any class outside torch's allow-list
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin.*weights_only"):
        load_model(str(folder))


def test_a_bin_directory_of_plain_tensors_loads(tmp_path):
    folder = tmp_path / "binok"
    hf = tiny_llama_hf()
    hf.config.save_pretrained(folder)
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    model = load_model(str(folder))
    tokens = torch.randint(0, 97, (1, 5))
    with torch.no_grad():
        assert torch.allclose(model(tokens), hf(tokens).logits, atol=1e-5)


# ------------------------------------------------------------------------------ item 7: weights and configs
def _native_dir(tmp_path: Path, name: str = "native") -> Path:
    return save_native(boot_native(NATIVE_TINY, seed=0), tmp_path / name)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(tmp_path, bad):
    from safetensors.torch import load_file, save_file

    folder = _native_dir(tmp_path)
    state = load_file(folder / "model.safetensors")
    name = "blocks.1.attn.q.weight"
    state[name] = state[name].clone()
    state[name].view(-1)[3] = bad
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match=re.escape(name)):
        load_model(str(folder))

    hf_dir = tmp_path / "hf"
    hf = tiny_llama_hf()
    with torch.no_grad():
        hf.model.layers[1].mlp.up_proj.weight[0, 0] = bad
    hf.save_pretrained(hf_dir)
    with pytest.raises(ModelLoadError, match=r"layers\.1\.mlp\.up_proj\.weight"):
        load_model(str(hf_dir))


def test_a_non_finite_clean_run_is_reported_clearly(tmp_path, capsys):
    """A model object with NaN weights (no loader to check it): run-task, patch and harvest say so."""
    model = boot_native(NATIVE_TINY, seed=0)
    with torch.no_grad():
        model.bridge.state_dict()["blocks.1.mlp.out.weight"].fill_(float("nan"))
    task = ik.tasks.load("induction", model, n=4, length=4)
    with pytest.raises(InterpkitError, match=r"clean run.*(NaN|non-finite)"):
        ik.metrics.clean_and_corrupt(model, task)
    with pytest.raises(InterpkitError, match=r"clean run.*(NaN|non-finite)") as err:
        ik.patch(model, task, site="head_out")
    assert "L0H0" not in str(err.value)
    with pytest.raises(InterpkitError, match=r"(NaN|non-finite)"):
        ik.cache.harvest(model, [[1, 2, 3, 4]], ["L1.resid_post"], tmp_path / "acts", progress=False)


BAD_CONFIGS = [
    ("d_model", -4, "d_model"),
    ("d_model", 0, "d_model"),
    ("n_heads", 0, "n_heads"),
    ("n_layers", "2", "n_layers"),
    ("d_head", 2.5, "d_head"),
    ("n_ctx", True, "n_ctx"),
    ("d_vocab", 10**12, "d_vocab"),
    ("n_ctx", 10**9, "n_ctx"),
    ("d_mlp", -1, "d_mlp"),
]


@pytest.mark.parametrize(("field", "value", "named"), BAD_CONFIGS)
def test_bad_native_configs_are_model_load_errors(tmp_path, field, value, named):
    folder = _native_dir(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["bridge_config"][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=named):
        load_model(str(folder))
    with pytest.raises(ModelLoadError, match=named):
        boot_native({**NATIVE_TINY, field: value})


def test_wrong_shaped_tensor_and_broken_config_name_the_native_dir(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _native_dir(tmp_path)
    state = load_file(folder / "model.safetensors")
    name = "blocks.0.attn.k.weight"
    state[name] = torch.zeros(3, 5)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match=re.escape(name)):
        load_model(str(folder))

    folder = _native_dir(tmp_path, "broken")
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])  # truncated JSON
    with pytest.raises(ModelLoadError, match="config.json") as err:
        load_model(str(folder))
    assert "Hugging Face" not in str(err.value)


# ------------------------------------------------------------------------------ item 5: threads
def test_two_threads_on_one_model_get_their_own_results(toy):
    tasks = [ik.tasks.load("induction", toy, n=6, seed=s) for s in (0, 1)]
    expected = [ik.patch(toy, t, site="head_out", batch_size=3).scores for t in tasks]
    errors: list[BaseException] = []
    got: list[list[torch.Tensor]] = [[], []]

    def work(i: int) -> None:
        try:
            for _ in range(4):
                got[i].append(ik.patch(toy, tasks[i], site="head_out", batch_size=3).scores)
                got[i].append(ik.metrics.clean_and_corrupt(toy, tasks[i])["clean_per_example"])
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i in (0, 1):
        clean = ik.metrics.clean_and_corrupt(toy, tasks[i])["clean_per_example"]
        for k, value in enumerate(got[i]):
            assert torch.equal(value, expected[i] if k % 2 == 0 else clean), (i, k)
