"""A streaming safetensors writer: no second copy of the data, sha256 on the fly, atomic rename.

``safetensors.torch.save_file`` first turns every tensor into a Python ``bytes`` object, which
doubles a shard's memory. The format is simple enough to write directly: an 8-byte little-endian
header length, a JSON header (dtype, shape, byte range of each tensor, ``__metadata__``), then the
raw bytes. Tensors are laid out widest dtype first so every tensor is aligned for memory mapping.
The file goes to a hidden temporary name in the same folder, is flushed and fsynced, and only then
renamed to its final name: a reader never sees a half-written shard under a shard's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from interpkit.cache._errors import CacheError

if TYPE_CHECKING:
    import torch

_CODES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
TMP_MARK = ".tmp-"


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, int]:
    """Write ``tensors`` to ``path`` atomically; returns the file's sha256 and size in bytes."""
    import torch

    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    flat: list[torch.Tensor] = []
    for key in order:
        t = tensors[key].detach().cpu().contiguous()
        code = _CODES.get(str(t.dtype).removeprefix("torch."))
        if code is None:
            raise CacheError(f"cannot store tensor {key!r} of dtype {t.dtype} in a shard")
        size = t.numel() * t.element_size()
        header[key] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
        flat.append(t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)
    digest = hashlib.sha256()
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as fh:
            for chunk in (struct.pack("<Q", len(text)), text):
                fh.write(chunk)
                digest.update(chunk)
            for t in flat:
                view = memoryview(t.numpy())
                fh.write(view)
                digest.update(view)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest.hexdigest(), 8 + len(text) + offset


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
