"""The norm pieces of edge gradients read after the q/k/v projections (``eap.receiver_gradients``).

A receiver's gradient at ``attn.hook_q/k/v`` becomes a gradient of its residual-stream input
through ``W_Q/W_K/W_V`` and then the norm before attention: :func:`norm_backward` is that norm's
vector-Jacobian product, computed from the row's own input. :func:`mlp_inputs` turns on the MLP
input hooks the same gradients need, without TransformerLens's per-head residual copies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model


def norm_backward(module: Any, kind: str | None, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Vector-Jacobian product of the norm ``module`` at input ``x`` (rows, pos, d) for ``grad`` (rows, pos, k, d).

    RMSNorm ``y = w x / r``: ``dx = w g / r - x (x · w g) / (d r^3)``; LayerNorm
    ``y = w x̂ + b``: ``dx = (g' - mean(g') - x̂ mean(g' x̂)) / σ`` with ``g' = w g``; ``w`` is the
    norm's gain as :func:`interpkit.cache._weights.norm_affine` reads it.
    """
    import torch

    if kind is None:
        return grad
    from interpkit.cache._weights import norm_affine, norm_eps

    inner = getattr(module, "_original_component", module)
    eps = norm_eps(inner)
    w = norm_affine(inner, eps)[0].float().to(grad.device)  # the gain: Gemma's is 1 + weight
    x = x.to(grad.device).float()[:, :, None]  # (rows, pos, 1, d); a block's input may arrive from the device before
    g = grad.float() * w
    if kind == "RMS":
        r = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        out = g / r - x * (x * g).mean(-1, keepdim=True) / r.pow(3)
    else:
        mu = x.mean(-1, keepdim=True)
        sigma = ((x - mu).pow(2).mean(-1, keepdim=True) + eps).sqrt()
        xhat = (x - mu) / sigma
        out = (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True)) / sigma
    return out.to(torch.promote_types(grad.dtype, torch.float32))


@contextlib.contextmanager
def mlp_inputs(model: Model) -> Iterator[None]:
    """Give every MLP its own input hook (``hook_mlp_in``), then restore."""
    bridge = model.bridge
    before = bool(getattr(bridge.cfg, "use_hook_mlp_in", False))
    bridge.set_use_hook_mlp_in(True)
    model.refresh_hooks()
    try:
        yield
    finally:
        bridge.set_use_hook_mlp_in(before)
        model.refresh_hooks()
