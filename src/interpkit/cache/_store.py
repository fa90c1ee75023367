"""``ActivationStore``: a finished harvest read back, memory-mapped, one token or example at a time.

Shards are opened lazily with ``safetensors.safe_open`` (a memory map); a read copies only the
rows asked for. Tokens are indexed globally in harvest order (example by example, position by
position). At open, the manifest is validated (:mod:`interpkit.cache._integrity`: shard names
inside the store's own folder, numbers that add up) and every shard must be a regular file with
its recorded size (else a CacheError naming it); each shard's tensors are checked against the
manifest when it is first opened. ``verify()`` also checks each shard's sha256 against the
manifest and the manifest's token ids against the shards'.

    >>> store = ik.cache.ActivationStore("acts/")                  # doctest: +SKIP
    >>> len(store), store.sites                                    # doctest: +SKIP
    (5120, ['blocks.0.hook_resid_post'])
    >>> store[10]["blocks.0.hook_resid_post"].shape                # doctest: +SKIP
    torch.Size([128])
    >>> store.get("L0.resid_post", [3, 7]).shape                   # doctest: +SKIP
    torch.Size([2, 128])
    >>> for batch in store.iter_batches(1024, sites=["L0.resid_post"]):   # doctest: +SKIP
    ...     x = batch["blocks.0.hook_resid_post"]                  # (1024, d_model)
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.cache._errors import CacheError
from interpkit.cache._integrity import check_shard_header, shard_path
from interpkit.cache._manifest import read_manifest
from interpkit.cache._select import unknown_key
from interpkit.errors import check_int

if TYPE_CHECKING:
    import torch

INDEX_KEYS = ("tokens", "example", "position")


class ActivationStore:
    """A harvested activation store: ``len`` tokens, per-site tensors, random access and batches."""

    def __init__(self, path: str | os.PathLike, sites: Iterable[str] | None = None) -> None:
        import torch

        self.path = Path(path).expanduser()
        manifest = read_manifest(self.path) if self.path.is_dir() else None
        if manifest is None:
            raise CacheError(f"{str(self.path)!r} is not an activation store: it has no manifest.json")
        if manifest.get("status") != "complete":
            raise CacheError(
                f"the store in {str(self.path)!r} is incomplete (its harvest was interrupted): rerun the same "
                "harvest to resume and finish it"
            )
        self._tokens = manifest.pop("tokens")  # checked against the shards by verify()
        lengths = [len(t) for t in self._tokens]
        self.manifest = manifest
        self._example_starts = torch.tensor([0, *lengths], dtype=torch.long).cumsum(0)
        self._shards = manifest["shards"]
        self._starts = [s["token_start"] for s in self._shards]
        self._site_info = {s["key"]: s for s in manifest["sites"]}
        self._handles: dict[int, Any] = {}
        self.dtype = getattr(torch, manifest["dtype"])
        self._check_files()
        self.sites = list(self._site_info) if sites is None else [self._key(s) for s in sites]

    # ------------------------------------------------------------------ facts
    def __len__(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def n_examples(self) -> int:
        return int(self.manifest["n_examples"])

    @property
    def n_shards(self) -> int:
        return len(self._shards)

    def shape(self, site: str) -> tuple[int, ...]:
        """Per-token shape of ``site``."""
        return tuple(self._site_info[self._key(site)]["shape"])

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}: {len(self)} tokens, {self.n_examples} examples, "
            f"{self.n_shards} shards, sites {self.sites}, {self.manifest['dtype']})"
        )

    def _key(self, name: str) -> str:
        if name in self._site_info:
            return name
        for key, info in self._site_info.items():
            if name == info.get("label") or (name == info.get("hook") and info.get("head_index") is None):
                return key
        from interpkit.errors import SiteError
        from interpkit.sites import parse

        try:
            site = parse(name)
        except SiteError:
            site = None
        if site is not None and site.label in self._site_info:
            return site.label
        for key, info in self._site_info.items():
            if site is not None and site.hook == info.get("hook") and info.get("head_index") is None:
                return key
        raise unknown_key(name, list(self._site_info), "store")

    def select(self, sites: Iterable[str]) -> ActivationStore:
        """A view of this store holding only ``sites`` (shares the open shards)."""
        view = object.__new__(ActivationStore)
        view.__dict__.update(self.__dict__)
        view.sites = [self._key(s) for s in ([sites] if isinstance(sites, str) else sites)]
        return view

    # ------------------------------------------------------------------ shards
    def _check_files(self) -> None:
        problems = []
        for i, entry in enumerate(self._shards):
            p = shard_path(self.path, i, entry["file"])
            if not p.is_file():
                problems.append(f"{entry['file']} is missing")
            elif p.stat().st_size != entry["bytes"]:
                problems.append(f"{entry['file']} has {p.stat().st_size} bytes, expected {entry['bytes']} (corrupt)")
        if problems:
            raise CacheError(f"store {str(self.path)!r} is damaged: " + "; ".join(problems[:5]))

    def _open(self, i: int) -> Any:
        if i not in self._handles:
            from safetensors import SafetensorError, safe_open

            name = self._shards[i]["file"]
            path = shard_path(self.path, i, name)  # checked again: the folder may have changed since open
            try:
                handle = safe_open(str(path), framework="pt")
            except (OSError, SafetensorError) as exc:
                raise CacheError(f"shard {name} of store {str(self.path)!r} is corrupt: {exc}") from None
            check_shard_header(handle, self._shards[i], self.manifest, path)
            self._handles[i] = handle
        return self._handles[i]

    def _read(self, i: int, key: str, lo: int, hi: int) -> torch.Tensor:
        try:
            return self._open(i).get_slice(key)[lo:hi]
        except CacheError:
            raise
        except Exception as exc:  # safetensors raises several types for a damaged file
            name = self._shards[i]["file"]
            raise CacheError(f"cannot read {key!r} from shard {name} of {str(self.path)!r}: {exc}") from None

    def _range(self, key: str, start: int, stop: int) -> torch.Tensor:
        import torch

        parts = []
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        while start < stop and i < len(self._shards):
            s0 = self._starts[i]
            s1 = s0 + self._shards[i]["n_tokens"]
            if s1 > start:
                parts.append(self._read(i, key, start - s0, min(stop, s1) - s0))
                start = min(stop, s1)
            i += 1
        if not parts:
            return torch.empty((0, *self._shape_of(key)), dtype=self._dtype_of(key))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _shape_of(self, key: str) -> list[int]:
        return self._site_info[key]["shape"] if key in self._site_info else []

    def _dtype_of(self, key: str) -> Any:
        import torch

        return self.dtype if key in self._site_info else torch.long

    def _gather(self, key: str, index: torch.Tensor) -> torch.Tensor:
        import torch

        starts = torch.tensor(self._starts, dtype=torch.long)
        shard_of = torch.searchsorted(starts, index, right=True) - 1
        out = torch.empty((index.numel(), *self._shape_of(key)), dtype=self._dtype_of(key))
        for s in shard_of.unique().tolist():
            sel = (shard_of == s).nonzero()[:, 0]
            local = index[sel] - self._starts[s]
            lo, hi = int(local.min()), int(local.max()) + 1
            out[sel] = self._read(s, key, lo, hi)[local - lo]
        return out

    def _index(self, index: Any) -> tuple[torch.Tensor | None, slice | None]:
        import torch

        n = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step == 1:
                return None, slice(start, max(start, stop))
            return torch.arange(start, stop, step), None
        t = torch.as_tensor(index)
        if t.dtype == torch.bool or t.dtype.is_floating_point:
            raise CacheError(f"token indices must be integers, got {t.dtype}")
        t = t.long().reshape(-1)
        if t.numel() and (int(t.min()) < -n or int(t.max()) >= n):
            raise CacheError(f"token index out of range: the store has {n} tokens")
        return torch.where(t < 0, t + n, t), None

    # ------------------------------------------------------------------ access
    def get(self, site: str, index: Any = None) -> torch.Tensor:
        """``site``'s activations at token ``index`` (int, slice, list, tensor; None = all tokens)."""
        import torch

        key = site if site in INDEX_KEYS else self._key(site)
        if index is None:
            return self._range(key, 0, len(self))
        idx, span = self._index(index)
        if span is not None:
            return self._range(key, span.start, span.stop)
        out = self._gather(key, idx)
        return out[0] if not isinstance(index, slice) and torch.as_tensor(index).ndim == 0 else out

    def __getitem__(self, index: Any) -> dict[str, torch.Tensor]:
        """Every selected site (and ``tokens``, ``example``, ``position``) at token ``index``."""
        if isinstance(index, str):
            raise CacheError(f"store[...] takes token indices; for a whole site use store.get({index!r})")
        return {k: self.get(k, index) for k in (*self.sites, *INDEX_KEYS)}

    @property
    def tokens(self) -> torch.Tensor:
        """Every harvested token id, ``(n_tokens,)``."""
        return self.get("tokens")

    def example_span(self, i: int) -> tuple[int, int]:
        """The token range ``[start, stop)`` of example ``i``."""
        n = self.n_examples
        if not -n <= i < n:
            raise CacheError(f"example {i} is out of range: the store has {n} examples")
        i = i % n
        return int(self._example_starts[i]), int(self._example_starts[i + 1])

    def example(self, i: int) -> dict[str, torch.Tensor]:
        """Every selected site (and tokens, positions) of example ``i``: tensors ``(n_tokens_i, ...)``."""
        start, stop = self.example_span(i)
        return self[start:stop]

    def iter_batches(self, batch_size: int, sites: Iterable[str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive batches of ``batch_size`` tokens (the last may be shorter), as dicts of tensors."""
        check_int(batch_size, "batch_size", CacheError, minimum=1)
        view = self if sites is None else self.select(sites)
        for start in range(0, len(self), batch_size):
            yield view[start : min(start + batch_size, len(self))]

    def close(self) -> None:
        """Release the memory maps of the shards opened so far (they reopen on the next read)."""
        self._handles.clear()

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest; CacheError naming each bad shard."""
        from interpkit.cache._safetensors import file_sha256

        self._check_files()
        bad = [e["file"] for e in self._shards if file_sha256(self.path / e["file"]) != e["sha256"]]
        if bad:
            raise CacheError(
                f"store {str(self.path)!r}: checksum mismatch in {len(bad)} shard(s): {', '.join(bad[:5])} (corrupt)"
            )
        for i, entry in enumerate(self._shards):
            a, b = entry["examples"]
            recorded = [t for row in self._tokens[a:b] for t in row]
            if self._read(i, "tokens", 0, entry["n_tokens"]).tolist() != recorded:
                raise CacheError(
                    f"store {str(self.path)!r}: the manifest's token ids of examples {a}..{b - 1} differ from those in "
                    f"{entry['file']} (the manifest is damaged)"
                )
