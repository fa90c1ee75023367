"""What a store may believe of its manifest: names inside its folder, numbers that add up, shards that agree.

A manifest is data from disk and may be damaged or hostile. Before anything is opened:

* **Names.** Shard ``i`` is the regular file ``shard-{i:05d}.safetensors`` in the store's own
  folder, nothing else: no ``..``, no absolute path, no other store's shard, no symlink
  (:func:`shard_path`; checked with ``lstat``, so a link is never followed). Errors name the
  shard by its index and never report anything about a file outside the folder.
* **Numbers** (:func:`check_manifest`): every field has its type; shards are numbered in order,
  their example ranges tile ``0..n_examples``, ``token_start`` is the running sum of
  ``n_tokens``, the totals are the sums, every example's token list sums to its shard's count,
  and a shard's byte size can hold its tokens (so a total of 10**12 tokens cannot pass).
* **Shards** (:func:`check_shard_header`): each opened shard holds every site and index tensor
  with the manifest's token count, per-token shape and dtype.

Progress records of an interrupted harvest get the same name checks, and resume re-hashes a
recorded shard before building on it (:func:`recorded_shard`).
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from interpkit.cache._errors import CacheError

STORE_DTYPES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
SAFETENSORS_CODES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}
INDEX_KEYS = ("tokens", "example", "position")
_SHA = re.compile(r"[0-9a-f]{64}")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def shard_path(folder: Path, index: int, name: Any) -> Path:
    """The regular file of shard ``index`` in ``folder``; CacheError if ``name`` is anything else."""
    if name != shard_name(index):
        raise CacheError(
            f"store {str(folder)!r}: shard {index} is named {str(name)[:80]!r} in the manifest, which is not a shard "
            f"of this store (it must be {shard_name(index)}, a file in the store's own folder)"
        )
    path = folder / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path  # the caller reports a missing shard
    if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
        kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
        raise CacheError(f"store {str(folder)!r}: {name} is {kind}; a store reads only regular files in its own folder")
    return path


def _fail(where: str, problem: str) -> CacheError:
    return CacheError(f"the manifest {where!r} is damaged: {problem}")


def check_identity(m: dict[str, Any], where: str) -> None:
    """The fields a harvest compares before resuming or refusing: model, sites, dtype, settings."""
    if m.get("status") not in ("complete", "in_progress"):
        raise _fail(where, f"status {m.get('status')!r:.40} is neither 'complete' nor 'in_progress'")
    model = m.get("model")
    if not isinstance(model, dict) or not all(isinstance(model.get(k), str) for k in ("spec", "weights_hash", "dtype")):
        raise _fail(where, "'model' must be an object with spec, weights_hash and dtype strings")
    if not isinstance(m.get("dtype"), str) or m["dtype"] not in STORE_DTYPES:
        raise _fail(where, f"dtype {m.get('dtype')!r:.40} is not one of {', '.join(STORE_DTYPES)}")
    if not isinstance(m.get("settings"), dict):
        raise _fail(where, "'settings' must be an object")
    sites = m.get("sites")
    if not isinstance(sites, list) or not sites:
        raise _fail(where, "'sites' must be a non-empty list")
    keys = set()
    for i, s in enumerate(sites):
        ok = isinstance(s, dict) and isinstance(s.get("key"), str) and isinstance(s.get("hook"), str)
        ok = ok and isinstance(s.get("label"), (str, type(None)))
        ok = ok and (s.get("head_index") is None or _is_int(s.get("head_index")))
        shape = s.get("shape") if isinstance(s, dict) else None
        ok = ok and isinstance(shape, list) and all(_is_int(n) for n in shape) and len(shape) <= 8
        if not ok:
            raise _fail(where, f"site {i} must have a key, hook, label, head_index and a shape of sizes")
        if s["key"] in keys or s["key"] in INDEX_KEYS:
            raise _fail(where, f"site key {s['key']!r:.60} appears twice or is reserved")
        keys.add(s["key"])


def bytes_per_token(m: dict[str, Any]) -> int:
    """The least bytes a shard holds per token: every site in the store dtype and three int64 indices."""
    return sum(math.prod(s["shape"]) for s in m["sites"]) * STORE_DTYPES[m["dtype"]] + 8 * len(INDEX_KEYS)


def _check_shard_entry(where: str, i: int, e: Any, start: int, first: int, per_token: int) -> None:
    if not isinstance(e, dict):
        raise _fail(where, f"shard {i} is not an object")
    if e.get("file") != shard_name(i):
        raise _fail(
            where, f"shard {i} is named {str(e.get('file'))[:80]!r}, not {shard_name(i)}: not a shard of this store"
        )
    if not (_is_int(e.get("n_tokens")) and _is_int(e.get("bytes"), 1)):
        raise _fail(where, f"shard {i} needs n_tokens >= 0 and bytes >= 1 as ints")
    if not (isinstance(e.get("sha256"), str) and _SHA.fullmatch(e["sha256"])):
        raise _fail(where, f"shard {i} has no sha256 of 64 hex digits")
    examples = e.get("examples")
    if not (isinstance(examples, list) and len(examples) == 2 and all(_is_int(x) for x in examples)):
        raise _fail(where, f"shard {i}: examples must be [first, stop]")
    if examples[0] != first or examples[1] < first:
        raise _fail(where, f"shard {i} covers examples {examples}, but the shards before end at example {first}")
    if e.get("token_start") != start:
        raise _fail(
            where, f"shard {i} has token_start {e.get('token_start')!r:.30}, but the shards before hold {start}"
        )
    if e["bytes"] < e["n_tokens"] * per_token:
        raise _fail(
            where, f"shard {i}: {e['bytes']} bytes cannot hold {e['n_tokens']} tokens of {per_token} bytes each"
        )


def check_manifest(m: dict[str, Any], where: str) -> None:
    """CacheError naming the first field of a complete manifest that is missing, mistyped or inconsistent."""
    check_identity(m, where)
    if m["status"] != "complete":
        return
    for key in ("n_examples", "n_tokens", "n_shards"):
        if not _is_int(m.get(key)):
            raise _fail(where, f"{key} must be an int >= 0, got {m.get(key)!r:.40}")
    if not _is_int(m.get("n_truncated", 0)):
        raise _fail(where, "n_truncated must be an int >= 0")
    shards = m.get("shards")
    if not isinstance(shards, list) or len(shards) != m["n_shards"]:
        raise _fail(where, f"'shards' must list n_shards={m['n_shards']} shards")
    per_token = bytes_per_token(m)
    start = first = 0
    for i, e in enumerate(shards):
        _check_shard_entry(where, i, e, start, first, per_token)
        start, first = start + e["n_tokens"], e["examples"][1]
    if start != m["n_tokens"] or first != m["n_examples"]:
        raise _fail(
            where,
            f"the shards hold {start} tokens of {first} examples, the totals say {m['n_tokens']} of {m['n_examples']}",
        )
    tokens = m.get("tokens")
    if not isinstance(tokens, list) or len(tokens) != m["n_examples"]:
        raise _fail(where, f"'tokens' must list the token ids of each of the {m['n_examples']} examples")
    for i, e in enumerate(shards):
        a, b = e["examples"]
        rows = tokens[a:b]
        if not all(isinstance(r, list) and all(_is_int(t) for t in r) for r in rows):
            raise _fail(where, f"'tokens' of examples {a}..{b - 1} must be lists of token ids")
        if sum(map(len, rows)) != e["n_tokens"]:
            raise _fail(
                where, f"'tokens' of shard {i}'s examples hold {sum(map(len, rows))} ids, the shard {e['n_tokens']}"
            )


def check_shard_header(handle: Any, entry: dict[str, Any], m: dict[str, Any], path: Path) -> None:
    """CacheError unless an opened shard holds every site and index tensor the manifest promises."""
    n = entry["n_tokens"]
    code = SAFETENSORS_CODES[m["dtype"]]
    wanted = {s["key"]: ([n, *s["shape"]], code) for s in m["sites"]}
    wanted.update({k: ([n], "I64") for k in INDEX_KEYS})
    present = set(handle.keys())
    for key, (shape, dtype) in wanted.items():
        if key not in present:
            raise CacheError(
                f"shard {path.name} of {str(path.parent)!r} has no tensor {key!r} (corrupt, or another store's)"
            )
        piece = handle.get_slice(key)
        if list(piece.get_shape()) != shape or piece.get_dtype() != dtype:
            raise CacheError(
                f"shard {path.name} of {str(path.parent)!r}: tensor {key!r} is {piece.get_dtype()} "
                f"{list(piece.get_shape())}, the manifest says {dtype} {shape} (the manifest or the shard is damaged)"
            )


def recorded_shard(folder: Path, record: Any) -> dict[str, Any] | None:
    """A progress record's entry if its shard is a regular file of this store with the recorded size and
    checksum; None (the shard is redone) for anything else: a damaged record, a name pointing
    elsewhere, a shard changed since it was written."""
    from interpkit.cache._safetensors import file_sha256

    if not isinstance(record, dict) or not _is_int(record.get("index")):
        return None
    keys_ok = _is_int(record.get("n_tokens")) and isinstance(record.get("tokens_sha256"), str)
    examples = record.get("examples")
    keys_ok = keys_ok and isinstance(examples, list) and len(examples) == 2 and all(_is_int(x) for x in examples)
    if not keys_ok or not isinstance(record.get("sha256"), str):
        return None
    try:
        path = shard_path(folder, record["index"], record.get("file"))
        if not path.is_file() or path.stat().st_size != record.get("bytes"):
            return None
        return record if file_sha256(path) == record["sha256"] else None
    except (CacheError, OSError):
        return None
