"""Fuzzing the files interpkit reads from users: task files, store manifests and native model
configs, damaged at random. Whatever the damage, the only exception that escapes is an
``InterpkitError`` (issue 14, section 5). Example counts are modest so the file runs in seconds;
``INTERPKIT_FUZZ_EXAMPLES=2000`` runs a longer search.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import interpkit as ik
from interpkit.errors import InterpkitError
from interpkit.models import boot_native, load_model, save_native
from tiny_models import NATIVE_TINY

FUZZ = settings(
    max_examples=int(os.environ.get("INTERPKIT_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 70)
    | st.sampled_from([10**12, 2**70, -(2**63), 2**31])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["\ud800", "\ufeff", "LN", "RMS", "gelu", "relu", "rotary", "float16", "complete", "../x"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


def _mutate(data: Any, draw: Any, depth: int = 0) -> Any:
    """``data`` with one value somewhere in it replaced, deleted or added (chosen by ``draw``)."""
    if isinstance(data, dict) and data and depth < 4 and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(data, key=str)))
        return {**data, key: _mutate(data[key], draw, depth + 1)}
    if isinstance(data, list) and data and depth < 4 and draw(st.booleans()):
        i = draw(st.integers(0, len(data) - 1))
        return [*data[:i], _mutate(data[i], draw, depth + 1), *data[i + 1 :]]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "delete" and isinstance(data, dict) and data:
        key = draw(st.sampled_from(sorted(data, key=str)))
        return {k: v for k, v in data.items() if k != key}
    if action == "add" and isinstance(data, dict):
        return {**data, draw(st.text(max_size=8)): draw(JSON)}
    return draw(JSON)


def _dumps(data: Any) -> bytes:
    return json.dumps(data).encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------------------ task files
GOOD_ROWS = [
    {"clean_ids": [1, 2, 3], "corrupt_ids": [1, 4, 3], "answer_id": 5, "wrong_id": 6, "metric": "logprob"},
    {"clean": "When Mary and John left, John gave it to", "corrupt": "When Anna and Paul left, Paul gave it to",
     "answer": " Mary", "wrong": " John"},
]  # fmt: skip


@pytest.fixture(scope="module")
def text_model(embedded_tokenizer):
    from tiny_models import tiny_llama_with_tokenizer

    return tiny_llama_with_tokenizer(embedded_tokenizer)


@FUZZ
@given(data=st.data())
def test_task_files(text_model, data):
    row = data.draw(st.sampled_from(GOOD_ROWS))
    lines = [_dumps(row), _dumps(_mutate(row, data.draw))]
    if data.draw(st.booleans()):
        lines.append(data.draw(st.binary(max_size=30)))
    prefix = data.draw(st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff"]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.jsonl"
        path.write_bytes(prefix + b"\n".join(lines) + b"\n")
        try:
            task = ik.tasks.load(str(path), text_model)
        except InterpkitError:
            return
        assert len(task) >= 1


# ------------------------------------------------------------------------------ store manifests
@pytest.fixture(scope="module")
def store_dir(native_tiny, tmp_path_factory) -> Path:
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 61, (int(k),), generator=g).tolist() for k in torch.randint(1, 12, (12,), generator=g)]
    out = tmp_path_factory.mktemp("fuzz") / "store"
    ik.cache.harvest(native_tiny, data, ["L0.resid_post", "L1H1"], out, shard_mb=0.002, batch_tokens=32, progress=False)
    return out


@FUZZ
@given(data=st.data())
def test_store_manifests(store_dir, tmp_path_factory, data):
    manifest = json.loads((store_dir / "manifest.json").read_text())
    work = tmp_path_factory.getbasetemp() / "fuzz-store"
    if not work.exists():
        shutil.copytree(store_dir, work)
    (work / "manifest.json").write_bytes(_dumps(_mutate(manifest, data.draw)))
    try:
        store = ik.cache.ActivationStore(work)
        store.verify()
        for batch in store.iter_batches(17):
            assert batch["blocks.0.hook_resid_post"].shape[0] <= 17
        store.example(store.n_examples - 1)
        store.get("L1H1", [0, len(store) - 1])
    except InterpkitError:
        return


# ------------------------------------------------------------------------------ native configs
FIELDS = [*NATIVE_TINY, "n_key_value_heads", "positional_embedding_type", "attn_only", "d_vocab_out", "rotary_dim"]


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory) -> Path:
    return save_native(boot_native(NATIVE_TINY, seed=0), tmp_path_factory.mktemp("fuzz") / "native")


@FUZZ
@given(data=st.data())
def test_native_configs(native_dir, tmp_path_factory, data):
    config = json.loads((native_dir / "config.json").read_text())
    fields = dict(config["bridge_config"])
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(FIELDS) | st.text(max_size=6))
        if data.draw(st.integers(0, 4)) == 0:
            fields.pop(key, None)
        else:
            fields[key] = data.draw(SCALARS)
    config = {**config, "bridge_config": fields} if data.draw(st.integers(0, 5)) else _mutate(config, data.draw)
    work = tmp_path_factory.getbasetemp() / "fuzz-native"
    if not work.exists():
        shutil.copytree(native_dir, work)
    (work / "config.json").write_bytes(_dumps(config))
    try:
        model = load_model(str(work))
    except InterpkitError:
        return
    with torch.inference_mode():
        assert model(torch.tensor([[1, 2, 3]]) % model.cfg.d_vocab).isfinite().all()
