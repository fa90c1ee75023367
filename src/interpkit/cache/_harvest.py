"""``harvest``: activations over a whole dataset, streamed to a sharded, resumable store on disk.

The data is read lazily and cut into a deterministic plan of batches and shards
(:mod:`interpkit.cache._data`). For each shard, per-site buffers of exactly the shard's token
count are allocated in the storage dtype; forward hooks copy the real (unpadded) tokens'
activations into them batch by batch, and the forward pass stops once the last requested hook
has fired. The shard is written with a streaming writer (temporary name, fsync, rename) and then
recorded in ``.progress``. Memory therefore holds one shard's buffers and one batch's forward
pass, whatever the dataset size: size shards with ``shard_mb``.

A rerun with the same arguments skips every recorded shard (after checking its tokens are the
same) and continues; the shard contents depend only on the plan, so the final store is
byte-identical to an uninterrupted run's. Under ``torchrun`` each rank computes its share of the
shards (:mod:`interpkit.cache._distributed`).

    >>> store = ik.cache.harvest(model, ["some text", "more text"], ["L*.resid_post"], "acts/")  # doctest: +SKIP
    >>> store["L3.resid_post"].shape                                                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.cache import _data, _lock, _manifest
from interpkit.cache._distributed import join
from interpkit.cache._errors import CacheError, CacheWarning
from interpkit.cache._run import _AllFired, _never_fired
from interpkit.cache._safetensors import write_safetensors
from interpkit.cache._select import Request, resolve_requests
from interpkit.errors import check_int

if TYPE_CHECKING:
    import torch

    from interpkit.cache._store import ActivationStore
    from interpkit.models import Model

_INDEX_KEYS = ("tokens", "example", "position")


def _probe(model: Model, requests: list[Request]) -> dict[str, list[int]]:
    """Per-token shape of each request, from a 2x3-token forward; clear errors for unusable hooks."""
    import torch

    from interpkit.hooks import hooks

    for r in requests:
        if r.pos_axis != 1:
            raise CacheError(
                f"{r.key} has a (query, key) layout whose size depends on the text length, so it cannot be "
                "stored per token; cache attention patterns in memory with ik.cache.run instead"
            )
    shapes: dict[str, list[int]] = {}
    by_hook: dict[str, list[Request]] = {}
    for r in requests:
        by_hook.setdefault(r.hook, []).append(r)

    def make(name: str) -> Any:
        def fn(act: torch.Tensor, hook: Any) -> None:
            if act.ndim < 2 or act.shape[0] not in (1, 2) or act.shape[1] != 3:
                raise CacheError(
                    f"hook {name} gives {tuple(act.shape)}, not (batch, pos, ...): cannot store it per token"
                )
            for r in by_hook[name]:
                shape = list(act.shape[2:])
                if r.head_axis is not None:
                    shape.pop(r.head_axis - 2)
                shapes[r.key] = shape
            if len(shapes) == len(requests):
                raise _AllFired

        return fn

    ids = torch.zeros(2, 3, dtype=torch.long, device=model.device)
    with torch.inference_mode(), hooks(model, fwd=[(h, make(h)) for h in by_hook]), contextlib.suppress(_AllFired):
        model.bridge(ids)
    missing = [h for h in by_hook if any(r.key not in shapes for r in by_hook[h])]
    if missing:
        raise _never_fired(missing)
    return shapes


class _ShardWriter:
    """Runs the batches of one shard into preallocated buffers and writes the shard."""

    def __init__(self, model: Model, requests: list[Request], shapes: dict[str, list[int]], dtype: Any) -> None:
        self.model, self.requests, self.shapes, self.dtype = model, requests, shapes, dtype
        self.by_hook: dict[str, list[Request]] = {}
        for r in requests:
            self.by_hook.setdefault(r.hook, []).append(r)
        self.overflowed = False

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, bufs: dict[str, torch.Tensor], at: int) -> None:
        import torch

        from interpkit.hooks import hooks

        fired: set[str] = set()
        n_rows = int(mask.sum())

        def make(name: str) -> Any:
            def fn(act: torch.Tensor, hook: Any) -> None:
                if act.shape[0] != ids.shape[0]:
                    act = act.expand(ids.shape[0], *act.shape[1:])
                real = mask.to(act.device)  # a split model's activation sits on its layer's device
                for r in self.by_hook[name]:
                    part = act if r.head_axis is None else act.select(r.head_axis, r.head_index)
                    bufs[r.key][at : at + n_rows].copy_(part[real])
                fired.add(name)
                if len(fired) == len(self.by_hook):
                    raise _AllFired

            return fn

        try:
            with torch.inference_mode(), hooks(self.model, fwd=[(h, make(h)) for h in self.by_hook]):
                self.model.bridge(ids, attention_mask=mask.long())
        except _AllFired:
            pass
        except torch.OutOfMemoryError:
            if ids.shape[0] == 1:
                raise
            half = ids.shape[0] // 2  # halve the batch and carry on: same rows, same order
            if self.model.device.type == "cuda":
                torch.cuda.empty_cache()
            self._forward(ids[:half], mask[:half], bufs, at)
            self._forward(ids[half:], mask[half:], bufs, at + int(mask[:half].sum()))
            return
        if len(fired) != len(self.by_hook):
            raise _never_fired([h for h in self.by_hook if h not in fired])

    def _check_finite(self, bufs: dict[str, torch.Tensor], example: torch.Tensor) -> None:
        """CacheError for NaN activations (and infinite ones a float32 store cannot blame on overflow)."""
        import torch

        for key, b in bufs.items():
            bad = torch.isnan(b) if b.dtype in (torch.float16, torch.bfloat16) else ~torch.isfinite(b)
            rows = bad.reshape(b.shape[0], -1).any(1).nonzero()
            if rows.numel():
                raise CacheError(
                    f"the model gives non-finite activations (NaN or inf) at {key} for {rows.numel()} of {b.shape[0]} "
                    f"tokens, first in example {int(example[rows[0, 0]])}: its weights or dtype produce them; "
                    "nothing was stored for this shard"
                )

    def write(self, shard: _data.Shard, path: Path, advance: Callable[[int], Any] = lambda n: None) -> dict[str, Any]:
        """Compute ``shard`` and write it to ``path``; ``advance(n)`` after each batch of n tokens."""
        import torch

        n = shard.n_tokens
        bufs = {r.key: torch.empty((n, *self.shapes[r.key]), dtype=self.dtype) for r in self.requests}
        index = {k: torch.empty(n, dtype=torch.long) for k in _INDEX_KEYS}
        at, example = 0, shard.first_example
        for batch in shard.batches:
            lengths = [len(ex) for ex in batch]
            rows = [i for i, length in enumerate(lengths) if length]
            if rows:
                width = max(lengths)
                ids = torch.zeros((len(rows), width), dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.bool)
                for j, i in enumerate(rows):
                    ids[j, : lengths[i]] = torch.tensor(batch[i])
                    mask[j, : lengths[i]] = True
                device = self.model.device
                self._forward(ids.to(device), mask.to(device), bufs, at)
                advance(sum(lengths))
            for i, ex in enumerate(batch):
                length = len(ex)
                index["tokens"][at : at + length] = torch.tensor(ex, dtype=torch.long)
                index["example"][at : at + length] = example + i
                index["position"][at : at + length] = torch.arange(length)
                at += length
            example += len(batch)
        self._check_finite(bufs, index["example"])
        if self.dtype in (torch.float16, torch.bfloat16) and not self.overflowed:
            self.overflowed = any(bool(torch.isinf(b).any()) for b in bufs.values())
        metadata = {
            "format": _manifest.FORMAT,
            "shard": str(shard.index),
            "first_example": str(shard.first_example),
            "n_examples": str(shard.n_examples),
            "n_tokens": str(n),
        }
        try:
            sha, size = write_safetensors(path, {**bufs, **index}, metadata)
        except OSError as exc:
            raise CacheError(
                f"could not write shard {path.name} to {str(path.parent)!r}: {exc.strerror or exc} "
                "(disk full or folder not writable?); no partial shard was left, rerun to resume"
            ) from None
        return {
            "index": shard.index,
            "file": path.name,
            "sha256": sha,
            "bytes": size,
            "n_tokens": n,
            "examples": [shard.first_example, shard.first_example + shard.n_examples],
            "tokens_sha256": shard.tokens_sha256(),
        }


def harvest(
    model: Model,
    data: Any,
    sites: str | Iterable[Any],
    out_dir: str | Path,
    *,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    dtype: Any = "float16",
    max_length: int | None = None,
    too_long: str = "truncate",
    prepend_bos: bool | None = None,
    text_field: str = "text",
    split: str | None = None,
    batch_tokens: int = 4096,
    shard_mb: float = 64.0,
    progress: bool = True,
    overwrite: bool = False,
    on_shard: Callable[[dict[str, Any]], None] | None = None,
    distributed: bool | None = None,
) -> ActivationStore:
    """Harvest the activations at ``sites`` over ``data`` into ``out_dir``; returns the store.

    ``data``: texts, token-id lists, a ``.txt`` / ``.jsonl`` file, a datasets folder or object
    (see :mod:`interpkit.cache._data`). ``sites``: labels, hook names or wildcards, each stored
    per token (attention patterns are refused). ``batch_size``: examples per batch (default:
    as many as fit ``batch_tokens`` padded tokens). ``max_tokens``: stop after this many tokens.
    ``dtype``: storage dtype (float16, bfloat16, float32). ``max_length`` (default ``n_ctx``)
    and ``too_long`` (``"truncate"`` with a warning, or ``"error"``) handle long texts.
    ``shard_mb``: target shard size, which bounds memory. A rerun resumes an interrupted harvest;
    a folder holding a different harvest is refused unless ``overwrite=True``. ``on_shard`` is
    called with each finished shard's manifest entry. Under ``torchrun`` the work is split
    across ranks (``distributed=None`` detects it).

    >>> store = ik.cache.harvest(model, "texts.txt", ["L0.resid_post"], "acts")  # doctest: +SKIP
    >>> len(store), store.sites                                                   # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from interpkit.cache._store import ActivationStore
    from interpkit.models._devices import resolve_dtype
    from interpkit.results import package_versions

    if sites is None:
        raise CacheError("harvest needs sites: name the site labels or hook names to store (e.g. 'L*.resid_post')")
    store_dtype = resolve_dtype(dtype)
    n_ctx = model.cfg.n_ctx
    max_length = n_ctx if max_length is None else int(max_length)
    if not 1 <= max_length <= n_ctx:
        raise CacheError(f"max_length={max_length} must lie in 1..{n_ctx} (the model context)")
    for name, value in (("batch_size", batch_size), ("max_tokens", max_tokens)):
        check_int(value, name, CacheError, minimum=1, allow_none=True)
    check_int(batch_tokens, "batch_tokens", CacheError, minimum=1)
    if isinstance(shard_mb, bool) or not isinstance(shard_mb, (int, float)) or not 0 < shard_mb < 2**40:
        raise CacheError(f"shard_mb must be a positive number of MiB, got {shard_mb!r:.40}")
    requests = resolve_requests(model, sites)
    shapes = _probe(model, requests)
    per_token = sum(math.prod(shapes[r.key]) for r in requests) * store_dtype.itemsize + 8 * len(_INDEX_KEYS)
    shard_tokens = max(1, int(shard_mb * 2**20) // per_token)
    settings = {
        "prepend_bos": model.prepend_bos if prepend_bos is None else bool(prepend_bos),
        "max_length": max_length,
        "too_long": too_long,
        "max_tokens": max_tokens,
        "batch_size": batch_size,
        "batch_tokens": int(batch_tokens),
        "shard_tokens": shard_tokens,
    }
    identity = {
        "model": _manifest.model_block(model),
        "sites": [{**r.to_json(), "shape": shapes[r.key]} for r in requests],
        "dtype": str(store_dtype).removeprefix("torch."),
        "settings": settings,
    }
    stats: dict[str, int] = {}
    stream = _data.examples(
        model,
        data,
        prepend_bos=settings["prepend_bos"],
        max_length=max_length,
        too_long=too_long,
        max_tokens=max_tokens,
        text_field=text_field,
        split=split,
        stats=stats,
    )
    shards = _data.plan(stream, batch_size=batch_size, batch_tokens=int(batch_tokens), shard_tokens=shard_tokens)
    first = next(shards, None)
    if first is None or first.n_tokens == 0:
        raise CacheError(f"the dataset {_data.describe(data)} is empty: it gives no tokens to harvest")
    out = Path(out_dir).expanduser()
    group = join(model, distributed)
    lock = contextlib.ExitStack()  # rank 0 holds the folder's lock until the manifest is written
    try:
        error: BaseException | None = None
        mode = "fresh"
        try:
            if group.rank == 0:
                lock.enter_context(_lock.folder_lock(out))
            mode = _manifest.prepare(out, identity, writer=group.rank == 0, overwrite=overwrite)
        except CacheError as exc:
            error = exc
        group.agree(error)
        existing = _manifest.read_manifest(out)
        done = _manifest.done_shards(out, existing)
        writer = _ShardWriter(model, requests, shapes, store_dtype)
        bar = tqdm(
            total=max_tokens if group.world == 1 else None,
            unit="tok",
            unit_scale=True,
            desc=f"harvest -> {out.name}" + (f" (rank 0 of {group.world})" if group.world > 1 else ""),
            disable=not progress or group.rank != 0,
        )
        n_shards = 0
        try:
            for shard in _chain(first, shards):
                n_shards += 1
                entry = done.get(shard.index)
                if entry is not None:
                    if entry["tokens_sha256"] != shard.tokens_sha256():
                        raise CacheError(
                            f"the data differs from the harvest already in {str(out)!r} at shard {shard.index}: "
                            "rerun with the same data, or choose another out_dir"
                        )
                    if bar.total is not None:
                        bar.total -= shard.n_tokens
                    continue
                if mode == "complete":
                    raise CacheError(f"{str(out)!r} holds a complete harvest of less data than given here")
                if not group.owns(shard.index):
                    continue
                entry = writer.write(shard, out / _manifest.shard_name(shard.index), bar.update)
                _manifest.record_progress(out, entry)
                if on_shard is not None:
                    on_shard(entry)
            if mode == "complete" and n_shards != len(done):
                raise CacheError(f"{str(out)!r} holds a complete harvest of more data than given here")
        except BaseException as exc:
            error = exc
        finally:
            bar.close()
        group.agree(error)
        if writer.overflowed:
            warnings.warn(
                f"some activations overflowed {identity['dtype']} (stored as inf): harvest with dtype='float32'",
                CacheWarning,
                stacklevel=2,
            )
        if group.rank == 0 and mode != "complete":
            try:
                entries = _manifest.done_shards(out, None)
                missing = [i for i in range(n_shards) if i not in entries]
                if missing:
                    raise CacheError(f"shard(s) {missing[:5]} were not written; rerun the harvest to finish it")
                extra = {
                    "data": _data.describe(data),
                    "n_truncated": stats.get("n_truncated", 0),
                    "versions": package_versions(),
                }
                _manifest.finish(out, identity, [entries[i] for i in range(n_shards)], extra)
            except BaseException as exc:
                error = exc
        group.agree(error)
    finally:
        lock.close()
        group.close()
    return ActivationStore(out)


def _chain(first: _data.Shard, rest: Iterable[_data.Shard]) -> Iterable[_data.Shard]:
    yield first
    yield from rest
