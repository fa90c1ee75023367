"""The activation store under an adversary: manifests that point elsewhere or lie about their
numbers, shards corrupted before a resume, two harvests into one folder, ``--overwrite`` next to a
user's files, a full disk at the manifest, and data files that are not UTF-8 (issue 14, section 5,
items 2, 3, 4, 8, 9, 10 and 11).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import interpkit.cache as ikc
from interpkit.cache import _manifest

SITES = ["L*.resid_post", "L1H2"]


def _data(n: int = 30, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 61, (int(k),), generator=g).tolist() for k in torch.randint(1, 25, (n,), generator=g)]


def _harvest(model, out: Path, **kw) -> ikc.ActivationStore:
    kw = {"shard_mb": 0.01, "batch_tokens": 64, "progress": False, **kw}
    return ikc.harvest(model, kw.pop("data", _data()), kw.pop("sites", SITES), out, **kw)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _Crash(Exception):
    pass


@pytest.fixture(scope="module")
def reference(native_tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "whole"
    assert _harvest(native_tiny, out).n_shards >= 4
    return out


@pytest.fixture
def copy(reference, tmp_path) -> Path:
    out = tmp_path / "store"
    shutil.copytree(reference, out)
    return out


def _edit(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


# ------------------------------------------------------------------------------ item 2: names
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "other-store", "subfolder"])
def test_a_manifest_cannot_point_outside_its_folder(copy, tmp_path, kind):
    other = tmp_path / "other"
    shutil.copytree(copy, other)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s" * 12345)
    target = {
        "dotdot": "../secret.bin",
        "absolute": str(secret),
        "other-store": "../other/shard-00001.safetensors",
        "subfolder": "sub/shard-00001.safetensors",
    }[kind]
    if kind == "other-store":  # a faithful copy of another store's shard: same size, same checksum
        (copy / "shard-00001.safetensors").unlink()
    _edit(copy, lambda m: m["shards"][1].update(file=target))
    with pytest.raises(ikc.CacheError, match=r"shard 1.*not a shard of this store") as err:
        ikc.ActivationStore(copy)
    assert "12345" not in str(err.value)  # no other file's size is disclosed


def test_a_symlinked_shard_is_refused(copy, tmp_path):
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.copyfile(copy / "shard-00002.safetensors", elsewhere)
    (copy / "shard-00002.safetensors").unlink()
    (copy / "shard-00002.safetensors").symlink_to(elsewhere)
    with pytest.raises(ikc.CacheError, match=r"shard-00002\.safetensors.*(symlink|regular file)"):
        ikc.ActivationStore(copy).verify()


def test_a_progress_record_cannot_point_outside(native_tiny, reference, tmp_path):
    out = tmp_path / "part"
    with pytest.raises(_Crash):
        _harvest(native_tiny, out, on_shard=lambda e: (_ for _ in ()).throw(_Crash()))
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(out / "shard-00000.safetensors", outside)
    (out / "shard-00000.safetensors").unlink()
    record = out / ".progress" / "shard-00000.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "file": "../outside.safetensors"}))
    redone = []
    _harvest(native_tiny, out, on_shard=lambda e: redone.append(e["index"]))
    assert redone[0] == 0 and _files(out) == _files(reference)


# ------------------------------------------------------------------------------ item 3: numbers
def _shift_token_start(m):
    m["shards"][1]["token_start"] += 5


def _shrink_shard(m):
    m["shards"][1]["n_tokens"] -= 3


def _huge_total(m):
    m["n_tokens"] = 10**12


def _drop_tokens(m):
    m["tokens"][0] = m["tokens"][0][:-1]


def _negative_bytes(m):
    m["shards"][0]["bytes"] = -1


def _string_count(m):
    m["n_examples"] = "30"


def _bad_dtype(m):
    m["dtype"] = "load"


def _bad_examples(m):
    m["shards"][2]["examples"] = [0, 3]


@pytest.mark.parametrize(
    "change",
    [
        _shift_token_start,
        _shrink_shard,
        _huge_total,
        _drop_tokens,
        _negative_bytes,
        _string_count,
        _bad_dtype,
        _bad_examples,
    ],
)
def test_the_manifest_numbers_are_checked_on_open(copy, change):
    _edit(copy, change)
    with pytest.raises(ikc.CacheError, match="manifest"):
        ikc.ActivationStore(copy)


def test_a_consistent_lie_is_caught_at_the_shard(copy):
    """n_tokens of shard 1 shrunk, with every sum adjusted to match: the shard's own header disagrees."""

    def lie(m):
        m["shards"][1]["n_tokens"] -= 1
        for s in m["shards"][2:]:
            s["token_start"] -= 1
        m["n_tokens"] -= 1
        first = m["shards"][1]["examples"][0]
        m["tokens"][first] = m["tokens"][first][:-1]

    _edit(copy, lie)
    with pytest.raises(ikc.CacheError, match=r"shard-00001\.safetensors"):
        store = ikc.ActivationStore(copy)
        store.get("L0.resid_post")
    with pytest.raises(ikc.CacheError, match=r"shard-00001\.safetensors"):
        ikc.ActivationStore(copy).verify()


