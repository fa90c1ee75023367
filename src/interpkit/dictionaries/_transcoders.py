"""Folders of per-layer transcoders: circuit-tracer's layout, and one sub-folder per layer.

Attribution graphs (Ameisen et al. 2025, "Circuit tracing") replace every MLP with a
transcoder, so they need one per layer. Two layouts are read by :func:`load_transcoders`:

* circuit-tracer's: ``layer_{i}.safetensors`` per layer (``W_enc (n, d)``, ``W_dec (n, d)``,
  ``b_enc``, ``b_dec``, optional ``W_skip (d, d)``, ``activation_function.threshold`` for
  JumpReLU, a scalar ``k`` for TopK) and an optional ``config.yaml`` whose
  ``feature_input_hook`` / ``feature_output_hook`` name the hooks relative to ``blocks.{i}``
  (``ln2.hook_normalized``, ``mlp.hook_in``, ``hook_mlp_out``) and whose ``activation`` / ``k``
  give the activation when the files do not. An older release stored ``W_dec`` as ``(d, n)``:
  it is recognised by its shape and transposed;
* one sub-folder per layer (``layer_{i}/``, any layout :func:`interpkit.dictionaries.load`
  reads), as ``experiments/train_transcoders.py`` writes them.

Without a config, circuit-tracer transcoders read ``blocks.{i}.mlp.hook_in`` (the MLP's input
after its norm, on a TransformerLens 4 bridge) and write ``blocks.{i}.hook_mlp_out``.

    >>> tcs = ik.dictionaries.load_transcoders("runs/transcoders")      # doctest: +SKIP
    >>> sorted(tcs)[:3], tcs[0].input_site                              # doctest: +SKIP
    ([0, 1, 2], 'blocks.0.mlp.hook_in')
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from interpkit.dictionaries._dictionary import Dictionary
from interpkit.dictionaries._errors import DictionaryError

DEFAULT_INPUT_HOOK = "mlp.hook_in"
DEFAULT_OUTPUT_HOOK = "hook_mlp_out"
_LAYER_FILE = re.compile(r"^layer_(\d+)\.safetensors$")
_LAYER_DIR = re.compile(r"^layer_?(\d+)$")


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DictionaryError(f"cannot read {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise DictionaryError(f"{str(path)!r} does not hold a mapping")
    return data


def _full_hook(layer: int, hook: str) -> str:
    return hook if hook.startswith("blocks.") else f"blocks.{layer}.{hook}"


def _relative_hook(site: str | None, layer: int, default: str) -> str:
    if not site:
        return default
    prefix = f"blocks.{layer}."
    if site.startswith(prefix):
        return site[len(prefix) :]
    if site == f"L{layer}.mlp":
        return "hook_mlp_out"
    if site.startswith(f"L{layer}."):
        return f"hook_{site.split('.', 1)[1]}"
    raise DictionaryError(f"site {site!r} is not in layer {layer}: circuit-tracer names hooks within blocks.{layer}")


def _load_layer_file(path: Path, layer: int, config: dict[str, Any]) -> Dictionary:
    from interpkit.dictionaries._formats import _build, _require, read_tensors

    t = read_tensors(path)
    _require(t, ("W_enc", "W_dec", "b_enc", "b_dec"), path)
    n, d = t["b_enc"].shape[0], t["b_dec"].shape[0]
    w_enc, w_dec = t["W_enc"], t["W_dec"]
    if tuple(w_enc.shape) == (d, n) and n != d:
        w_enc = w_enc.T
    if tuple(w_dec.shape) == (d, n) and n != d:  # an older release's (d_model, d_transcoder)
        w_dec = w_dec.T
    threshold = t.get("activation_function.threshold")
    k = int(t["k"].item()) if "k" in t else config.get("k")
    activation = config.get("activation")
    if threshold is not None:
        activation = "jumprelu"
        if threshold.ndim == 0:
            threshold = threshold.expand(n).clone()
    elif activation == "topk" or "k" in t:
        activation = "topk_raw"
    elif activation in (None, "relu"):
        activation = "relu"
    else:
        raise DictionaryError(f"{str(path)!r}: circuit-tracer activation {activation!r} is not supported")
    skip = t.get("W_skip")
    return _build(
        path,
        W_enc=w_enc,
        b_enc=t["b_enc"],
        W_dec=w_dec,
        b_dec=t["b_dec"],
        W_skip=skip,
        threshold=threshold,
        activation=activation,
        k=k if activation == "topk_raw" else None,
        kind="skip_transcoder" if skip is not None else "transcoder",
        center_input=False,
        input_site=_full_hook(layer, config.get("feature_input_hook") or DEFAULT_INPUT_HOOK),
        output_site=_full_hook(layer, config.get("feature_output_hook") or DEFAULT_OUTPUT_HOOK),
        meta={"source_config": {k: v for k, v in config.items() if k != "transcoders"}, "layer": layer},
    )


def load_circuit_tracer(path: Path) -> dict[int, Dictionary]:
    """Every ``layer_{i}.safetensors`` in folder ``path`` (or the one file ``path``), by layer."""
    if path.is_file():
        m = _LAYER_FILE.match(path.name)
        config = _read_config(path.parent)
        layer = int(m.group(1)) if m else int(config.get("layer", 0))
        return {layer: _load_layer_file(path, layer, config)}
    config = _read_config(path)
    files = {int(m.group(1)): p for p in path.iterdir() if (m := _LAYER_FILE.match(p.name))}
    return {layer: _load_layer_file(files[layer], layer, config) for layer in sorted(files)}


def load_transcoders(folder: str | os.PathLike, device: Any = None, dtype: Any = None) -> dict[int, Dictionary]:
    """Per-layer transcoders in ``folder``: ``{layer: Dictionary}``, in layer order.

    Reads circuit-tracer's ``layer_{i}.safetensors`` files or ``layer_{i}/`` sub-folders in any
    layout :func:`interpkit.dictionaries.load` reads. A folder with neither is a DictionaryError.
    """
    from interpkit.dictionaries._formats import load

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DictionaryError(f"{str(path)!r} is not a folder of per-layer transcoders")
    found = load_circuit_tracer(path)
    for sub in path.iterdir():
        m = _LAYER_DIR.match(sub.name)
        if m and sub.is_dir() and int(m.group(1)) not in found:
            found[int(m.group(1))] = load(sub)
    if not found:
        raise DictionaryError(
            f"{str(path)!r} holds no per-layer transcoders: expected layer_N.safetensors files (circuit-tracer) "
            "or layer_N/ folders"
        )
    out = {layer: found[layer] for layer in sorted(found)}
    if device is not None or dtype is not None:
        out = {layer: d.to(device, dtype) for layer, d in out.items()}
    return out


def save_transcoders(transcoders: dict[int, Dictionary], folder: str | os.PathLike) -> Path:
    """Write ``{layer: transcoder}`` in circuit-tracer's layout: ``layer_{i}.safetensors`` + ``config.yaml``.

    All must share an activation and hooks (circuit-tracer keeps them once per set); TopK
    transcoders store their ``k``, JumpReLU their threshold. ReLU-before-TopK (``topk``) is not
    circuit-tracer's TopK (``topk_raw``): such a transcoder is refused rather than changed.
    """
    import torch
    import yaml

    from interpkit.dictionaries._formats import write_tensors
    from interpkit.results import write_text_atomic

    out = Path(folder).expanduser()
    hooks: set[tuple[str, str, str]] = set()
    k_values: set[int | None] = set()
    files: dict[int, dict[str, torch.Tensor]] = {}
    for layer, d in sorted(transcoders.items()):
        if d.kind == "sae":
            raise DictionaryError(f"layer {layer}: circuit-tracer stores transcoders, not SAEs")
        if d.activation not in ("relu", "jumprelu", "topk_raw") or d.rescale_by_decoder_norm:
            raise DictionaryError(
                f"layer {layer}: circuit-tracer's activations are relu, jumprelu and topk without ReLU (topk_raw); "
                f"this transcoder is {d.activation}: save it as format='interpkit' instead"
            )
        name = {"relu": "relu", "jumprelu": "jumprelu", "topk_raw": "topk"}[d.activation]
        hooks.add(
            (
                _relative_hook(d.input_site, layer, DEFAULT_INPUT_HOOK),
                _relative_hook(d.output_site, layer, DEFAULT_OUTPUT_HOOK),
                name,
            )
        )
        k_values.add(d.k)
        tensors = {"W_enc": d.W_enc, "W_dec": d.W_dec, "b_enc": d.b_enc, "b_dec": d.b_dec}
        if d.W_skip is not None:
            tensors["W_skip"] = d.W_skip
        if d.threshold is not None:
            tensors["activation_function.threshold"] = d.threshold
        if d.k is not None and d.activation == "topk_raw":
            tensors["k"] = torch.tensor(int(d.k))
        files[layer] = tensors
    if len(hooks) != 1 or len(k_values) != 1:
        raise DictionaryError(
            f"the transcoders disagree on hooks, activation or k ({sorted(hooks)}): one set needs one"
        )
    out.mkdir(parents=True, exist_ok=True)
    for layer, tensors in files.items():
        write_tensors(out / f"layer_{layer}.safetensors", tensors)
    (hook_in, hook_out, activation), k = hooks.pop(), k_values.pop()
    config = {
        "model_kind": "transcoder_set",
        "feature_input_hook": hook_in,
        "feature_output_hook": hook_out,
        "activation": activation if activation != "jumprelu" else None,
    }
    if k is not None:
        config["k"] = int(k)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return out
