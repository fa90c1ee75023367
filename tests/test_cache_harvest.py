"""``ik.cache.harvest`` and ``ActivationStore`` on a tiny native model: round trip, resume, bad input."""

from __future__ import annotations

import errno
import itertools
import json
from pathlib import Path

import pytest
import torch

import interpkit.cache as ikc
from interpkit.cache import _data
from interpkit.errors import SiteError

SITES = ["L*.resid_post", "L1H2", "ln_final.hook_scale"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data_ids(n=40, seed=0, longest=32):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest + 1, (n,), generator=g).tolist()
    return [torch.randint(0, 61, (k,), generator=g).tolist() for k in lengths]


def _harvest(model, data, out, **kw):
    kw = {"shard_mb": 0.04, "batch_tokens": 96, "progress": False, **kw}
    return ikc.harvest(model, data, kw.pop("sites", SITES), out, **kw)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def data():
    return _data_ids()


@pytest.fixture(scope="module")
def store(native_tiny, data, tmp_path_factory):
    return _harvest(native_tiny, data, tmp_path_factory.mktemp("h") / "acts", dtype="float32")


# ---------------------------------------------------------------------------- round trip
def test_store_holds_what_run_gives(native_tiny, data, store):
    assert store.n_shards >= 3 and len(store) == sum(map(len, data)) and store.n_examples == len(data)
    assert store.sites == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "L1H2", "ln_final.hook_scale"]
    assert store.shape("L1H2") == (8,) and store.dtype == torch.float32
    for i in (0, 17, 39):
        ex = store.example(i)
        cache = ikc.run(native_tiny, [data[i]], SITES)
        assert ex["tokens"].tolist() == data[i] and ex["position"].tolist() == list(range(len(data[i])))
        for site in ("L0.resid_post", "L1.resid_post", "L1H2"):
            key = store._key(site)
            torch.testing.assert_close(ex[key], cache[site][0], atol=1e-5, rtol=1e-4)
    assert store.tokens.tolist() == [t for ex in data for t in ex]
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["tokens"] == data and manifest["model"]["spec"] == "native-tiny"
    assert [s["key"] for s in manifest["sites"]] == store.sites
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    store.verify()


def test_random_access_batches_and_selection(store):
    everything = store.get("L1.resid_post")
    assert everything.shape == (len(store), 32)
    index = torch.tensor([len(store) - 1, 0, 150, 3, 150])
    torch.testing.assert_close(store.get("blocks.1.hook_resid_post", index), everything[index])
    torch.testing.assert_close(store.get("L1.resid_post", -1), everything[-1])
    torch.testing.assert_close(store[5:300]["blocks.1.hook_resid_post"], everything[5:300])
    assert store[7]["example"].item() == int(store.get("example", 7))
    batches = list(store.iter_batches(100, sites=["L1H2"]))
    assert [len(b["tokens"]) for b in batches][:-1] == [100] * (len(batches) - 1)
    assert set(batches[0]) == {"L1H2", "tokens", "example", "position"}
    torch.testing.assert_close(torch.cat([b["L1H2"] for b in batches]), store.get("L1H2"))
    view = store.select(["L0.resid_post"])
    assert view.sites == ["blocks.0.hook_resid_post"] and len(view) == len(store)
    with pytest.raises(ikc.CacheError, match="closest"):
        store.get("L1.resid_pos")
    with pytest.raises(ikc.CacheError, match="out of range"):
        store.get("L1H2", len(store))
    with pytest.raises(ikc.CacheError, match="store.get"):
        store["L1H2"]


def test_plan_is_deterministic_and_keeps_examples_whole():
    examples = _data_ids(30)
    shards = list(_data.plan(iter(examples), batch_size=None, batch_tokens=64, shard_tokens=100))
    assert [ex for s in shards for b in s.batches for ex in b] == examples
    assert all(len(b) * max(map(len, b)) <= 64 or len(b) == 1 for s in shards for b in s.batches)
    assert all(s.n_tokens >= 100 for s in shards[:-1])
    starts = [0, *itertools.accumulate(s.n_examples for s in shards)][:-1]
    assert [s.first_example for s in shards] == starts
    again = list(_data.plan(iter(examples), batch_size=None, batch_tokens=64, shard_tokens=100))
    assert [s.tokens_sha256() for s in again] == [s.tokens_sha256() for s in shards]
    capped = list(_data.plan(iter(examples), batch_size=2, batch_tokens=10**6, shard_tokens=1))
    assert all(len(b) <= 2 for s in capped for b in s.batches)


