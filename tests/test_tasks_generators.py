"""The text task generators (IOI, factual, greater-than) on a tiny random model with the embedded tokenizer."""

from __future__ import annotations

import copy
import json
import string
from collections import Counter

import pytest
import torch

import interpkit as ik
from interpkit.errors import TaskError
from interpkit.models import Model, boot_native
from interpkit.tasks.factual import factual, read_facts
from interpkit.tasks.greater_than import NOUNS, greater_than, year_style
from interpkit.tasks.ioi import TEMPLATES, ioi, single_token_names


@pytest.fixture(scope="session")
def text_model(embedded_tokenizer) -> Model:
    """A random-init Llama (hidden size 32) over the embedded model's full vocabulary and tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from interpkit.models._load import wrap_hf_model

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    return wrap_hf_model(LlamaForCausalLM(config).eval(), embedded_tokenizer, spec="tiny")


@pytest.fixture(scope="session")
def no_tokenizer() -> Model:
    fields = {"d_model": 16, "d_head": 4, "n_layers": 1, "n_ctx": 32, "n_heads": 4, "d_vocab": 50, "d_mlp": 32,
              "act_fn": "gelu", "normalization_type": "LN"}  # fmt: skip
    return boot_native(fields, seed=0, spec="no-tokenizer")


def _word_level_model(text_model: Model, pattern: str, texts: list[str]) -> Model:
    """``text_model`` with a word-level tokenizer splitting on ``pattern`` (to try other year splits)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    pieces = sorted({p for t in texts for p, _ in splitter.pre_tokenize_str(t)})
    vocab = {"[UNK]": 0, **{p: i + 1 for i, p in enumerate(pieces)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = splitter
    other = copy.copy(text_model)
    other.tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    return other


def _greater_than_texts() -> list[str]:
    years = [f"{yy:02d}" for yy in range(100)]
    return [f"The {noun} lasted from the year 17{yy} to the year 17" for noun in NOUNS for yy in years] + years


def _encode(model: Model, text: str) -> list[int]:
    return model.tokenizer.encode(text, add_special_tokens=False)


def _check_common(model: Model, task: ik.Task, n: int) -> None:
    assert len(task) == n and task.clean.shape == task.corrupt.shape == task.attention_mask.shape
    assert task.answer.shape == task.wrong.shape == (n,)
    assert len(task.clean_text) == len(task.corrupt_text) == n
    for i in range(n):
        length = len(_encode(model, task.clean_text[i]))
        assert len(_encode(model, task.corrupt_text[i])) == length == int(task.attention_mask[i].sum())
        assert task.clean[i, :length].tolist() == _encode(model, task.clean_text[i])
        assert int(task.answer_pos[i]) == length - 1
        for token in (int(task.answer[i]), int(task.wrong[i])):
            assert _encode(model, model.tokenizer.decode([token])) == [token]
    assert bool((task.answer != task.wrong).all())


# ---------------------------------------------------------------------------- IOI
def test_ioi_shapes_and_lengths(text_model):
    task = ioi(text_model, n=12, seed=0)
    _check_common(text_model, task, 12)
    assert task.name == "ioi" and task.metric == "logit_diff" and task.params["corruption"] == "ABC"
    assert len(task.params["order"]) == len(task.params["template_index"]) == 12


def test_ioi_names_are_single_tokens(text_model):
    names = single_token_names(text_model)
    assert len(names) >= 20 and "Mary" in names and "John" in names
    assert all(len(_encode(text_model, " " + name)) == 1 for name in names)


@pytest.mark.parametrize(("n", "expected"), [(10, (5, 5)), (7, (4, 3))])
def test_ioi_orders_balanced_and_real(text_model, n, expected):
    task = ioi(text_model, n=n, seed=3)
    counts = Counter(task.params["order"])
    assert (counts["ABBA"], counts["BABA"]) == expected
    for i, order in enumerate(task.params["order"]):
        row = task.clean[i].tolist()
        io, s = int(task.answer[i]), int(task.wrong[i])
        assert row.count(io) == 1 and row.count(s) == 2
        first_s = row.index(s)
        assert (row.index(io) < first_s) == (order == "ABBA")
    only = ioi(text_model, n=6, seed=0, templates="BABA")
    assert only.params["order"] == ["BABA"] * 6 and only.params["templates"] == "BABA"


def test_ioi_abc_corruption_has_three_new_names(text_model):
    task = ioi(text_model, n=16, seed=1)
    name_ids = {_encode(text_model, " " + name)[0] for name in single_token_names(text_model)}
    for i in range(len(task)):
        clean_names = [t for t in task.clean[i].tolist() if t in name_ids]
        corrupt_names = [t for t in task.corrupt[i].tolist() if t in name_ids]
        assert sorted(clean_names) == sorted([int(task.answer[i]), int(task.wrong[i]), int(task.wrong[i])])
        assert len(corrupt_names) == len(set(corrupt_names)) == 3
        assert not set(corrupt_names) & {int(task.answer[i]), int(task.wrong[i])}
        # Same template, place and object: only the three name positions differ.
        assert int((task.clean[i] != task.corrupt[i]).sum()) == 3


def test_ioi_custom_templates(text_model):
    task = ioi(text_model, n=4, seed=0, templates=[0, "Later, {A} and {B} met. {S} waved at"])
    assert task.params["templates"] == [TEMPLATES[0], "Later, {A} and {B} met. {S} waved at"]
    assert any(t.startswith("Later, ") for t in task.clean_text)


def test_ioi_bad_parameters(text_model):
    with pytest.raises(TaskError, match="n >= 1"):
        ioi(text_model, n=0)
    with pytest.raises(TaskError, match="unknown ioi templates value 'ABAB'.*closest"):
        ioi(text_model, templates="ABAB")
    with pytest.raises(TaskError, match="index 99 is out of range"):
        ioi(text_model, templates=[99])
    with pytest.raises(TaskError, match=r"missing \['S'\]"):
        ioi(text_model, templates=["When {A} and {B} left, he said to"])
    with pytest.raises(TaskError, match="must follow a space"):
        ioi(text_model, templates=["{A} and {B} left, {S} said to"])
    with pytest.raises(TaskError, match="non-empty list"):
        ioi(text_model, templates=[])
    with pytest.raises(TaskError, match="at least 5 first names.*only 2"):
        ioi(text_model, names=["Mary", "John", "Cynthia"])


# ---------------------------------------------------------------------------- factual
def test_factual_all_facts(text_model):
    task = factual(text_model)
    params = task.params
    assert params["facts_total"] == len(read_facts()) and params["facts_kept"] == len(task) >= 40
    assert (
        params["facts_total"]
        == params["facts_kept"] + params["dropped_multi_token_object"] + params["dropped_no_partner"]
    )
    _check_common(text_model, task, len(task))
    facts = read_facts()
    by_prompt = {f["relation"].replace("{}", f["subject"]): f for f in facts}
    for clean, corrupt, answer, wrong in zip(task.clean_text, task.corrupt_text, task.answer, task.wrong, strict=True):
        fact, other = by_prompt[clean], by_prompt[corrupt]
        assert fact["relation"] == other["relation"] and fact["subject"] != other["subject"]
        assert int(answer) == _encode(text_model, fact["object"])[0]
        assert int(wrong) == _encode(text_model, other["object"])[0]


def test_factual_sampling_and_errors(text_model, tmp_path):
    task = factual(text_model, n=5, seed=0)
    assert len(task) == 5 and task.params["n"] == 5
    with pytest.raises(TaskError, match="cannot give n=1000 examples: .* of .* facts are usable"):
        factual(text_model, n=1000)
    with pytest.raises(TaskError, match="n >= 1"):
        factual(text_model, n=0)
    rows = [
        {"subject": "France", "relation": "The capital of {} is", "object": " Paris"},
        {"subject": "Germany", "relation": "The capital of {} is", "object": " Berlin"},
        {"subject": "Thailand", "relation": "The capital of {} is", "object": " Bangkok"},  # object: 2 tokens
        {"subject": "France", "relation": "People in {} speak", "object": " French"},  # no partner
    ]
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    mine = factual(text_model, facts=path)
    assert len(mine) == 2 and mine.params["dropped_multi_token_object"] == 1 and mine.params["dropped_no_partner"] == 1
    assert mine.corrupt_text == ["The capital of Germany is", "The capital of France is"]
    path.write_text(json.dumps({"subject": "x", "relation": "no slot", "object": " y"}) + "\n")
    with pytest.raises(TaskError, match=r"facts\.jsonl:1: relation 'no slot'"):
        factual(text_model, facts=path)


# ---------------------------------------------------------------------------- greater-than
def test_greater_than_one_digit_style(text_model):
    assert year_style(text_model.tokenizer) == "one-digit"
    task = greater_than(text_model, n=24, seed=0)
    _check_common(text_model, task, 24)
    assert task.params["style"] == "one-digit" and len(set(task.clean_text)) > 1
    assert len({t.split()[1] for t in task.clean_text}) > 1  # nouns vary
    for i, yy in enumerate(task.params["yy"]):
        assert task.clean_text[i].endswith(f"the year 17{yy:02d} to the year 17")
        assert task.corrupt_text[i] == task.clean_text[i].replace(f"17{yy:02d}", "1701", 1)
        tens = yy // 10
        assert 2 <= tens <= 8
        decode = text_model.tokenizer.decode
        assert (decode([int(task.answer[i])]), decode([int(task.wrong[i])])) == (str(tens + 1), str(tens - 1))


def test_greater_than_two_digit_style(text_model):
    model = _word_level_model(text_model, r" ?\d\d| ?\d| ?[A-Za-z]+|\S", _greater_than_texts())
    assert year_style(model.tokenizer) == "two-digit"
    task = greater_than(model, n=16, seed=0)
    _check_common(model, task, 16)
    assert task.params["style"] == "two-digit"
    for i, yy in enumerate(task.params["yy"]):
        answer = model.tokenizer.convert_ids_to_tokens(int(task.answer[i]))
        wrong = model.tokenizer.convert_ids_to_tokens(int(task.wrong[i]))
        assert (answer, wrong) == (f"{yy + 1:02d}", f"{yy - 1:02d}")


def test_greater_than_other_year_split_is_refused(text_model):
    model = _word_level_model(text_model, r" ?\d{3}| ?\d| ?[A-Za-z]+|\S", _greater_than_texts())
    with pytest.raises(TaskError, match="splits ' 1732' into"):
        greater_than(model, n=2)


# ---------------------------------------------------------------------------- all three
GENERATORS = [
    pytest.param(lambda m, **kw: ioi(m, n=8, **kw), id="ioi"),
    pytest.param(lambda m, **kw: factual(m, n=12, **kw), id="factual"),
    pytest.param(lambda m, **kw: greater_than(m, n=8, **kw), id="greater-than"),
]


@pytest.mark.parametrize("make", GENERATORS)
def test_seeded(text_model, make):
    a, b, c = make(text_model, seed=0), make(text_model, seed=0), make(text_model, seed=1)
    assert a.hash() == b.hash() and a.clean_text == b.clean_text
    assert a.hash() != c.hash() and a.clean_text != c.clean_text


@pytest.mark.parametrize("name", ["ioi", "factual", "greater-than"])
def test_generators_need_a_tokenizer(no_tokenizer, name):
    with pytest.raises(TaskError, match=f"the {name} task .* needs a tokenizer; model 'no-tokenizer' has none"):
        ik.tasks.load(name, no_tokenizer)


@pytest.mark.parametrize("name", ["ioi", "greater-than"])
def test_generators_reject_n_zero_through_load(text_model, name):
    with pytest.raises(TaskError, match="n >= 1"):
        ik.tasks.load(name, text_model, n=0)


def test_registry_builds_each(text_model):
    for name, kw in [("ioi", {"n": 4}), ("factual", {"n": 4}), ("greater-than", {"n": 4})]:
        task = ik.tasks.load(name, text_model, seed=2, **kw)
        assert len(task) == 4 and task.name == name
        assert all(set(t) <= set(string.printable) for t in task.clean_text)
