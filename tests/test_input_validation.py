"""Bad input gets a clear InterpkitError naming the value, never a silent coercion or a raw
traceback (issue 14, section 5, items 6, 10, 11 and 12)."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

import interpkit as ik
from interpkit.cli import main
from interpkit.errors import DeviceError, InterpkitError, ResultError, TaskError
from interpkit.tasks import from_token_lists, load
from tiny_models import tiny_llama_with_tokenizer

GOOD_IDS = {"clean_ids": [1, 2, 3], "corrupt_ids": [1, 4, 3], "answer_id": 5, "wrong_id": 6}
TEXT = {
    "clean": "When Mary and John went out, John gave it to",
    "corrupt": "When Anna and Paul went out, Paul gave it to",
    "answer": " Mary",
    "wrong": " John",
}


def _write(path, rows, prefix: bytes = b""):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_bytes(prefix + ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
    return path


@pytest.fixture(scope="module")
def tok_model(embedded_tokenizer):
    return tiny_llama_with_tokenizer(embedded_tokenizer)


@pytest.fixture(scope="module")
def task(toy):
    return ik.tasks.load("induction", toy, n=4, seed=0)


# ------------------------------------------------------------------------------ item 10: no silent coercion
@pytest.mark.parametrize(
    "row",
    [
        {**GOOD_IDS, "clean_ids": [1, True, 3]},
        {**GOOD_IDS, "answer_id": True},
        {**GOOD_IDS, "wrong_id": False},
        {**GOOD_IDS, "corrupt_ids": [1, 4.0, 3]},
    ],
)
def test_bools_and_floats_are_not_token_ids_in_files(tmp_path, tiny_llama, row):
    with pytest.raises(TaskError, match=r"t\.jsonl:2"):
        load(str(_write(tmp_path / "t.jsonl", [GOOD_IDS, row])), tiny_llama)


@pytest.mark.parametrize(
    "clean",
    [[[1, True]], [[1, 2.7]], [{1: "a", 2: "b"}], [[1, "2"]], [torch.tensor([1.0, 2.0])]],
)
def test_bools_floats_and_dicts_are_not_token_ids_in_python(tiny_llama, clean):
    with pytest.raises(TaskError, match="example 0"):
        from_token_lists("t", tiny_llama, clean, [[1, 2]], [1], [2])
    with pytest.raises(TaskError, match="answer"):
        from_token_lists("t", tiny_llama, [[1, 2]], [[1, 2]], [True], [2])


@pytest.mark.parametrize("tokens", [{1: 2}, [[1, 2], [3]], "abc", None, [[True, False]], [[1.0, 2.0]]])
def test_model_tokens_are_checked_not_coerced(toy, tokens):
    with pytest.raises(TaskError, match="tokens must be integer ids"):
        toy.check_tokens(tokens)


def test_a_byte_order_mark_is_not_data_in_task_files(tmp_path, tiny_llama, tok_model):
    plain = load(str(_write(tmp_path / "plain.jsonl", [GOOD_IDS])), tiny_llama)
    bom = load(str(_write(tmp_path / "bom.jsonl", [GOOD_IDS], b"\xef\xbb\xbf")), tiny_llama)
    assert bom.hash() == plain.hash()
    text = load(str(_write(tmp_path / "tbom.jsonl", [TEXT], b"\xef\xbb\xbf")), tok_model)
    assert text.hash() == load(str(_write(tmp_path / "t.jsonl", [TEXT])), tok_model).hash()


@pytest.mark.parametrize("bad", [0, -2, True, "4", 2.0])
def test_batch_size_must_be_a_positive_int(toy, task, bad):
    with pytest.raises(InterpkitError, match="batch_size"):
        ik.patch(toy, task, site="head_out", batch_size=bad)
    with pytest.raises(InterpkitError, match="batch_size"):
        ik.patch(toy, task, site="resid_pre", per_position=True, batch_size=bad)
    with pytest.raises(InterpkitError, match="batch_size"):
        ik.patching.ablate(toy, task, ["L0H0"], "zero", batch_size=bad)


@pytest.mark.parametrize("device", ["cpu:99", "cpu:1"])
def test_a_cpu_index_that_does_not_exist_is_refused(device):
    with pytest.raises(DeviceError, match=device):
        ik.load_model("toy-induction", device=device)


# ------------------------------------------------------------------------------ item 11: no raw tracebacks
@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"seed": "abc"}, "seed"),
        ({"seed": 2**70}, "seed"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"n": "5"}, "n"),
        ({"n": 2.0}, "n"),
        ({"n": 10**9}, "n"),
        ({"length": "8"}, "length"),
    ],
)
def test_generator_parameters_of_the_wrong_type_or_range(toy, params, named):
    with pytest.raises(TaskError, match=rf"\b{named}\b"):
        load("induction", toy, **params)


def test_cli_params_of_the_wrong_type_and_absurd_n(capsys):
    base = ["run-task", "--model", "toy-induction", "--task", "induction"]
    for extra in (["--param", "seed=abc"], ["--param", "seed=1e30"], ["--n", "1000000000"]):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("interpkit: error:") and ("seed" in err or "n=" in err), err


def test_run_task_batches_its_forwards(toy, monkeypatch):
    """run-task's clean and corrupt runs go in row chunks, never one forward over the whole task."""
    task = ik.tasks.load("induction", toy, n=100, seed=0)
    monkeypatch.setenv("INTERPKIT_TOKENS_PER_FORWARD", str(task.n_pos * 16))  # 16 rows per forward
    widest = []
    handle = toy.bridge.embed.register_forward_hook(lambda m, args, out: widest.append(out.shape[0]))
    try:
        values = ik.metrics.clean_and_corrupt(toy, task)
    finally:
        handle.remove()
    assert max(widest) <= 16 and len(widest) >= 2 * 100 // 16
    with torch.inference_mode():
        whole = ik.metrics.evaluate(toy(task.clean), task)
    torch.testing.assert_close(values["clean_per_example"], whole.cpu(), atol=1e-5, rtol=1e-5)


