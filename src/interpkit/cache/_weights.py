"""The few weights the residual-stream analyses need, read from a raw TransformerBridge.

The bridge is not in TransformerLens's compatibility mode: nothing is folded, so the final
norm's weight and bias are still separate from ``W_U``, and the norm's scale is whatever the run
computed (``ln_final.hook_scale``). Shapes are checked against the model config, so an
architecture whose bridge exposes the weights differently fails loudly rather than silently.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from interpkit.cache._errors import CacheError

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model


def _attr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except (AttributeError, NotImplementedError, RuntimeError):
        return None


def _w_o_from_module(model: Model, layer: int) -> torch.Tensor:
    import torch

    c = model.cfg
    o = _attr(model.bridge.blocks[layer].attn, "o")
    inner = _attr(o, "_original_component") if o is not None else None
    weight = _attr(inner, "weight")
    if weight is None:
        raise CacheError(f"cannot find the attention output weight of layer {layer} in {model.name}")
    if isinstance(inner, torch.nn.Linear):  # (d_model, n_heads * d_head)
        weight = weight.T
    if tuple(weight.shape) != (c.n_heads * c.d_head, c.d_model):
        raise CacheError(f"attention output weight of layer {layer} has shape {tuple(weight.shape)}, not understood")
    return weight.reshape(c.n_heads, c.d_head, c.d_model)


def head_out_weights(model: Model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``W_O`` ``(layer, head, d_head, d_model)`` and ``b_O`` ``(layer, d_model)`` (None without bias)."""
    import torch

    c = model.cfg
    with torch.no_grad():
        w_o = _attr(model.bridge, "W_O")
        if w_o is None or tuple(w_o.shape) != (c.n_layers, c.n_heads, c.d_head, c.d_model):
            w_o = torch.stack([_w_o_from_module(model, layer).to(model.device) for layer in range(c.n_layers)])
        b_o = _attr(model.bridge, "b_O")
        if b_o is not None and tuple(b_o.shape) != (c.n_layers, c.d_model):
            raise CacheError(f"attention output bias has shape {tuple(b_o.shape)}, expected {(c.n_layers, c.d_model)}")
        return w_o.detach(), None if b_o is None else b_o.detach()