def test_verify_checks_the_manifest_tokens_against_the_shards(copy):
    def swap(m):
        m["tokens"][0][0] = (m["tokens"][0][0] + 1) % 61

    _edit(copy, swap)
    store = ikc.ActivationStore(copy)  # sums still agree: only verify reads every shard
    with pytest.raises(ikc.CacheError, match="token ids of examples 0"):
        store.verify()


def test_a_malformed_manifest_is_a_cache_error(copy):
    for text in ('{"format": "interpkit-activations/1", "status": "complete"}', "[1, 2]", "{", "\xff"):
        (copy / "manifest.json").write_text(text, encoding="latin-1")
        with pytest.raises(ikc.CacheError):
            ikc.ActivationStore(copy)
    (copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ikc.CacheError):
        ikc.ActivationStore(copy)


# ------------------------------------------------------------------------------ item 4: resume checks
def test_resume_redoes_a_shard_corrupted_while_interrupted(native_tiny, reference, tmp_path):
    out = tmp_path / "part"
    calls = []

    def crash_after_two(entry):
        calls.append(entry)
        if len(calls) == 2:
            raise _Crash

    with pytest.raises(_Crash):
        _harvest(native_tiny, out, on_shard=crash_after_two)
    shard = out / "shard-00000.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0x55  # same size, different bytes
    shard.write_bytes(bytes(raw))
    redone = []
    store = _harvest(native_tiny, out, on_shard=lambda e: redone.append(e["index"]))
    assert redone[0] == 0 and 1 not in redone
    assert _files(out) == _files(reference)
    store.verify()