def test_writer_is_plain_safetensors(tmp_path):
    from safetensors.torch import load_file

    from interpkit.cache._safetensors import file_sha256, write_safetensors

    tensors = {
        "a": torch.randn(5, 3, dtype=torch.bfloat16),
        "b": torch.arange(7),
        "c": torch.randn(4, 2).half(),
        "empty": torch.empty(0, 3),
    }
    sha, size = write_safetensors(tmp_path / "x.safetensors", tensors, {"k": "v"})
    loaded = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert sha == file_sha256(tmp_path / "x.safetensors") and size == (tmp_path / "x.safetensors").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


# ---------------------------------------------------------------------------- resume
class _Crash(Exception):
    pass


def test_resume_after_a_crash_gives_the_same_store(native_tiny, data, tmp_path):
    whole = _harvest(native_tiny, data, tmp_path / "whole")
    n = whole.n_shards
    assert n >= 3
    calls = []

    def crash_after_two(entry):
        calls.append(entry["index"])
        if len(calls) == 2:
            raise _Crash

    with pytest.raises(_Crash):
        _harvest(native_tiny, data, tmp_path / "part", on_shard=crash_after_two)
    manifest = json.loads((tmp_path / "part" / "manifest.json").read_text())
    assert manifest["status"] == "in_progress"
    with pytest.raises(ikc.CacheError, match="incomplete"):
        ikc.ActivationStore(tmp_path / "part")
    # a kill in the middle of writing shard 2 leaves a temporary file behind, never a shard
    (tmp_path / "part" / ".shard-00002.safetensors.tmp-999").write_bytes(b"half a shard")
    resumed = []
    store = _harvest(native_tiny, data, tmp_path / "part", on_shard=lambda e: resumed.append(e["index"]))
    assert resumed == list(range(2, n))  # the two finished shards were not recomputed
    assert _files(tmp_path / "part") == _files(tmp_path / "whole")  # byte for byte, manifest included
    store.verify()


def test_resume_redoes_a_shard_without_its_record(native_tiny, data, tmp_path):
    def stop_at_first(entry):
        raise _Crash

    with pytest.raises(_Crash):
        _harvest(native_tiny, data, tmp_path / "a", on_shard=stop_at_first)
    (tmp_path / "a" / ".progress" / "shard-00000.json").unlink()  # killed between shard and record
    redone = []
    _harvest(native_tiny, data, tmp_path / "a", on_shard=lambda e: redone.append(e["index"]))
    assert redone[0] == 0
    assert _files(tmp_path / "a") == _files(_harvest(native_tiny, data, tmp_path / "b").path)


def test_rerun_of_other_data_is_refused(native_tiny, data, tmp_path):
    with pytest.raises(_Crash):
        _harvest(native_tiny, data, tmp_path / "a", on_shard=lambda e: (_ for _ in ()).throw(_Crash()))
    with pytest.raises(ikc.CacheError, match="data differs"):
        _harvest(native_tiny, _data_ids(seed=1), tmp_path / "a")
    done = _harvest(native_tiny, data, tmp_path / "b")
    before = _files(tmp_path / "b")
    again = _harvest(native_tiny, data, tmp_path / "b", on_shard=lambda e: pytest.fail("recomputed a shard"))
    assert len(again) == len(done) and _files(tmp_path / "b") == before
    for other in (data[:-5], data + data[:20]):
        with pytest.raises(ikc.CacheError, match=r"data (differs|than given)"):
            _harvest(native_tiny, other, tmp_path / "b")


# ---------------------------------------------------------------------------- bad input
def test_refuses_a_folder_holding_something_else(native_tiny, tiny_gpt2, data, tmp_path):
    _harvest(native_tiny, data[:10], tmp_path / "a")
    with pytest.raises(ikc.CacheError, match=r"different harvest \(sites"):
        _harvest(native_tiny, data[:10], tmp_path / "a", sites=["L0.resid_pre"])
    with pytest.raises(ikc.CacheError, match=r"different harvest \(model"):
        _harvest(tiny_gpt2, data[:10], tmp_path / "a", sites=SITES)
    with pytest.raises(ikc.CacheError, match="dtype"):
        _harvest(native_tiny, data[:10], tmp_path / "a", dtype="float32")
    store = _harvest(native_tiny, data[:10], tmp_path / "a", sites=["L0.resid_pre"], overwrite=True)
    assert store.sites == ["blocks.0.hook_resid_pre"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ikc.CacheError, match="not empty"):
        _harvest(native_tiny, data, tmp_path / "other")


