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

from interpkit.errors import ModelLoadError
from interpkit.models._model import Model

FORMAT = "interpkit-native"
_SKIP_FIELDS = {"dtype", "device", "architecture", "n_params"}


def is_native_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _bridge_config(fields: dict[str, Any]) -> Any:
    from transformer_lens.config import TransformerBridgeConfig

    return TransformerBridgeConfig.from_dict(dict(fields))


def boot_native(fields: dict[str, Any], seed: int | None = 0, spec: str = "native") -> Model:
    """A randomly initialised native model from ``TransformerBridgeConfig`` fields (seeded)."""
    from transformer_lens.model_bridge.sources.native import boot

    fields = {**fields, "seed": seed} if seed is not None else dict(fields)
    bridge = boot(_bridge_config(fields)).eval()
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

    config = json.loads((path / "config.json").read_text())
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"native model directory {str(path)!r} has no model.safetensors")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {str(weights)!r}: {exc} (truncated or corrupt safetensors file)") from exc
    fields = config.get("bridge_config")
    if not isinstance(fields, dict):
        raise ModelLoadError(f"{str(path / 'config.json')!r} has no 'bridge_config' object")
    model = boot_native(fields, seed=None, spec=spec or str(path))
    missing, unexpected = model.bridge.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"weights in {str(weights)!r} do not fit its config: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    model.weights_hash = file_sha256(weights)
    model.info.update({k: v for k, v in config.items() if k != "bridge_config"})
    model.info["bridge_config"] = fields
    return model