# ------------------------------------------------------------------------------ item 8: one harvest at a time
def _child(fn) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        except BaseException as exc:  # reported through the exit code
            os.write(2, f"child: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(code)
    return pid


def test_a_second_identical_harvest_is_refused_while_one_runs(native_tiny, reference, tmp_path):
    out = tmp_path / "acts"
    started_r, started_w = os.pipe()
    go_r, go_w = os.pipe()

    def first():
        def pause(entry):
            if entry["index"] == 0:
                os.write(started_w, b"1")
                os.read(go_r, 1)

        _harvest(native_tiny, out, on_shard=pause)

    pid = _child(first)
    try:
        assert os.read(started_r, 1) == b"1"
        with pytest.raises(ikc.CacheError, match="another harvest"):
            _harvest(native_tiny, out)
    finally:
        os.write(go_w, b"1")
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert _files(out) == _files(reference)


def test_a_killed_harvest_leaves_no_stale_lock(native_tiny, reference, tmp_path):
    out = tmp_path / "acts"
    started_r, started_w = os.pipe()

    def first():
        def die(entry):
            if entry["index"] == 1:
                os.write(started_w, b"1")
                os.kill(os.getpid(), signal.SIGKILL)

        _harvest(native_tiny, out, on_shard=die)

    pid = _child(first)
    assert os.read(started_r, 1) == b"1"
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    store = _harvest(native_tiny, out)
    assert _files(out) == _files(reference)
    store.verify()


# ------------------------------------------------------------------------------ item 9: overwrite
def test_overwrite_deletes_only_what_the_manifest_names(native_tiny, copy):
    mine = {"shard-notes.txt": b"my notes", "shard-backup.safetensors": b"keep", ".shard-mine": b"x"}
    for name, data in mine.items():
        (copy / name).write_bytes(data)
    store = _harvest(native_tiny, copy, sites=["L0.resid_pre"], overwrite=True, data=_data(6))
    assert store.sites == ["blocks.0.hook_resid_pre"]
    for name, data in mine.items():
        assert (copy / name).read_bytes() == data
    names = {p.name for p in copy.iterdir()} - set(mine)
    assert names == {"manifest.json", *(e["file"] for e in store.manifest["shards"])}
    store.verify()


# ------------------------------------------------------------------------------ item 11: disk full, bad bytes
def test_disk_full_at_the_final_manifest(native_tiny, reference, tmp_path, monkeypatch):
    real = _manifest.write_json

    def full(path, data, *args, **kw):
        if data.get("status") == "complete":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, *args, **kw)

    monkeypatch.setattr(_manifest, "write_json", full)
    out = tmp_path / "acts"
    with pytest.raises(ikc.CacheError, match=r"manifest.*No space left.*rerun"):
        _harvest(native_tiny, out)
    monkeypatch.undo()
    _harvest(native_tiny, out, on_shard=lambda e: pytest.fail("a finished shard was recomputed"))
    assert _files(out) == _files(reference)


@pytest.fixture(scope="module")
def tok_model(embedded_tokenizer):
    from tiny_models import tiny_llama_with_tokenizer

    return tiny_llama_with_tokenizer(embedded_tokenizer)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_non_utf8_line_is_named(tok_model, tmp_path, suffix):
    lines = [b"first line", b"second line", b"third \xff line"]
    if suffix == ".jsonl":
        lines = [b'{"text": "' + line + b'"}' for line in lines]
    data = tmp_path / f"data{suffix}"
    data.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ikc.CacheError, match=r"line 3.*UTF-8"):
        ikc.harvest(tok_model, data, ["L0.resid_post"], tmp_path / "a", progress=False)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_byte_order_mark_is_not_data(tok_model, tmp_path, suffix):
    texts = ["Hello world.", "Second line."]
    body = "\n".join(json.dumps({"text": t}) if suffix == ".jsonl" else t for t in texts) + "\n"
    (tmp_path / f"bom{suffix}").write_bytes(b"\xef\xbb\xbf" + body.encode())
    (tmp_path / f"plain{suffix}").write_bytes(body.encode())
    a = ikc.harvest(tok_model, tmp_path / f"bom{suffix}", ["L0.resid_post"], tmp_path / "a", progress=False)
    b = ikc.harvest(tok_model, tmp_path / f"plain{suffix}", ["L0.resid_post"], tmp_path / "b", progress=False)
    assert a.tokens.tolist() == b.tokens.tolist()


def test_bad_token_id_rows_are_refused(native_tiny, tmp_path):
    for bad in ([[1, True, 2]], [[1, 2.7, 3]], [{1: 2, 3: 4}], [[1, "2"]], [torch.tensor([1.0, 2.0])]):
        with pytest.raises(ikc.CacheError, match="example 0"):
            _harvest(native_tiny, tmp_path / "a", data=bad)


@pytest.mark.parametrize("bad", [0, -3, True, "4", 2.0])
def test_batch_sizes_must_be_positive_ints(native_tiny, copy, tmp_path, bad):
    with pytest.raises(ikc.CacheError, match="batch_size"):
        _harvest(native_tiny, tmp_path / "a", batch_size=bad)
    store = ikc.ActivationStore(copy)
    with pytest.raises(ikc.CacheError, match="batch_size"):
        next(store.iter_batches(bad))
