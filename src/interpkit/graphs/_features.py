"""What the nodes of an attribution graph are: MLP neurons, or per-layer transcoder latents.

Both are read as one shape per layer (:class:`LayerFeatures`): the active units at each position
with their activation and pre-activation, the encoder rows the pre-activations read from the MLP
input (after its norm), the decoder rows they write to the MLP's raw output, the constant the
layer writes (``b_dec`` / ``b_out``) and what the features miss (the error, one node per position).

- ``"neurons"``: each MLP neuron at each position, its gate (gated MLPs: ``act(gate)``) or its
  activation ratio ``act(pre) / pre`` frozen at the run, so it is linear in its pre-activation
  (``W_in`` row, or the ``up`` row of a gated MLP). The MLP output is exactly the sum of its
  neurons' writes plus ``b_out``: no error nodes, the exact baseline and test oracle.
- transcoders (``{layer: tc}``, a list, or a folder for :mod:`interpkit.dictionaries`): any object
  with ``encode(x) -> (..., n_latents)`` (activations after the nonlinearity), ``W_enc``
  ``(n_latents, d_in)``, ``b_enc``, ``W_dec`` ``(n_latents, d_model)``, ``b_dec`` and optionally
  ``W_skip`` ``(d_model, d_in)`` (a skip transcoder's linear term, ``x @ W_skip.T``). It reads
  ``blocks.{l}.mlp.hook_in`` (the MLP input after its norm) and replaces ``blocks.{l}.mlp.hook_out``
  (the MLP output before any post-norm). A layer without a transcoder has no features: its whole
  MLP output is its error nodes.

With ``skip_first`` (the default of :func:`interpkit.graphs.attribute`, circuit-tracer's
``zero_bos``), the first position's features and error are not nodes: their writes are held as
constants (``held``). The first token is where models park attention (a BOS token, or the first
word where there is none); its residual stream is orders of magnitude larger than the others',
and there a model with frozen norms is far from the real one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.graphs._frozen import GraphError

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model


@dataclasses.dataclass
class LayerFeatures:
    """The active units of one layer on the prompt (``k`` of them) and the weights they read and write."""

    layer: int
    pos: torch.Tensor  # (k,) long
    idx: torch.Tensor  # (k,) long: neuron or latent index
    act: torch.Tensor  # (k,)
    pre: torch.Tensor  # (k,): what the node's incoming edges and constant sum to
    w_enc: torch.Tensor | None  # (n_units, d_in)
    b_enc: torch.Tensor | None  # (n_units,)
    w_dec: torch.Tensor | None  # (n_units, d_out)
    dec_bias: torch.Tensor | None  # (d_out,)
    error: torch.Tensor | None  # (pos, d_out): the raw MLP output the features miss (None: no error nodes)
    held: torch.Tensor | None = None  # (pos, d_out): writes held as constants (the skipped first position)

    @property
    def n(self) -> int:
        return int(self.pos.shape[0])

    def write(self, n_pos: int, act: torch.Tensor | None = None) -> torch.Tensor:
        """What the active units write to the MLP output, ``(n_pos, d_out)`` (``act``: other activations)."""
        import torch

        act = self.act if act is None else act
        units, where = self.idx.unique(return_inverse=True)
        dense = torch.zeros(n_pos, len(units), dtype=self.w_dec.dtype, device=self.w_dec.device)
        dense[self.pos, where] = act.to(dense)
        return dense @ self.w_dec[units]


def transcoder_map(model: Model, features: Any) -> dict[int, Any]:
    """``{layer: transcoder}`` from a dict, a list (index = layer) or a folder of dictionaries."""
    if isinstance(features, (str, Path)):
        return _from_folder(model, Path(features))
    if isinstance(features, dict):
        items = list(features.items())
    elif isinstance(features, (list, tuple)):
        items = list(enumerate(features))
    else:
        raise GraphError(
            f"features must be 'neurons', a dict {{layer: transcoder}}, a list or a folder; got {type(features).__name__}"
        )
    out = {int(layer): tc for layer, tc in items if tc is not None}
    bad = sorted(layer for layer in out if not 0 <= layer < model.cfg.n_layers)
    if bad:
        raise GraphError(f"transcoders given for layers {bad}; {model.name} has layers 0..{model.cfg.n_layers - 1}")
    if not out:
        raise GraphError("no transcoders given: pass features='neurons' or at least one {layer: transcoder}")
    for layer, tc in out.items():
        _check_protocol(model, layer, tc)
    return out


def _check_protocol(model: Model, layer: int, tc: Any) -> None:
    missing = [name for name in ("encode", "W_enc", "W_dec", "b_dec") if getattr(tc, name, None) is None]
    if missing:
        raise GraphError(
            f"the transcoder for layer {layer} lacks {', '.join(missing)} (needs encode, W_enc, b_enc, W_dec, b_dec)"
        )
    d = model.cfg.d_model
    n_lat = tc.W_dec.shape[0]
    if tuple(tc.W_dec.shape) != (n_lat, d) or tc.W_enc.shape[0] != n_lat:
        raise GraphError(
            f"the transcoder for layer {layer} has W_enc {tuple(tc.W_enc.shape)} and W_dec {tuple(tc.W_dec.shape)}; "
            f"expected (n_latents, d_in) and (n_latents, {d}) for {model.name}"
        )


def _from_folder(model: Model, folder: Path) -> dict[int, Any]:
    """Per-layer transcoders from a folder (:func:`interpkit.dictionaries.load_transcoders`: circuit-tracer
    sets, or ``layer_{i}/`` subfolders in any layout it reads)."""
    from interpkit.dictionaries import load_transcoders
    from interpkit.errors import InterpkitError

    if not folder.is_dir():
        raise GraphError(f"features={str(folder)!r} is neither 'neurons' nor an existing folder of transcoders")
    try:
        found = load_transcoders(folder)
    except InterpkitError as exc:
        raise GraphError(f"features={str(folder)!r}: {exc} (read by interpkit.dictionaries.load_transcoders)") from None
    return transcoder_map(model, found)


def read_features(
    model: Model, store: dict[str, torch.Tensor], features: Any, dtype: Any, skip_first: bool = False
) -> list[LayerFeatures]:
    """Every layer's :class:`LayerFeatures` on the run in ``store`` (batch 1, resolved hook names)."""
    get = lambda name: store[model.resolve_hook(name)][0]  # noqa: E731
    if isinstance(features, str) and features == "neurons":
        layers = [_neurons(model, layer, get, dtype) for layer in range(model.cfg.n_layers)]
    else:
        tcs = transcoder_map(model, features)
        layers = [_transcoder(model, layer, tcs.get(layer), get, dtype) for layer in range(model.cfg.n_layers)]
    return [_hold_first(lf, get) for lf in layers] if skip_first else layers


