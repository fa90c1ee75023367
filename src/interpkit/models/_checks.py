"""What a loader checks before trusting a model directory: no code of its own, sane sizes, finite weights.

* **No code from a model directory.** A Hugging Face ``config.json`` or ``tokenizer_config.json``
  with an ``auto_map`` names Python files of the directory's own that transformers would import
  (after a ``[y/N]`` prompt on a terminal, or at once when told to trust remote code). interpkit
  refuses such a directory before transformers reads it, and passes trust_remote_code=False to
  every loader besides (:func:`refuse_remote_code`).
* **Native configs** (:func:`check_native_fields`): every size a positive int within generous
  bounds, and a model that fits in the memory available here, checked before anything is
  allocated; a config asking for a 512 TB embedding is a ModelLoadError, not an allocation.
* **Finite weights** (:func:`check_finite_weights`): a NaN or infinite weight is refused at load,
  naming the tensor, rather than surfacing later as a NaN metric blamed on the first patch.

    >>> check_native_fields({"d_model": 32, "d_head": 8, "n_layers": 1, "n_ctx": 16, "n_heads": 4,
    ...                      "d_vocab": 50, "attn_only": True})
    >>> check_native_fields({"d_model": -1, "d_head": 8, "n_layers": 1, "n_ctx": 16, "n_heads": 4, "d_vocab": 50})
    Traceback (most recent call last):
    ...
    interpkit.errors.ModelLoadError: native config field d_model must be at least 1, got -1
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.errors import ModelLoadError, check_int

if TYPE_CHECKING:
    import torch

CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")

# Generous upper bounds: far above any model a native directory holds, far below an absurd allocation.
SIZE_LIMITS = {
    "d_model": 2**16,
    "d_head": 2**12,
    "n_layers": 2**10,
    "n_ctx": 2**20,
    "n_heads": 2**10,
    "d_vocab": 2**24,
    "d_mlp": 2**20,
    "n_key_value_heads": 2**10,
    "d_vocab_out": 2**24,
}
REQUIRED_SIZES = ("d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_vocab")


def read_json_config(path: Path) -> Any:
    """The JSON in ``path``, or a ModelLoadError saying why it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ModelLoadError(f"cannot read the model config {str(path)!r}: not valid JSON ({reason})") from None


def refuse_remote_code(folder: Path) -> None:
    """ModelLoadError if a config in ``folder`` has an ``auto_map`` (code of the directory's own)."""
    for name in CODE_CONFIGS:
        path = folder / name
        if not path.is_file():
            continue
        data = read_json_config(path)
        if isinstance(data, dict) and "auto_map" in data:
            mapped = data["auto_map"]
            shown = ", ".join(map(str, mapped)) if isinstance(mapped, (dict, list)) else repr(mapped)
            raise ModelLoadError(
                f"{str(path)!r} has an 'auto_map' ({shown[:200]}): the directory ships Python code of its own for "
                "transformers to import, and interpkit never runs code from a model directory "
                "(trust_remote_code=False). Use a model of an architecture transformers has built in, or, if the "
                "standard class fits the weights, remove 'auto_map' from that file"
            )


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_native_fields(fields: Mapping[str, Any]) -> None:
    """ModelLoadError unless ``fields`` describe a native model that can be built here (sizes, memory)."""
    if not isinstance(fields, Mapping):
        raise ModelLoadError(f"native config fields must be an object, got {type(fields).__name__}")
    bad = [k for k in fields if not isinstance(k, str)]
    if bad:
        raise ModelLoadError(f"native config field names must be strings, got {bad[:3]}")
    missing = [k for k in REQUIRED_SIZES if fields.get(k) is None]
    if missing:
        raise ModelLoadError(f"native config lacks the size field(s) {missing}; it needs {list(REQUIRED_SIZES)}")
    sizes: dict[str, int] = {}
    for key, limit in SIZE_LIMITS.items():
        if fields.get(key) is None or (key == "d_vocab_out" and fields[key] == -1):
            continue
        sizes[key] = check_int(fields[key], f"native config field {key}", ModelLoadError, minimum=1, maximum=limit)  # type: ignore[assignment]
    kv = sizes.get("n_key_value_heads")
    if kv is not None and sizes["n_heads"] % kv:
        raise ModelLoadError(f"native config: n_heads={sizes['n_heads']} is not a multiple of n_key_value_heads={kv}")
    if fields.get("trust_remote_code"):
        raise ModelLoadError("native config sets trust_remote_code: interpkit never runs code from a model directory")
    d, n_layers, n_ctx = sizes["d_model"], sizes["n_layers"], sizes["n_ctx"]
    heads = sizes["n_heads"] * sizes["d_head"]
    d_mlp = 0 if fields.get("attn_only") else sizes.get("d_mlp", 4 * d)
    weights = d * (sizes["d_vocab"] + sizes.get("d_vocab_out", sizes["d_vocab"]) + n_ctx)
    weights += n_layers * (4 * d * heads + 3 * d * d_mlp)
    need = 4 * weights + n_layers * n_ctx * n_ctx  # float32 weights, one causal mask (bool) per layer
    free = _available_bytes()
    if free is not None and need > free:
        raise ModelLoadError(
            f"native config would need about {need / 2**30:,.1f} GiB to build (d_vocab={sizes['d_vocab']}, "
            f"d_model={d}, n_layers={n_layers}, n_ctx={n_ctx}: weights and one n_ctx x n_ctx mask per layer), "
            f"more than the {free / 2**30:,.1f} GiB free here"
        )


def check_finite_weights(named: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    """ModelLoadError naming the first floating tensor holding NaN or infinity."""
    import torch

    for name, t in named:
        if not t.is_floating_point() or t.device.type == "meta":
            continue
        with torch.no_grad():  # a sum is finite when every value is (one pass, no mask); else look closely
            if bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all()):
                continue
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        raise ModelLoadError(
            f"weight {name!r} of {where} holds {n_nan} NaN and {n_inf} infinite value(s) of {t.numel()}: the "
            "file is damaged or was saved from a diverged run; interpkit refuses to load it"
        )
