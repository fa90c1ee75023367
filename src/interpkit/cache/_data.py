"""Harvest input: texts or token ids from lists, files or datasets, streamed into a deterministic plan.

Sources: a list (or any iterable) of texts, of token-id lists, or a 2-D id tensor; a path to a
text file (one text per line, blank lines skipped), a ``.jsonl`` file (objects with a ``text``
field, or ``ids`` / ``input_ids`` for token ids), or a Hugging Face ``datasets`` folder saved
with ``save_to_disk`` (only when the optional ``datasets`` package is installed); or a
``datasets.Dataset`` object. Everything is read lazily, one example at a time.

Texts longer than the context (``max_length``, default the model's ``n_ctx``) are truncated to
their first ``max_length`` tokens with one CacheWarning by default (``too_long="truncate"``),
or refused with a CacheError naming the example (``too_long="error"``). Truncation keeps the
prefix, whose activations are exactly those the full text would have had at those positions.

The plan cuts the token stream into batches (whole examples, at most ``batch_tokens`` padded
tokens or ``batch_size`` examples) and shards (whole batches, at least ``shard_tokens`` tokens).
It depends only on the data and these settings, so a resumed or data-parallel harvest sees
exactly the same shards as an uninterrupted single-process one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.cache._errors import CacheError, CacheWarning
from interpkit.errors import check_text

if TYPE_CHECKING:
    from interpkit.models import Model

TOO_LONG = ("truncate", "error")


def _is_datasets_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _load_datasets_dir(path: Path, split: str | None) -> Any:
    try:
        import datasets
    except ImportError:
        raise CacheError(
            f"{str(path)!r} looks like a Hugging Face datasets folder, but reading it needs the optional "
            "'datasets' package (pip install datasets); or give a .txt file (one text per line) or a .jsonl file"
        ) from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, dict):  # a DatasetDict: one dataset per split
        splits = list(ds.keys())
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            raise CacheError(f"dataset {str(path)!r} has splits {splits}: choose one with split=...")
        ds = ds[split]
    return ds


def _rows_of_dataset(ds: Any, field: str, where: str) -> Iterator[Any]:
    columns = list(getattr(ds, "column_names", []) or [])
    for name in (field, "ids", "input_ids"):
        if name in columns:
            for row in ds:
                yield row[name]
            return
    raise CacheError(f"{where} has no {field!r} column (columns: {', '.join(columns)}); choose one with text_field=")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of a UTF-8 text file; a leading byte order mark is skipped (as task files skip
    it), and a byte that is not UTF-8 is a CacheError naming its line."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as fh:
        for number, line in enumerate(fh, 1):
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as exc:  # undecodable bytes come back as lone surrogates
                byte = ord(line[exc.start]) - 0xDC00
                raise CacheError(
                    f"{path}, line {number}: not valid UTF-8 (byte {byte:#04x} at column {exc.start + 1})"
                ) from None
            yield number, line.rstrip("\n").rstrip("\r")


def _rows_of_jsonl(path: Path, field: str) -> Iterator[Any]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CacheError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise CacheError(f"{path}, line {number}: not valid JSON (nested too deeply)") from None
        if isinstance(obj, str):
            yield check_text(obj, f"{path}, line {number}", CacheError)
            continue
        if not isinstance(obj, dict):
            raise CacheError(f"{path}, line {number}: expected an object with a {field!r} field")
        for name in (field, "ids", "input_ids"):
            if name in obj:
                value = obj[name]
                yield (
                    check_text(value, f"{path}, line {number}: {name}", CacheError) if isinstance(value, str) else value
                )
                break
        else:
            raise CacheError(f"{path}, line {number}: no {field!r} field (keys: {', '.join(obj)})")


def _rows_of_text(path: Path) -> Iterator[str]:
    for _, line in _lines(path):
        if line.strip():
            yield line


def rows(data: Any, text_field: str = "text", split: str | None = None) -> Iterator[Any]:
    """The raw examples of ``data`` (texts or id sequences), lazily."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if path.is_dir():
            if not _is_datasets_dir(path):
                raise CacheError(f"folder {str(path)!r} is not a Hugging Face datasets folder (save_to_disk)")
            yield from _rows_of_dataset(_load_datasets_dir(path, split), text_field, str(path))
        elif path.is_file():
            if path.suffix in (".jsonl", ".ndjson"):
                yield from _rows_of_jsonl(path, text_field)
            else:
                yield from _rows_of_text(path)
        else:
            raise CacheError(
                f"data {str(data)!r} is not an existing file or folder; to harvest texts given in Python, "
                "pass a list of strings"
            )
        return
    if hasattr(data, "column_names") and hasattr(data, "__iter__"):
        yield from _rows_of_dataset(data, text_field, "the dataset")
        return
    if not isinstance(data, Iterable):
        raise CacheError(f"data must be texts, token ids, a file or a dataset; got {type(data).__name__}")
    yield from data