def _hold_first(lf: LayerFeatures, get: Any) -> LayerFeatures:
    """``lf`` with the first position's features and error moved into ``held``."""
    import torch

    first = lf.pos == 0
    n_pos = get(f"blocks.{lf.layer}.mlp.hook_out").shape[0]
    d_out = lf.error.shape[-1] if lf.error is not None else lf.w_dec.shape[-1]
    ref = lf.error if lf.error is not None else lf.w_dec
    held = torch.zeros(n_pos, d_out, dtype=ref.dtype, device=ref.device)
    if bool(first.any()):
        held[0] = lf.act[first].to(ref) @ lf.w_dec[lf.idx[first]].to(ref)
    error = lf.error
    if error is not None:
        held[0] += error[0]
        error = error.clone()
        error[0] = 0
    keep = ~first
    return dataclasses.replace(
        lf, pos=lf.pos[keep], idx=lf.idx[keep], act=lf.act[keep], pre=lf.pre[keep], error=error, held=held
    )


def neuron_hooks(model: Model) -> list[str]:
    out = []
    for layer in range(model.cfg.n_layers):
        gated = f"blocks.{layer}.mlp.hook_pre_linear" in model.bridge.hook_dict
        out += [f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.mlp.hook_pre" + ("_linear" if gated else "")]
    return out


def _neurons(model: Model, layer: int, get: Any, dtype: Any) -> LayerFeatures:
    import torch

    mlp = model.bridge.blocks[layer].mlp
    gated = f"blocks.{layer}.mlp.hook_pre_linear" in model.bridge.hook_dict
    post = get(f"blocks.{layer}.mlp.hook_post").to(dtype)  # (pos, d_mlp)
    pre = get(f"blocks.{layer}.mlp.hook_pre" + ("_linear" if gated else "")).to(dtype)
    w_in, w_out = getattr(mlp, "W_in", None), getattr(mlp, "W_out", None)
    d, d_mlp = model.cfg.d_model, post.shape[-1]
    if w_in is None or w_out is None or tuple(w_in.shape) != (d, d_mlp) or tuple(w_out.shape) != (d_mlp, d):
        raise GraphError(f"cannot read the MLP weights of layer {layer} of {model.name} as neurons")
    with torch.no_grad():
        b_in, b_out = getattr(mlp, "b_in", None), getattr(mlp, "b_out", None)
        active = ((post != 0) & (pre != 0)).nonzero()
        pos, idx = active[:, 0], active[:, 1]
        return LayerFeatures(
            layer=layer,
            pos=pos,
            idx=idx,
            act=post[pos, idx],
            pre=pre[pos, idx],
            w_enc=w_in.detach().T.to(dtype),
            b_enc=None if b_in is None else b_in.detach().to(dtype),
            w_dec=w_out.detach().to(dtype),
            dec_bias=None if b_out is None else b_out.detach().to(dtype),
            error=None,
        )


def _transcoder(model: Model, layer: int, tc: Any, get: Any, dtype: Any) -> LayerFeatures:
    import torch

    raw = get(f"blocks.{layer}.mlp.hook_out").to(dtype)  # (pos, d_model)
    empty = torch.zeros(0, dtype=torch.long, device=raw.device)
    if tc is None:  # no transcoder: the whole MLP output is this layer's error
        return LayerFeatures(layer, empty, empty, raw.new_zeros(0), raw.new_zeros(0), None, None, None, None, raw)
    x = get(f"blocks.{layer}.mlp.hook_in")
    with torch.no_grad():
        z = tc.encode(x.to(tc.W_enc.dtype)).to(dtype)  # (pos, n_latents)
        w_enc, w_dec = tc.W_enc.detach().to(dtype), tc.W_dec.detach().to(dtype)
        b_enc = None if getattr(tc, "b_enc", None) is None else tc.b_enc.detach().to(dtype)
        b_dec = tc.b_dec.detach().to(dtype)
        pre = x.to(dtype) @ w_enc.T + (0 if b_enc is None else b_enc)
        recon = z @ w_dec + b_dec
        skip = getattr(tc, "W_skip", None)
        if skip is not None:
            recon = recon + x.to(dtype) @ skip.detach().to(dtype).T
        active = (z != 0).nonzero()
        pos, idx = active[:, 0], active[:, 1]
        return LayerFeatures(layer, pos, idx, z[pos, idx], pre[pos, idx], w_enc, b_enc, w_dec, b_dec, raw - recon)


def skip_weights(model: Model, features: Any) -> dict[int, Any]:
    """``{layer: W_skip}`` of the skip transcoders among ``features``."""
    if isinstance(features, str) and features == "neurons":
        return {}
    tcs = transcoder_map(model, features)
    return {layer: tc.W_skip for layer, tc in tcs.items() if getattr(tc, "W_skip", None) is not None}