def test_metric_of_the_wrong_type(tmp_path, tiny_llama):
    path = _write(tmp_path / "m.jsonl", [{**GOOD_IDS, "metric": 5}])
    with pytest.raises(TaskError, match="metric"):
        load(str(path), tiny_llama)
    with pytest.raises(TaskError, match="metric"):
        ik.metrics.get(5)


def test_deeply_nested_json_names_the_line(tmp_path, tiny_llama):
    deep = '{"clean_ids": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(TaskError, match=r"d\.jsonl:2"):
        load(str(_write(tmp_path / "d.jsonl", [GOOD_IDS, deep])), tiny_llama)


def test_a_lone_surrogate_in_a_prompt_names_the_line(tmp_path, tok_model):
    path = _write(tmp_path / "s.jsonl", [TEXT, {**TEXT, "clean": "When \ud800 and John went out, John gave it to"}])
    with pytest.raises(TaskError, match=r"s\.jsonl:2.*(surrogate|UTF-8)"):
        load(str(path), tok_model)
    with pytest.raises(TaskError, match="surrogate|UTF-8"):
        tok_model.to_tokens("a lone \udc80 surrogate")


def test_a_non_utf8_task_file_names_the_line(tmp_path, tiny_llama):
    path = tmp_path / "b.jsonl"
    path.write_bytes(json.dumps(GOOD_IDS).encode() + b"\n" + b'{"clean_ids": [1], "x": "\xff"}\n')
    with pytest.raises(TaskError, match=r"b\.jsonl:2.*UTF-8"):
        load(str(path), tiny_llama)