def _token_ids(row: Any, index: int) -> list[int]:
    """A row of token ids as ints; bools, floats, dicts and strings are refused, never coerced."""
    import numbers

    import torch

    if isinstance(row, torch.Tensor):
        if row.dtype.is_floating_point or row.dtype == torch.bool or row.is_complex():
            raise CacheError(f"example {index}: token ids must be integers, got a {row.dtype} tensor")
        return row.reshape(-1).tolist()
    if isinstance(row, (bytes, dict, set, frozenset)) or not isinstance(row, Iterable):
        raise CacheError(f"example {index} is neither a text nor a list of token ids: {row!r:.80}")
    ids = list(row)
    for i, item in enumerate(ids):
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise CacheError(
                f"example {index}: token ids must be ints; item {i} is {item!r:.40} ({type(item).__name__})"
            )
    return [int(i) for i in ids]


def describe(data: Any) -> str:
    """A short, stable description of the data source for the manifest."""
    if isinstance(data, (str, os.PathLike)):
        return str(Path(data).expanduser().resolve())
    n = len(data) if hasattr(data, "__len__") else None
    return f"<{type(data).__name__}{'' if n is None else f' of {n}'}>"


def examples(
    model: Model,
    data: Any,
    *,
    prepend_bos: bool | None,
    max_length: int,
    too_long: str,
    max_tokens: int | None,
    text_field: str = "text",
    split: str | None = None,
    stats: dict[str, int] | None = None,
) -> Iterator[list[int]]:
    """Token ids of each example, truncated per ``too_long``; stops at ``max_tokens`` in all."""

    if too_long not in TOO_LONG:
        raise CacheError(f"too_long={too_long!r} is not one of {', '.join(TOO_LONG)}")
    bos = model.prepend_bos if prepend_bos is None else prepend_bos
    stats = {} if stats is None else stats
    stats.setdefault("n_truncated", 0)
    total = 0
    for index, row in enumerate(rows(data, text_field, split)):
        if isinstance(row, str):
            tok = model._need_tokenizer()
            ids = tok.encode(check_text(row, f"example {index}", CacheError), add_special_tokens=False)
            if bos:
                ids = [tok.bos_token_id, *ids]
        else:
            ids = _token_ids(row, index)
        if ids and (min(ids) < 0 or max(ids) >= model.cfg.d_vocab):
            raise CacheError(f"example {index}: token ids must lie in [0, {model.cfg.d_vocab})")
        if len(ids) > max_length:
            if too_long == "error":
                raise CacheError(
                    f"example {index} has {len(ids)} tokens, more than max_length={max_length} "
                    "(use too_long='truncate' to keep its first max_length tokens)"
                )
            if stats["n_truncated"] == 0:
                warnings.warn(
                    f"example {index} has {len(ids)} tokens, more than max_length={max_length}: truncating it "
                    "(and any later long ones) to the first max_length tokens; the manifest counts them",
                    CacheWarning,
                    stacklevel=4,
                )
            stats["n_truncated"] += 1
            ids = ids[:max_length]
        if max_tokens is not None:
            ids = ids[: max_tokens - total]
        total += len(ids)
        yield ids
        if max_tokens is not None and total >= max_tokens:
            return


@dataclasses.dataclass
class Shard:
    """One shard of the plan: whole batches of whole examples."""

    index: int
    first_example: int
    batches: list[list[list[int]]]

    @property
    def n_examples(self) -> int:
        return sum(len(b) for b in self.batches)

    @property
    def n_tokens(self) -> int:
        return sum(len(ex) for b in self.batches for ex in b)

    def tokens_sha256(self) -> str:
        digest = hashlib.sha256(f"{self.first_example}".encode())
        for batch in self.batches:
            for ex in batch:
                digest.update(json.dumps(ex, separators=(",", ":")).encode() + b";")
        return digest.hexdigest()


def plan(
    stream: Iterable[list[int]], *, batch_size: int | None, batch_tokens: int, shard_tokens: int
) -> Iterator[Shard]:
    """Cut the example stream into batches and shards (see the module docstring)."""
    shard = Shard(0, 0, [])
    batch: list[list[int]] = []
    longest = 0
    for example, ids in enumerate(stream):
        grown = max(longest, len(ids))
        full = batch_size is not None and len(batch) >= batch_size
        if batch and (grown * (len(batch) + 1) > batch_tokens or full):
            shard.batches.append(batch)
            if shard.n_tokens >= shard_tokens:
                yield shard
                shard = Shard(shard.index + 1, example, [])
            batch, grown = [], len(ids)
        batch.append(ids)
        longest = grown
    if batch:
        shard.batches.append(batch)
    if shard.batches:
        yield shard
