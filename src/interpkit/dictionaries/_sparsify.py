"""sparsify's layout (``cfg.json`` + ``sae.safetensors``), read and written; see :mod:`._formats`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.dictionaries._dictionary import Dictionary
from interpkit.dictionaries._errors import DictionaryError
from interpkit.dictionaries._formats import _build, _require, read_json, read_tensors

if TYPE_CHECKING:
    import torch


# ---------------------------------------------------------------------------------------- sparsify
def save_sparsify(d: Dictionary) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if d.activation != "topk" or d.rescale_by_decoder_norm:
        raise DictionaryError(
            f"sparsify stores TopK coders only; this one is {d.activation}. Save it as format='interpkit' or 'saelens'"
        )
    if d.d_in != d.d_out:
        raise DictionaryError(f"sparsify coders write what they read in width; d_in={d.d_in}, d_out={d.d_out}")
    if d.kind == "sae" and not d.center_input:
        raise DictionaryError("sparsify's SAEs always encode x - b_dec; this SAE does not (center_input=False)")
    source = d.meta.get("source_config") if d.meta.get("source_format") == "sparsify" else None
    config: dict[str, Any] = (
        dict(source) if source else {"activation": "topk", "expansion_factor": 32, "multi_topk": False}
    )
    config.update(
        activation="topk",
        normalize_decoder=bool(config.get("normalize_decoder", d.kind == "sae")),
        num_latents=d.n_latents,
        k=int(d.k),
        skip_connection=d.W_skip is not None,
        transcode=d.kind != "sae",
        d_in=d.d_in,
        interpkit={"input_site": d.input_site, "output_site": d.output_site},
    )
    tensors = {"encoder.weight": d.W_enc, "encoder.bias": d.b_enc, "W_dec": d.W_dec, "b_dec": d.b_dec}
    if d.W_skip is not None:
        tensors["W_skip"] = d.W_skip
    return config, tensors


def _sparsify_sites(path: Path, transcode: bool) -> tuple[str | None, str | None]:
    """Sites from sparsify's folder names (``layers.12``: the block's output; ``layers.12.mlp``: the MLP)."""
    name = path.resolve().name
    if m := re.fullmatch(r"(?:model\.)?layers[._](\d+)", name):
        site = f"L{m.group(1)}.resid_post"
        return site, site
    if m := re.fullmatch(r"(?:model\.)?layers[._](\d+)[._]mlp", name):
        layer = m.group(1)
        return (f"blocks.{layer}.mlp.hook_in" if transcode else f"L{layer}.mlp"), f"L{layer}.mlp"
    return None, None


def load_sparsify(path: Path) -> Dictionary:
    config = read_json(path / "cfg.json")
    if config.get("activation", "topk") != "topk":
        raise DictionaryError(
            f"{str(path)!r}: sparsify activation {config.get('activation')!r} is not supported (topk)"
        )
    tensors = read_tensors(path / "sae.safetensors")
    _require(tensors, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), path / "sae.safetensors")
    transcode = bool(config.get("transcode", False))
    skip = tensors.get("W_skip")
    if skip is not None and not transcode:
        raise DictionaryError(f"{str(path)!r}: an SAE with a skip connection is not supported (transcoders only)")
    own = config.get("interpkit") or {}
    guess_in, guess_out = _sparsify_sites(path, transcode)
    return _build(
        path,
        W_enc=tensors["encoder.weight"],
        b_enc=tensors["encoder.bias"],
        W_dec=tensors["W_dec"],
        b_dec=tensors["b_dec"],
        W_skip=skip,
        activation="topk",
        k=config.get("k"),
        kind="sae" if not transcode else ("skip_transcoder" if skip is not None else "transcoder"),
        center_input=not transcode,
        input_site=own.get("input_site") or guess_in,
        output_site=own.get("output_site") or guess_out,
        meta={"source_config": config},
    )
