"""Content hashes for provenance: model weights, task tokens."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=64)
def _cached_file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime)."""
    st = Path(path).stat()
    return _cached_file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def tensors_sha256(tensors: dict[str, Any]) -> str:
    """SHA-256 over named tensors in name order (dtype, shape and bytes)."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
