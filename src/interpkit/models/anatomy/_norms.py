"""Norms as engines need them: measured gain, bias and epsilon, linear at a frozen scale.

A TransformerLens 4 bridge is not in compatibility mode: nothing is folded, so each norm keeps
its own weight, and the scale is whatever the run computes. Its ``weight`` parameter is not
always the gain either (Gemma's RMSNorm multiplies by ``1 + weight``), so the gain is measured
off the module itself (:func:`norm_affine`) and compared with the parameters, which are used
exactly wherever they are the gain.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def attr(obj: Any, name: str) -> Any:
    """``getattr(obj, name)``, or None where the bridge raises for a missing piece."""
    try:
        return getattr(obj, name)
    except (AttributeError, NotImplementedError, RuntimeError):
        return None


def unwrapped(module: Any) -> Any:
    """The Hugging Face module inside a bridge component (the module itself if it is not wrapped)."""
    inner = attr(module, "_original_component")
    return module if inner is None else inner


def norm_eps(norm: Any, default: float | None = None) -> float:
    """A norm module's epsilon (HF's ``variance_epsilon`` or ``eps``), else ``default``, else 1e-5."""
    norm = unwrapped(norm)
    eps = attr(norm, "eps") or attr(norm, "variance_epsilon")
    return float(eps or default or 1e-5)


def norm_affine(norm: Any, eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The elementwise ``(gain, bias)`` a norm module (or its bridge wrapper) applies after
    normalising, read off the module; ``eps`` defaults to the module's own (:func:`norm_eps`).

    Two calls on ``x`` and ``-x``, with ``x`` of mean zero and entries of magnitude 1 or 2, give
    ``gain = (f(x) - f(-x)) / 2 * s / x`` and ``bias = (f(x) + f(-x)) / 2``, where ``s =
    sqrt(mean(x^2) + eps)`` is the scale either norm (LayerNorm or RMSNorm) computes for ``x``.
    Where the measured gain is ``weight`` or ``1 + weight`` (and the bias the ``bias``
    parameter) to the module's rounding, the parameters themselves are returned, exactly.

        >>> import torch
        >>> gain, bias = norm_affine(torch.nn.LayerNorm(4))
        >>> gain.tolist(), bias.tolist()
        ([1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0])
    """
    import torch

    norm = unwrapped(norm)
    eps = norm_eps(norm) if eps is None else eps
    weight, bias = norm.weight.detach(), attr(norm, "bias")
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


@dataclasses.dataclass(frozen=True)
class Norm:
    """A norm as ``(x - mean(x) if centre) / scale * gain + bias``, ``scale = sqrt(mean(x'^2) + eps)``.

    ``present=False`` (``eps < 0``) is the identity (a model without that norm). ``linear`` is
    the norm with its scale held fixed and no bias: the frozen-scale linearisation DLA, the
    residual decomposition and attribution graphs use. ``module`` is the module it was read from.

        >>> import torch
        >>> n = Norm(centre=False, gain=None, bias=None, eps=0.0)
        >>> [round(v, 6) for v in n(torch.tensor([3.0, 4.0])).tolist()]    # RMS of (3, 4) is sqrt(12.5)
        [0.848528, 1.131371]
    """

    centre: bool
    gain: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    module: Any = None

    @property
    def present(self) -> bool:
        return self.eps >= 0

    # the name the residual analyses used for the gain
    @property
    def weight(self) -> torch.Tensor | None:
        return self.gain

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The scale the norm computes for ``x`` ``(..., d_model)``, shape ``(..., 1)``."""
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def linear(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The norm with ``scale`` held fixed and no bias: linear in ``x``."""
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        x = x / scale
        return x if self.gain is None else x * self.gain.to(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The norm in ``x``'s dtype (the residual analyses' form)."""
        if not self.present:
            return x
        out = self.linear(x, self.scale(x))
        return out if self.bias is None else out + self.bias.to(out)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The norm as Hugging Face modules compute it: normalised in float32, cast back, then gain and bias."""
        if not self.present:
            return x
        dtype = x.dtype
        h = x.float()
        if self.centre:
            h = h - h.mean(-1, keepdim=True)
        h = (h * (h.pow(2).mean(-1, keepdim=True) + self.eps).rsqrt()).to(dtype)
        h = h * self.gain if self.gain is not None else h
        return h + self.bias if self.bias is not None else h

    def vjp(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Vector-Jacobian product at input ``x`` (rows, pos, d) for ``grad`` (rows, pos, k, d).

        RMSNorm ``y = w x / r``: ``dx = w g / r - x (x · w g) / (d r^3)``; LayerNorm
        ``y = w x̂ + b``: ``dx = (g' - mean(g') - x̂ mean(g' x̂)) / σ`` with ``g' = w g``.
        """
        import torch

        if not self.present:
            return grad
        x = x.to(grad.device).float()[:, :, None]  # (rows, pos, 1, d)
        g = grad.float() if self.gain is None else grad.float() * self.gain.float().to(grad.device)
        if not self.centre:
            r = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
            out = g / r - x * (x * g).mean(-1, keepdim=True) / r.pow(3)
        else:
            mu = x.mean(-1, keepdim=True)
            sigma = ((x - mu).pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
            xhat = (x - mu) / sigma
            out = (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True)) / sigma
        return out.to(torch.promote_types(grad.dtype, torch.float32))


IDENTITY = Norm(False, None, None, -1.0)


def read_norm(module: Any, kind: str | None, default_eps: float | None = None) -> Norm:
    """The :class:`Norm` of a norm module (or bridge wrapper) for a model whose norms are ``kind``
    ("LN", "RMS", their weightless "LNPre"/"RMSPre", or None: the identity)."""
    if kind is None or module is None:
        return IDENTITY
    centre = str(kind).startswith("LN")
    inner = unwrapped(module)
    eps = norm_eps(inner, default_eps)
    if str(kind).endswith("Pre") or attr(inner, "weight") is None:
        return Norm(centre, None, None, eps, inner)
    gain, bias = norm_affine(inner, eps)
    return Norm(centre, gain, bias, eps, inner)