@pytest.mark.parametrize(
    "text",
    [
        '{"format": "interpkit-result/1"}',
        '{"format": "interpkit-result/1", "scores": 5, "dims": ["a"]}',
        '{"format": "interpkit-result/1", "scores": {"__tensor__": true, "dtype": "float32", "shape": [3], '
        '"values": [1, 2]}, "dims": ["a"]}',
        '{"format": "interpkit-result/1", "scores": {"__tensor__": true, "dtype": "float32", "shape": [2], '
        '"values": [1, "x"]}, "dims": ["a"]}',
        '{"format": "interpkit-result/1", "scores": {"__tensor__": true, "dtype": "float32", "shape": [1], '
        '"values": [1]}, "dims": "a", "labels": [1]}',
        '{"format": "interpkit-result/1", "scores": {"__tensor__": true, "dtype": "float32", "shape": [1], '
        '"values": [1]}, "dims": ["a"], "labels": {"a": "x"}, "bogus": 1}',
        '{"format": "interpkit-result/1", "scores": {"__tensor__": true, "dtype": "load", "shape": [1], '
        '"values": [1]}, "dims": ["a"]}',
        "[" * 100_000 + "]" * 100_000,
        '"just a string"',
    ],
)
def test_malformed_result_files_are_result_errors(tmp_path, text):
    (tmp_path / "r.json").write_text(text)
    with pytest.raises(ResultError):
        ik.Result.from_json(tmp_path / "r.json")
    (tmp_path / "r.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ResultError):
        ik.Result.from_json(tmp_path / "r.json")


def test_disk_full_at_the_report_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from interpkit import results

    real = results.os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "fdopen", lambda *a, **k: Full(real(*a, **k)))
    out = tmp_path / "p"
    args = ["patch", "--model", "toy-induction", "--task", "induction", "--n", "4", "--site", "resid_pre"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "interpkit: error:" in err and "No space left" in err and "result.json" in err
    assert not any(p.name in ("result.json", "report.html") for p in out.iterdir())


def test_patch_out_that_is_a_file_is_refused_before_the_sweep(tmp_path, capsys, monkeypatch):
    import interpkit.patching

    monkeypatch.setattr(interpkit.patching, "patch", lambda *a, **k: pytest.fail("the sweep ran"))
    (tmp_path / "taken").write_text("a file")
    args = ["patch", "--model", "toy-induction", "--task", "induction", "--n", "4", "--site", "resid_pre"]
    for out in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        assert main([*args, "--out", str(out)]) == 2
        assert "taken" in capsys.readouterr().err
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o500)
        assert main([*args, "--out", str(tmp_path / "ro" / "x")]) == 2
        assert "not writable" in capsys.readouterr().err


# ------------------------------------------------------------------------------ item 12: the right words
def test_a_missing_wrong_id_is_named(tmp_path, tiny_llama):
    row = {k: v for k, v in GOOD_IDS.items() if k != "wrong_id"}
    for rows, line in (([row], 1), ([GOOD_IDS, row], 2)):
        with pytest.raises(TaskError, match=rf"w\.jsonl:{line}: missing key\(s\) \['wrong_id'\]") as err:
            load(str(_write(tmp_path / "w.jsonl", rows)), tiny_llama)
        assert "'clean'" not in str(err.value)


def test_a_multi_token_wrong_is_called_wrong(tmp_path, tok_model):
    path = _write(tmp_path / "m.jsonl", [{**TEXT, "wrong": " Maryanne-Louise"}])
    with pytest.raises(TaskError, match=r"m\.jsonl:1: wrong ' Maryanne-Louise' is not a single token"):
        load(str(path), tok_model)


def test_ablate_takes_a_single_label(toy, task):
    one = ik.patching.ablate(toy, task, "L0H0", "zero")
    assert torch.equal(one.scores, ik.patching.ablate(toy, task, ["L0H0"], "zero").scores)
    with pytest.raises(InterpkitError, match="components"):
        ik.patching.ablate(toy, task, 5, "zero")