def test_bad_sites_and_arguments(native_tiny, data, tmp_path):
    with pytest.raises(SiteError, match="closest"):
        _harvest(native_tiny, data, tmp_path / "a", sites=["L1.resid_psot"])
    with pytest.raises(ikc.CacheError, match="cannot be stored per token"):
        _harvest(native_tiny, data, tmp_path / "a", sites=["L0H1.pattern"])
    with pytest.raises(ikc.CacheError, match="max_length"):
        _harvest(native_tiny, data, tmp_path / "a", max_length=33)
    with pytest.raises(ikc.CacheError, match="too_long"):
        _harvest(native_tiny, data, tmp_path / "a", too_long="split")
    assert not (tmp_path / "a").exists()


def test_unwritable_folder(native_tiny, data, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ikc.CacheError, match="cannot write to out_dir|not a folder"):
        _harvest(native_tiny, data, tmp_path / "file" / "acts")
    with pytest.raises(ikc.CacheError, match="not a folder"):
        _harvest(native_tiny, data, tmp_path / "file")


def test_disk_full_leaves_no_shard(native_tiny, data, tmp_path, monkeypatch):
    import interpkit.cache._safetensors as st

    real_open = open
    writes = {"n": 0}

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            writes["n"] += 1
            if writes["n"] > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(st, "open", lambda *a, **k: Full(real_open(*a, **k)), raising=False)
    with pytest.raises(ikc.CacheError, match=r"shard-00000\.safetensors.*No space left"):
        _harvest(native_tiny, data, tmp_path / "a")
    left = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert left == [".progress", "manifest.json"]  # no shard, no temporary file
    monkeypatch.undo()
    assert len(_harvest(native_tiny, data, tmp_path / "a")) == sum(map(len, data))


def test_empty_data_is_refused(native_tiny, tmp_path):
    for empty in ([], [[], []]):
        with pytest.raises(ikc.CacheError, match="empty"):
            _harvest(native_tiny, empty, tmp_path / "a")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ikc.CacheError, match="empty"):
        _harvest(native_tiny, tmp_path / "empty.txt", tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_long_texts_are_truncated_with_a_warning_or_refused(native_tiny, tmp_path):
    data = [list(range(40)), list(range(5)), list(range(50))]
    with pytest.warns(ikc.CacheWarning, match="example 0 has 40 tokens"):
        store = _harvest(native_tiny, data, tmp_path / "a")
    assert store.manifest["n_truncated"] == 2 and len(store) == 32 + 5 + 32
    assert store.example(2)["tokens"].tolist() == list(range(32))
    with pytest.raises(ikc.CacheError, match="example 0 has 40 tokens"):
        _harvest(native_tiny, data, tmp_path / "b", too_long="error")
    capped = _harvest(native_tiny, data[1:2] * 9, tmp_path / "c", max_tokens=12)
    assert len(capped) == 12 and capped.n_examples == 3


def test_empty_texts_keep_their_index(native_tiny, tmp_path):
    store = _harvest(native_tiny, [[1, 2], [], [3]], tmp_path / "a")
    assert store.n_examples == 3 and store.example(1)["tokens"].numel() == 0
    assert store.example(2)["tokens"].tolist() == [3]


def test_damaged_stores_name_the_shard(native_tiny, data, tmp_path):
    store = _harvest(native_tiny, data, tmp_path / "a")
    shard = store.path / "shard-00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(ikc.CacheError, match="shard-00001.safetensors"):
        ikc.ActivationStore(store.path).verify()
    shard.write_bytes(bytes(raw[:-10]))
    with pytest.raises(ikc.CacheError, match="shard-00001.safetensors has"):
        ikc.ActivationStore(store.path)
    shard.unlink()
    with pytest.raises(ikc.CacheError, match="shard-00001.safetensors is missing"):
        ikc.ActivationStore(store.path)
    with pytest.raises(ikc.CacheError, match="no manifest"):
        ikc.ActivationStore(tmp_path)
