"""interpkit's native model directory: ``config.json`` + ``model.safetensors``, no Hugging Face.

``config.json`` holds ``{"format": "interpkit-native", "bridge_config": {...}, ...}`` where
``bridge_config`` are ``TransformerBridgeConfig`` fields, plus free metadata (``name``,
``description``, ``head_scores``, training details). ``model.safetensors`` holds the bridge's
state dict. Toy models shipped with interpkit use this format; so can any hand-built model:

    >>> import interpkit as ik
    >>> model = ik.models.boot_native({"d_model": 32, "d_head": 8, "n_layers": 1, "n_ctx": 16,
    ...                                "n_heads": 4, "d_vocab": 50, "attn_only": True})
    >>> model.cfg.n_layers
    1
    >>> ik.models.save_native(model, "my-toy")            # doctest: +SKIP
    >>> ik.load_model("my-toy")                           # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from interpkit.errors import ModelLoadError, check_int
from interpkit.models._checks import check_finite_weights, check_native_fields, read_json_config
from interpkit.models._model import Model

FORMAT = "interpkit-native"
_SKIP_FIELDS = {"dtype", "device", "architecture", "n_params"}


def is_native_dir(path: Path) -> bool:
    """Whether ``path`` holds a readable native config (a broken one is for :func:`load_native` to report)."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8-sig")).get("format") == FORMAT
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError, RecursionError):
        return False


def _bridge_config(fields: dict[str, Any]) -> Any:
    from transformer_lens.config import TransformerBridgeConfig

    return TransformerBridgeConfig.from_dict(dict(fields))


# What TransformerBridgeConfig and the native boot raise for field values of the wrong kind.
_BOOT_ERRORS = (TypeError, ValueError, KeyError, AttributeError, AssertionError, ZeroDivisionError, RuntimeError,
                OverflowError, IndexError)  # fmt: skip


def boot_native(fields: dict[str, Any], seed: int | None = 0, spec: str = "native") -> Model:
    """A randomly initialised native model from ``TransformerBridgeConfig`` fields (seeded).

    The sizes are checked first (:func:`interpkit.models._checks.check_native_fields`): a field
    of the wrong type, out of range, or a model too large for this machine is a ModelLoadError.
    """
    from transformer_lens.model_bridge.sources.native import boot

    check_native_fields(fields)
    if seed is not None:
        check_int(seed, "seed", ModelLoadError, minimum=0, maximum=2**63 - 1)
    fields = {**fields, "seed": seed} if seed is not None else dict(fields)
    try:
        bridge = boot(_bridge_config(fields)).eval()
    except _BOOT_ERRORS as exc:
        raise ModelLoadError(
            f"cannot build a native model from its config fields: {type(exc).__name__}: {exc}"
        ) from None
    return Model(bridge, None, spec=spec, info={"name": spec, "bridge_config": fields})


def _config_fields(model: Model) -> dict[str, Any]:
    fields = dict(model.info.get("bridge_config") or {})
    if not fields:
        raise ModelLoadError(
            f"model {model.spec!r} was not built from native config fields; save_native only "
            "writes models made by boot_native or load_model of a native directory"
        )
    return {k: v for k, v in fields.items() if k not in _SKIP_FIELDS}


def save_native(model: Model, out_dir: str | os.PathLike, **metadata: Any) -> Path:
    """Write ``model`` as a native directory (atomically: a temporary folder, then rename)."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.bridge.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        config = {
            "format": FORMAT,
            "name": metadata.pop("name", out.name),
            **metadata,
            "bridge_config": _config_fields(model),
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_native(path: Path, spec: str | None = None) -> Model:
    """Load a native directory written by :func:`save_native`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from interpkit.models._hashing import file_sha256

    config = read_json_config(path / "config.json")
    where = str(path / "config.json")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelLoadError(f'{where!r} is not a native model config (no "format": "{FORMAT}")')
    fields = config.get("bridge_config")
    if not isinstance(fields, dict):
        raise ModelLoadError(f"{where!r} has no 'bridge_config' object")
    if not isinstance(config.get("name", ""), str):
        raise ModelLoadError(f"{where!r}: 'name' must be a string, got {config['name']!r:.60}")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"native model directory {str(path)!r} has no model.safetensors")
    try:
        check_native_fields(fields)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{where!r}: {exc}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {str(weights)!r}: {exc} (truncated or corrupt safetensors file)") from exc
    check_finite_weights(sorted(state.items()), repr(str(weights)))
    model = boot_native(fields, seed=None, spec=spec or str(path))
    expected = model.bridge.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(
            f"weights in {str(weights)!r} do not fit its config: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    for name, tensor in sorted(state.items()):
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelLoadError(
                f"weight {name!r} in {str(weights)!r} has shape {tuple(tensor.shape)}, but the config in {where!r} "
                f"makes it {tuple(expected[name].shape)}"
            )
    model.bridge.load_state_dict(state, strict=True)
    model.weights_hash = file_sha256(weights)
    model.info.update({k: v for k, v in config.items() if k not in ("bridge_config", "device_map")})
    model.info["bridge_config"] = fields
    return model
