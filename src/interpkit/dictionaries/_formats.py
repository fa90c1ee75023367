"""Dictionary files: interpkit's own layout, SAELens, sparsify and circuit-tracer, read and written.

Safetensors weights and JSON (circuit-tracer: YAML) configs only; nothing is ever unpickled.
The layouts, as their libraries write them (read from their source, November 2026):

=================  ==========================  =================================================
layout             files                       tensors
=================  ==========================  =================================================
interpkit          ``config.json``             ``W_enc (n, d_in)``, ``b_enc``, ``W_dec (n, d_out)``,
                   ``dictionary.safetensors``  ``b_dec``, ``W_skip (d_out, d_in)``, ``threshold``
SAELens (>= 6)     ``cfg.json``                ``W_enc (d_in, d_sae)``, ``b_enc``, ``W_dec (d_sae,
                   ``sae_weights.safetensors`` d_out)``, ``b_dec``, ``threshold``, ``W_skip``
sparsify           ``cfg.json``                ``encoder.weight (n, d)``, ``encoder.bias``,
                   ``sae.safetensors``         ``W_dec (n, d)``, ``b_dec``, ``W_skip (d, d)``
circuit-tracer     ``config.yaml`` (optional)  per layer: ``W_enc (n, d)``, ``W_dec (n, d)``,
                   ``layer_{i}.safetensors``   ``b_enc``, ``b_dec``, ``W_skip``, ``k``,
                                               ``activation_function.threshold``
=================  ==========================  =================================================

SAELens's ``architecture`` maps to an activation (``standard``/``transcoder``/
``skip_transcoder``: ReLU; ``topk``: TopK, with ``rescale_acts_by_decoder_norm``; ``jumprelu``,
``jumprelu_transcoder``: JumpReLU; a BatchTopK SAE is saved as ``jumprelu`` with its threshold,
as SAELens does). Pre-6.0 SAELens configs (``hook_point``, ``activation_fn_str``) are read too.
sparsify's coders are TopK (``groupmax`` is refused); an SAE encodes ``x - b_dec``, a transcoder
``x``. circuit-tracer's activation is JumpReLU when a threshold is stored, TopK (no ReLU:
``topk_raw``) when ``k`` is, else ReLU; its hooks are relative to ``blocks.{layer}``.

Loading keeps the source config in ``meta["source_config"]``, and saving back to the same
layout writes it again with only the fields this library owns updated, so a SAELens folder
round-trips bit for bit.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.dictionaries._dictionary import Dictionary
from interpkit.dictionaries._errors import DictionaryError

if TYPE_CHECKING:
    import torch

FORMAT = "interpkit-dictionary/1"
FORMATS = ("interpkit", "saelens", "sparsify", "circuit-tracer")
FILES = {
    "interpkit": ("config.json", "dictionary.safetensors"),
    "saelens": ("cfg.json", "sae_weights.safetensors"),
    "sparsify": ("cfg.json", "sae.safetensors"),
}
SAELENS_VERSION = "6.0.0"  # the config schema written (SAELens reads pre-6 configs differently)


# ---------------------------------------------------------------------------------------- helpers
def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; DictionaryError for a missing or corrupt file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise DictionaryError(f"{str(path)!r} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DictionaryError(
            f"{str(path)!r} is not a readable safetensors file (corrupt or truncated?): {exc}"
        ) from None


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (temporary name, then rename)."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DictionaryError(f"cannot read {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise DictionaryError(f"{str(path)!r} does not hold a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    from interpkit.results import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _require(tensors: dict[str, Any], names: tuple[str, ...], where: Path) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DictionaryError(
            f"{str(where)!r} lacks tensor(s) {', '.join(missing)}; it holds {', '.join(sorted(tensors))}"
        )


def _build(where: Path, **fields: Any) -> Dictionary:
    try:
        return Dictionary(**fields)
    except DictionaryError as exc:
        raise DictionaryError(f"{str(where)!r}: {exc}") from None


# ---------------------------------------------------------------------------------------- detection
def detect(path: Path) -> str:
    """Which layout the folder (or file) ``path`` holds; DictionaryError listing what was looked for."""
    if path.is_file() and path.suffix == ".safetensors":
        return "circuit-tracer"
    if not path.is_dir():
        raise DictionaryError(f"{str(path)!r} is neither a dictionary folder nor a .safetensors file")
    if (path / "config.json").is_file() and (path / "dictionary.safetensors").is_file():
        return "interpkit"
    if (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file():
        return "saelens"
    if (path / "cfg.json").is_file() and (path / "sae.safetensors").is_file():
        return "sparsify"
    if list(path.glob("layer_*.safetensors")):
        return "circuit-tracer"
    raise DictionaryError(
        f"{str(path)!r} holds no dictionary: expected config.json + dictionary.safetensors (interpkit), "
        "cfg.json + sae_weights.safetensors (SAELens), cfg.json + sae.safetensors (sparsify) "
        "or layer_*.safetensors (circuit-tracer)"
    )


def load(path: str | os.PathLike, device: Any = None, dtype: Any = None) -> Dictionary:
    """Read the dictionary in folder ``path`` (any layout above, detected); see :mod:`interpkit.dictionaries`."""
    p = Path(path).expanduser()
    fmt = detect(p)
    if fmt == "interpkit":
        d = _load_interpkit(p)
    elif fmt == "saelens":
        d = _load_saelens(p)
    elif fmt == "sparsify":
        from interpkit.dictionaries._sparsify import load_sparsify

        d = load_sparsify(p)
    else:
        from interpkit.dictionaries._transcoders import load_circuit_tracer

        found = load_circuit_tracer(p)
        if len(found) != 1:
            raise DictionaryError(
                f"{str(p)!r} holds {len(found)} per-layer transcoders: read them with "
                "ik.dictionaries.load_transcoders(folder), or load one layer_N.safetensors file"
            )
        d = next(iter(found.values()))
    d.meta["source_format"] = fmt
    d.meta["source_path"] = str(p)
    return d if device is None and dtype is None else d.to(device, dtype)


def save(d: Dictionary, path: str | os.PathLike, format: str = "interpkit") -> Path:
    """Write ``d`` to folder ``path`` in ``format`` (see :meth:`Dictionary.save`)."""
    if format not in FORMATS:
        raise DictionaryError(f"unknown dictionary format {format!r}; valid: {', '.join(FORMATS)}")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise DictionaryError(f"{str(out)!r} exists and is not a folder")
    if format == "circuit-tracer":
        from interpkit.dictionaries._transcoders import save_transcoders

        layer = _layer_of(d)
        save_transcoders({layer: d}, out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    from interpkit.dictionaries._sparsify import save_sparsify

    writer = {"interpkit": _save_interpkit, "saelens": _save_saelens, "sparsify": save_sparsify}[format]
    config, tensors = writer(d)
    cfg_name, weights_name = FILES[format]
    write_tensors(out / weights_name, tensors, {"format": FORMAT} if format == "interpkit" else None)
    write_json(out / cfg_name, config)
    return out


def _layer_of(d: Dictionary) -> int:
    for site in (d.input_site, d.output_site):
        if site and (m := re.search(r"(?:^L|blocks\.)(\d+)", site)):
            return int(m.group(1))
    raise DictionaryError(f"cannot tell the layer of {d!r}: give it an input_site such as 'blocks.3.mlp.hook_in'")


# ---------------------------------------------------------------------------------------- interpkit
_SCALARS = ("activation", "k", "kind", "center_input", "rescale_by_decoder_norm", "input_site", "output_site")


def _save_interpkit(d: Dictionary) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = {
        "format": FORMAT,
        **{name: getattr(d, name) for name in _SCALARS},
        "n_latents": d.n_latents,
        "d_in": d.d_in,
        "d_out": d.d_out,
        "dtype": _dtype_name(d.W_enc),
        "meta": {k: v for k, v in d.meta.items() if k not in ("source_path",)},
    }
    return config, d.tensors()


def _load_interpkit(path: Path) -> Dictionary:
    config = read_json(path / "config.json")
    if config.get("format") != FORMAT:
        raise DictionaryError(f"{str(path / 'config.json')!r} is not an interpkit dictionary config ({FORMAT})")
    tensors = read_tensors(path / "dictionary.safetensors")
    _require(tensors, ("W_enc", "b_enc", "W_dec", "b_dec"), path / "dictionary.safetensors")
    fields = {name: config.get(name) for name in _SCALARS if name in config}
    return _build(path, **tensors, **fields, meta=dict(config.get("meta") or {}))


# ---------------------------------------------------------------------------------------- SAELens
_SAELENS_ARCH = {
    ("sae", "relu"): "standard",
    ("sae", "topk"): "topk",
    ("sae", "jumprelu"): "jumprelu",
    ("sae", "batchtopk"): "jumprelu",
    ("transcoder", "relu"): "transcoder",
    ("skip_transcoder", "relu"): "skip_transcoder",
    ("transcoder", "jumprelu"): "jumprelu_transcoder",
}


def _save_saelens(d: Dictionary) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    arch = _SAELENS_ARCH.get((d.kind, d.activation))
    if arch is None:
        can = ", ".join(f"{k} {a}" for k, a in _SAELENS_ARCH)
        raise DictionaryError(
            f"SAELens has no layout for a {d.activation} {d.kind}; it stores: {can}. "
            "Save it as format='interpkit', 'sparsify' (TopK) or 'circuit-tracer' (transcoders)"
        )
    source = d.meta.get("source_config") if d.meta.get("source_format") == "saelens" else None
    config: dict[str, Any] = dict(source) if source else {}
    metadata = dict(config.get("metadata") or {})
    metadata.setdefault("sae_lens_version", SAELENS_VERSION)
    if d.input_site:
        metadata["hook_name"] = d.input_site
    if d.kind != "sae" and d.output_site:
        metadata["hook_name_out"] = d.output_site
    config.update(
        architecture=arch,
        d_in=d.d_in,
        d_sae=d.n_latents,
        dtype=_dtype_name(d.W_enc),
        apply_b_dec_to_input=bool(d.center_input),
        metadata=metadata,
    )
    config.setdefault("device", "cpu")
    config.setdefault("normalize_activations", "none")
    config.setdefault("reshape_activations", "none")
    if d.kind != "sae":
        config["d_out"] = d.d_out
    if arch == "topk":
        config.update(k=int(d.k), rescale_acts_by_decoder_norm=bool(d.rescale_by_decoder_norm))
    elif d.rescale_by_decoder_norm:
        raise DictionaryError("rescale_by_decoder_norm exists in SAELens's layout only for TopK SAEs")
    tensors = {"W_enc": d.W_enc.T, "b_enc": d.b_enc, "W_dec": d.W_dec, "b_dec": d.b_dec}
    if d.threshold is not None and arch.startswith("jumprelu"):
        tensors["threshold"] = d.threshold
    if d.W_skip is not None:
        tensors["W_skip"] = d.W_skip
    return config, tensors


def _saelens_activation(config: dict[str, Any], where: Path) -> tuple[str, str, int | None]:
    """(kind, activation, k) from a SAELens config, new (architecture) or pre-6 (activation_fn_str)."""
    arch = config.get("architecture")
    if arch is None:  # pre-6.0: the activation function names the architecture
        fn = config.get("activation_fn_str") or config.get("activation_fn") or "relu"
        k = (config.get("activation_fn_kwargs") or {}).get("k")
        arch = "topk" if fn == "topk" else "standard"
        if fn not in ("relu", "topk"):
            raise DictionaryError(f"{str(where)!r}: SAELens activation {fn!r} is not supported (relu, topk)")
        return "sae", ("topk" if fn == "topk" else "relu"), k
    table = {
        "standard": ("sae", "relu"),
        "topk": ("sae", "topk"),
        "jumprelu": ("sae", "jumprelu"),
        "transcoder": ("transcoder", "relu"),
        "skip_transcoder": ("skip_transcoder", "relu"),
        "jumprelu_transcoder": ("transcoder", "jumprelu"),
    }
    if arch not in table:
        raise DictionaryError(
            f"{str(where)!r}: SAELens architecture {arch!r} is not supported; supported: {', '.join(table)}"
        )
    kind, activation = table[arch]
    return kind, activation, config.get("k") if activation == "topk" else None


def _load_saelens(path: Path) -> Dictionary:
    config = read_json(path / "cfg.json")
    where = path / "cfg.json"
    kind, activation, k = _saelens_activation(config, where)
    for key, ok in (("normalize_activations", (None, "none", False)), ("reshape_activations", (None, "none"))):
        if config.get(key) not in ok:
            raise DictionaryError(
                f"{str(where)!r}: {key}={config.get(key)!r} is not supported (fold it into the weights first)"
            )
    tensors = read_tensors(path / "sae_weights.safetensors")
    _require(tensors, ("W_enc", "b_enc", "W_dec", "b_dec"), path / "sae_weights.safetensors")
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not bool((scale == 1).all()):
        raise DictionaryError(f"{str(path)!r}: a finetuning scaling_factor other than 1 is not supported")
    if activation == "jumprelu":
        _require(tensors, ("threshold",), path / "sae_weights.safetensors")
    if kind == "skip_transcoder":
        _require(tensors, ("W_skip",), path / "sae_weights.safetensors")
    metadata = config.get("metadata") or {}
    hook_in = metadata.get("hook_name") or config.get("hook_name") or config.get("hook_point")
    hook_out = metadata.get("hook_name_out") or config.get("hook_name_out")
    return _build(
        path,
        W_enc=tensors["W_enc"].T,
        b_enc=tensors["b_enc"],
        W_dec=tensors["W_dec"],
        b_dec=tensors["b_dec"],
        threshold=tensors.get("threshold") if activation == "jumprelu" else None,
        W_skip=tensors.get("W_skip"),
        activation=activation,
        k=k,
        kind=kind,
        center_input=bool(config.get("apply_b_dec_to_input", kind == "sae")) and kind == "sae",
        rescale_by_decoder_norm=bool(config.get("rescale_acts_by_decoder_norm", False)),
        input_site=hook_in,
        output_site=hook_out if kind != "sae" else hook_in,
        meta={"source_config": config},
    )
