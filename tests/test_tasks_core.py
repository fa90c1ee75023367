"""Task construction, JSONL files and the built-in induction task (tiny models)."""

from __future__ import annotations

import json

import pytest
import torch

import interpkit as ik
from interpkit.errors import TaskError
from interpkit.tasks import from_token_lists, load, load_jsonl, save_jsonl
from tiny_models import tiny_llama_with_tokenizer


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_from_token_lists_pads_right():
    task = from_token_lists("t", None, [[1, 2, 3], [4, 5]], [[3, 2, 1], [5, 4]], [7, 8], [9, 10])
    assert task.clean.tolist() == [[1, 2, 3], [4, 5, 0]]
    assert task.answer_pos.tolist() == [2, 1]
    assert task.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert not task.same_positions()
    sub = task.subset([1])
    assert sub.clean.tolist() == [[4, 5]] and sub.same_positions()


def test_contract_errors(tiny_llama):
    with pytest.raises(TaskError, match="example 1.*3 tokens but corrupt has 2"):
        from_token_lists("t", None, [[1], [1, 2, 3]], [[1], [1, 2]], [1, 1], [2, 2])
    with pytest.raises(TaskError, match="empty"):
        from_token_lists("t", None, [], [], [], [])
    with pytest.raises(TaskError, match="n_ctx=64"):
        from_token_lists("t", tiny_llama, [[1] * 65], [[2] * 65], [1], [2])
    with pytest.raises(TaskError, match=r"\[0, 97\)"):
        from_token_lists("t", tiny_llama, [[1, 300]], [[1, 2]], [1], [2])


def test_jsonl_ids_roundtrip(tmp_path, tiny_llama):
    path = _write(
        tmp_path / "t.jsonl",
        [
            {"clean_ids": [1, 2, 3], "corrupt_ids": [1, 4, 3], "answer_id": 5, "wrong_id": 6, "metric": "logprob"},
            "",
            {"clean_ids": [7, 8], "corrupt_ids": [9, 8], "answer_id": 5, "wrong_id": 6},
        ],
    )
    task = load(str(path), tiny_llama)
    assert len(task) == 2 and task.metric == "logprob" and task.name == "t"
    again = load_jsonl(save_jsonl(task, tmp_path / "again.jsonl"), tiny_llama)
    assert again.hash() == task.hash()


def test_jsonl_errors_name_the_line(tmp_path, tiny_llama):
    good = {"clean_ids": [1, 2], "corrupt_ids": [1, 3], "answer_id": 5, "wrong_id": 6}
    bad_json = _write(tmp_path / "a.jsonl", [good, good, '{"clean_ids": [1, 2'])
    with pytest.raises(TaskError, match=r"a\.jsonl:3: malformed JSON"):
        load(str(bad_json), tiny_llama)
    unequal = _write(tmp_path / "b.jsonl", [good, {**good, "corrupt_ids": [1, 2, 3]}])
    with pytest.raises(TaskError, match=r"b\.jsonl:2.*2 tokens but corrupt has 3"):
        load(str(unequal), tiny_llama)
    missing = _write(tmp_path / "c.jsonl", [good, {"clean_ids": [1]}])
    with pytest.raises(TaskError, match=r"c\.jsonl:2: missing key"):
        load(str(missing), tiny_llama)
    (tmp_path / "d.jsonl").write_text("\n\n")
    with pytest.raises(TaskError, match="empty"):
        load(str(tmp_path / "d.jsonl"), tiny_llama)
    with pytest.raises(TaskError, match="does not exist"):
        load(str(tmp_path / "nope.jsonl"), tiny_llama)
    not_obj = _write(tmp_path / "e.jsonl", ["[1, 2]"])
    with pytest.raises(TaskError, match=r"e\.jsonl:1: each line must be a JSON object"):
        load(str(not_obj), tiny_llama)


def test_jsonl_text_needs_single_token_answers(tmp_path, embedded_tokenizer):
    model = tiny_llama_with_tokenizer(embedded_tokenizer)
    ok = {
        "clean": "When Mary and John went out, John gave it to",
        "corrupt": "When Anna and Paul went out, Paul gave it to",
        "answer": " Mary",
        "wrong": " John",
    }
    task = load(str(_write(tmp_path / "ok.jsonl", [ok])), model)
    assert task.clean_text == [ok["clean"]] and task.answer.tolist() == [model.to_single_token(" Mary")]
    multi = _write(tmp_path / "multi.jsonl", [ok, {**ok, "answer": " Maryanne-Louise"}])
    with pytest.raises(TaskError, match=r"multi\.jsonl:2.*' Maryanne-Louise' is not a single token"):
        load(str(multi), model)
    longer = _write(tmp_path / "long.jsonl", [{**ok, "corrupt": ok["corrupt"] + " now"}])
    with pytest.raises(TaskError, match=r"long\.jsonl:1"):
        load(str(longer), model)


def test_induction_task(toy):
    task = ik.tasks.load("induction", toy, n=12, length=8, seed=3)
    assert task.clean.shape == (12, 15) and task.same_positions()
    assert torch.equal(task.clean[:, 8:], task.corrupt[:, 8:])
    assert torch.equal(task.answer, task.clean[:, 7])
    assert torch.equal(task.wrong, task.corrupt[:, 7])
    assert (task.clean[:, :8] != task.corrupt[:, :8]).all()
    again = ik.tasks.load("induction", toy, n=12, length=8, seed=3)
    other = ik.tasks.load("induction", toy, n=12, length=8, seed=4)
    assert again.hash() == task.hash() != other.hash()


def test_induction_metric_on_toy(toy):
    task = ik.tasks.load("induction", toy, n=32, seed=0)
    values = ik.metrics.clean_and_corrupt(toy, task)
    assert values["clean"] > 3.0, values  # the toy copies the repeated token
    # In the corrupt prompt the current token has no earlier copy: nothing to copy, no preference.
    assert abs(values["corrupt"]) < 1.0, values


def test_load_errors(toy):
    with pytest.raises(TaskError, match="induction"):
        load("inductoin", toy)
    with pytest.raises(TaskError, match="does not take parameter"):
        load("induction", toy, flavour=3)
    with pytest.raises(TaskError, match="n >= 1"):
        load("induction", toy, n=0)
    with pytest.raises(TaskError, match="logit_diff"):
        load("induction", toy, metric="acc")