def unembed_weights(model: Model) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_U`` ``(d_model, d_vocab)`` and ``b_U`` ``(d_vocab,)`` (zeros without bias)."""
    import torch

    c = model.cfg
    with torch.no_grad():
        w_u = _attr(model.bridge, "W_U")
        if w_u is None or tuple(w_u.shape) != (c.d_model, c.d_vocab):
            raise CacheError(f"cannot read the unembedding W_U {(c.d_model, c.d_vocab)} of {model.name}")
        b_u = _attr(model.bridge, "b_U")
        if b_u is None:
            b_u = torch.zeros(c.d_vocab, dtype=w_u.dtype, device=w_u.device)
        return w_u.detach(), b_u.detach()


@dataclasses.dataclass(frozen=True)
class FinalNorm:
    """The final norm as ``(x - mean(x) if centre) / scale * weight + bias``."""

    centre: bool
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float

    @property
    def present(self) -> bool:
        return self.eps >= 0

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The scale the norm would compute for ``x`` ``(..., d_model)``, shape ``(..., 1)``."""
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def linear(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The norm with ``scale`` held fixed and no bias: linear in ``x``."""
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        x = x / scale
        return x if self.weight is None else x * self.weight.to(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.present:
            return x
        out = self.linear(x, self.scale(x))
        return out if self.bias is None else out + self.bias.to(out)


def final_norm(model: Model) -> FinalNorm:
    """The model's final norm (LayerNorm, RMSNorm, their weightless ``Pre`` forms, or none)."""
    kind = model.cfg.normalization
    if kind is None:
        return FinalNorm(False, None, None, -1.0)
    if kind not in ("LN", "LNPre", "RMS", "RMSPre"):
        raise CacheError(f"final norm type {kind!r} of {model.name} is not supported by the residual analyses")
    module = _attr(model.bridge, "ln_final")
    if kind.endswith("Pre"):
        return FinalNorm(kind.startswith("LN"), None, None, norm_eps(_attr(module, "_original_component"), model))
    return _linearised(model, module, "final norm")


def _linearised(model: Model, module: Any, what: str) -> FinalNorm:
    """A norm module (or bridge wrapper) as a :class:`FinalNorm`: its measured gain and bias,
    centring if the model's norms are LayerNorms."""
    inner = _unwrapped(module)
    weight = _attr(inner, "weight")
    if weight is None or tuple(weight.shape) != (model.cfg.d_model,) or not callable(inner):
        raise CacheError(f"cannot read the {what}'s weight of {model.name}")
    eps = norm_eps(inner, model)
    gain, bias = norm_affine(inner, eps)
    return FinalNorm(str(model.cfg.normalization).startswith("LN"), gain, bias, eps)


def _unwrapped(module: Any) -> Any:
    """The Hugging Face module inside a bridge component (the module itself if it is not wrapped)."""
    inner = _attr(module, "_original_component")
    return module if inner is None else inner


def norm_eps(norm: Any, model: Model | None = None) -> float:
    """A norm module's epsilon (HF's ``variance_epsilon`` or ``eps``, else the model's)."""
    eps = _attr(norm, "eps") or _attr(norm, "variance_epsilon")
    return float(eps or (model is not None and _attr(model.bridge.cfg, "eps")) or 1e-5)


def norm_affine(norm: Any, eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The elementwise ``(gain, bias)`` a norm module (or its bridge wrapper) applies after
    normalising, read off the module; ``eps`` defaults to the module's own (:func:`norm_eps`).

    Its ``weight`` parameter is not always the gain: Gemma's RMSNorm multiplies by ``1 + weight``.
    Two calls on ``x`` and ``-x``, with ``x`` of mean zero and entries of magnitude 1 or 2, give
    ``gain = (f(x) - f(-x)) / 2 * s / x`` and ``bias = (f(x) + f(-x)) / 2``, where ``s =
    sqrt(mean(x^2) + eps)`` is the scale either norm (LayerNorm or RMSNorm) computes for ``x``.
    Where the measured gain is ``weight`` or ``1 + weight`` (and the bias the ``bias``
    parameter) to the module's rounding, the parameters themselves are returned, exactly.
    """
    import torch

    norm = _unwrapped(norm)
    eps = norm_eps(norm) if eps is None else eps
    weight, bias = norm.weight.detach(), _attr(norm, "bias")
    d = weight.shape[-1]
    x = torch.ones(d, dtype=torch.float64)
    x[1::2] = -1.0
    if d % 2 and d >= 3:  # keep the mean at zero: the last three are 2, -1, -1
        x[-3:] = torch.tensor([2.0, -1.0, -1.0], dtype=torch.float64)
    s = (x.pow(2).mean() + eps).sqrt()
    probe = torch.stack([x, -x]).to(weight.device, weight.dtype)
    with torch.no_grad():
        plus, minus = norm(probe[:, None, :]).double()[:, 0].unbind(0)
    gain, offset = (plus - minus) / 2 * s / x, (plus + minus) / 2
    tol = 4 * torch.finfo(weight.dtype).eps * float(gain.abs().max().clamp_min(1.0))

    def near(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool(((a - b.double().to(a.device)).abs() <= tol * (1 + b.double().abs().to(a.device))).all())

    for candidate in (weight, 1 + weight):
        if near(gain, candidate):
            gain = candidate
            break
    else:
        gain = gain.to(weight.dtype)
    if bias is not None and near(offset, bias.detach()):
        return gain, bias.detach()
    has_bias = bool(offset.abs().max() > tol)
    return gain, offset.to(weight.dtype) if has_bias else None


def post_attn_norm(model: Model, layer: int) -> FinalNorm | None:
    """The norm a block applies to its attention output before adding it to the residual stream
    (Gemma 2, OLMo2: ``ln1_post``), or None where the output is added as it is."""
    module = _attr(model.bridge.blocks[layer], "ln1_post")
    return None if module is None else _linearised(model, module, f"post-attention norm of block {layer}")
