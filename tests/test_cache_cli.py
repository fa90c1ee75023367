"""Harvest data sources (text, JSONL, datasets folders) and the ``cache`` / ``cache-info`` commands."""

from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch

import interpkit.cache as ikc
from interpkit.cache.cli import add_parsers, main
from interpkit.models import save_native


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok_model(embedded_tokenizer):
    from tiny_models import tiny_llama_with_tokenizer

    return tiny_llama_with_tokenizer(embedded_tokenizer)


TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "One, two, three, four."]


def _tokens_of(model, texts):
    return [model.tokenizer.encode(t, add_special_tokens=False) for t in texts]


def test_text_and_jsonl_files(tok_model, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join([TEXTS[0], "", TEXTS[1], "   ", TEXTS[2]]) + "\n")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(TEXTS)))
    a = ikc.harvest(tok_model, tmp_path / "t.txt", ["L1.resid_pre"], tmp_path / "a", progress=False)
    b = ikc.harvest(tok_model, str(tmp_path / "t.jsonl"), ["L1.resid_pre"], tmp_path / "b", progress=False)
    c = ikc.harvest(tok_model, TEXTS, ["L1.resid_pre"], tmp_path / "c", progress=False)
    expected = _tokens_of(tok_model, TEXTS)
    for store in (a, b, c):
        assert store.n_examples == 3 and store.example(1)["tokens"].tolist() == expected[1]
        torch.testing.assert_close(store.get("L1.resid_pre"), c.get("L1.resid_pre"))
    (tmp_path / "bad.jsonl").write_text('{"txt": "x"}\n')
    with pytest.raises(ikc.CacheError, match="line 1: no 'text' field"):
        ikc.harvest(tok_model, tmp_path / "bad.jsonl", ["L1.resid_pre"], tmp_path / "d", progress=False)
    with pytest.raises(ikc.CacheError, match="not an existing file"):
        ikc.harvest(tok_model, tmp_path / "missing.txt", ["L1.resid_pre"], tmp_path / "d", progress=False)


def test_datasets_folder(tok_model, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(tmp_path / "ds"))
    store = ikc.harvest(tok_model, tmp_path / "ds", ["L0.resid_post"], tmp_path / "a", progress=False)
    assert store.example(2)["tokens"].tolist() == _tokens_of(tok_model, TEXTS)[2]
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the optional package were not installed
    with pytest.raises(ikc.CacheError, match="needs the optional 'datasets' package"):
        ikc.harvest(tok_model, tmp_path / "ds", ["L0.resid_post"], tmp_path / "b", progress=False)


@pytest.fixture(scope="module")
def native_dir(native_tiny, tmp_path_factory):
    return save_native(native_tiny, tmp_path_factory.mktemp("m") / "native")


def test_cache_and_cache_info_commands(native_dir, tmp_path, capsys):
    rows = [{"ids": list(range(i, i + 5 + i))} for i in range(12)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "acts"
    argv = ["cache", "--model", str(native_dir), "--device", "cpu", "--data", str(tmp_path / "d.jsonl")]
    assert main([*argv, "--sites", "L0.resid_post,L1H1", "--out", str(out), "--no-progress"]) == 0
    assert "wrote 126 tokens of 12 examples" in capsys.readouterr().out
    assert main(["cache-info", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "checksums  ok" in text and "L1H1" in text and "126 in 12 examples" in text
    assert main(["cache-info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_tokens"] == 126
    assert main([*argv, "--sites", "L0.resid_pst", "--out", str(tmp_path / "x")]) == 2
    assert "closest forms: L0.resid_post" in capsys.readouterr().err
    assert main([*argv, "--sites", "L1.resid_post", "--out", str(out), "--no-progress"]) == 2
    assert "refusing to mix" in capsys.readouterr().err
    assert main(["cache-info", str(tmp_path)]) == 2


def test_add_parsers_uses_the_given_model_options():
    parser = argparse.ArgumentParser()
    seen = []

    def with_model(p):
        seen.append(p.prog)
        p.add_argument("--model", default="m")
        p.add_argument("--device", default=None)
        p.add_argument("--dtype", default=None)

    add_parsers(parser.add_subparsers(dest="command"), with_model)
    args = parser.parse_args(["cache", "--data", "f", "--sites", "a", "b,c", "--out", "o"])
    assert len(seen) == 1 and args.model == "m" and args.store_dtype == "float16" and callable(args.fn)
    assert parser.parse_args(["cache-info", "o"]).fn.__name__ == "cmd_cache_info"
