"""The training forward pass of a sparse dictionary, with a sparse backward; and its slow reference.

Only ``k`` of ``n_latents`` latents are active per token, so after the dense encoder matmul
everything is sparse: the decoder is an ``embedding_bag`` over the active latents, the active
latents' gradient is a sampled dense-dense product, and the decoder and encoder gradients are
sparse-dense matrix products; no ``(tokens, k, d)`` tensor is ever materialised.
:func:`sparse_code` is that autograd function.

Per token ``x`` (input), ``y`` (target), with ``x' = x - b_dec`` for a centred SAE:

    pre  = x' @ W_enc.T + b_enc                 (tokens, n_latents)   dense
    z    = relu(pre) at the selected latents    TopK: k per token; BatchTopK: k * tokens per batch
    y^   = z @ W_dec + b_dec (+ x @ W_skip.T)
    loss = sum((y^ - y)^2) / (B * Z)                                   Z: the data's variance per token
    aux  = scale * sum((e^ - (y - y^))^2) / (B * Z),  e^ = z_dead @ W_dec (AuxK, Gao et al. 2024, B.1)

``B`` is the global batch, so that the ranks of a data-parallel run add up exactly to one
process's loss. :func:`reference_loss` computes the same with dense tensors and plain autograd;
the tests check that both give the same losses and gradients.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _coder_class() -> Any:
    import torch

    class SparseCode(torch.autograd.Function):
        """``sum_j relu(pre[i, c_j]) * W_dec[c_j]`` per token ``i`` over the selected latents ``c_j``.

        The selection is a CSR pattern ``(crow, cols)`` over ``pre (tokens, n_latents)``, which
        was computed (without autograd) from ``x - b_center``. The backward pass uses sparse
        matrix products only: the active latents' gradient is a sampled dense-dense product, and
        ``W_dec``, ``W_enc`` get theirs from a sparse-transpose product. ``b_center`` (the SAE's
        ``b_dec`` subtracted from the input) gets ``-(grad b_enc) @ W_enc``.
        """

        @staticmethod
        def forward(
            ctx: Any, x: Any, b_center: Any, w_enc: Any, b_enc: Any, w_dec: Any, pre: Any, crow: Any, cols: Any
        ) -> Any:
            import torch.nn.functional as F

            rows = torch.repeat_interleave(torch.arange(crow.numel() - 1), crow.diff())
            vals = pre[rows, cols].clamp_min(0)
            out = F.embedding_bag(cols, w_dec, crow[:-1], mode="sum", per_sample_weights=vals)
            ctx.save_for_backward(x, b_center, w_enc, w_dec, crow, cols, vals)
            ctx.shape = pre.shape
            return out

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            with warnings.catch_warnings():  # torch calls its sparse CSR support "beta" once per process
                warnings.simplefilter("ignore", UserWarning)
                return _backward(ctx, grad)

    def _backward(ctx: Any, grad: Any) -> Any:
        x, b_center, w_enc, w_dec, crow, cols, vals = ctx.saved_tensors
        shape = ctx.shape
        pattern = torch.sparse_csr_tensor(crow, cols, torch.ones_like(vals), shape)
        d_vals = torch.sparse.sampled_addmm(pattern, grad, w_dec.T, beta=0.0).values()
        d_pre = d_vals * (vals > 0)
        d_w_dec = torch.sparse.mm(torch.sparse_csr_tensor(crow, cols, vals, shape).t(), grad)
        xin = x if b_center is None else x - b_center
        d_w_enc = torch.sparse.mm(torch.sparse_csr_tensor(crow, cols, d_pre, shape).t(), xin)
        d_b_enc = torch.zeros(shape[1], dtype=vals.dtype).index_add_(0, cols, d_pre)
        d_center = None if b_center is None else -(d_b_enc @ w_enc)
        return None, d_center, d_w_enc, d_b_enc, d_w_dec, None, None, None

    return SparseCode


_CODER: Any = None


def sparse_code(
    x: torch.Tensor,
    b_center: torch.Tensor | None,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    w_dec: torch.Tensor,
    pre: torch.Tensor,
    crow: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """The sparse path's output (see :class:`SparseCode`), differentiable in the weights."""
    global _CODER
    if _CODER is None:
        _CODER = _coder_class()
    return _CODER.apply(x, b_center, w_enc, b_enc, w_dec, pre, crow, cols)


def topk_select(act: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR ``(crow, cols)`` of the ``k`` largest entries of each row of ``act`` (columns sorted)."""
    import torch

    cols = act.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
    crow = torch.arange(0, act.shape[0] * k + 1, k)
    return crow, cols.reshape(-1)


def batch_threshold(act: torch.Tensor, count: int, group: Any = None) -> torch.Tensor:
    """The ``count``-th largest entry of ``act`` over the whole (global) batch: BatchTopK's cut."""
    import torch

    flat = act.reshape(-1)
    local = flat.topk(min(count, flat.numel()), sorted=False).values
    if group is not None and group.active:
        import torch.distributed as dist

        padded = torch.full((count,), -torch.inf, dtype=act.dtype)
        padded[: local.numel()] = local
        parts = [torch.empty_like(padded) for _ in range(group.world)]
        dist.all_gather(parts, padded)
        local = torch.cat(parts)
    return local.topk(count, sorted=False).values.min()


def mask_select(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR ``(crow, cols)`` of the true entries of ``mask``."""
    import torch

    nz = mask.nonzero()
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.long)
    crow[1:] = torch.bincount(nz[:, 0], minlength=mask.shape[0]).cumsum(0)
    return crow, nz[:, 1].contiguous()


def fast_loss(
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    activation: str,
    k: int,
    center_input: bool,
    norm: float,
    global_batch: int,
    dead: torch.Tensor | None = None,
    aux_alpha: float = 0.0,
    group: Any = None,
) -> dict[str, Any]:
    """Losses (with autograd to ``params``) and the selection, for one (local) batch; see module doc."""
    import torch

    w_enc, b_enc, w_dec, b_dec = params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"]
    center = b_dec if center_input else None
    with torch.no_grad():
        pre = torch.nn.functional.linear(x if center is None else x - center, w_enc, b_enc)
        act = pre.clamp_min(0)
        if activation == "batchtopk":
            cut = batch_threshold(act, k * global_batch, group)
            crow, cols = mask_select((act >= cut) & (act > 0))
        else:
            crow, cols = topk_select(act, k)
    recon = sparse_code(x, center, w_enc, b_enc, w_dec, pre, crow, cols) + b_dec
    if params.get("W_skip") is not None:
        recon = recon + x @ params["W_skip"].T
    err = recon - y
    scale = 1.0 / (global_batch * norm)
    mse = err.pow(2).sum() * scale
    out: dict[str, Any] = {"mse": mse, "aux": mse.new_zeros(()), "crow": crow, "cols": cols}
    with torch.no_grad():
        picked = act.gather(1, cols.view(x.shape[0], -1)) if activation != "batchtopk" else None
    out["fired"] = cols[(picked.reshape(-1) if picked is not None else act[_rows(crow), cols]) > 0]
    if dead is not None and aux_alpha > 0 and (n_dead := int(dead.sum())) > 0:
        k_aux_full = y.shape[1] // 2
        k_aux = min(k_aux_full, n_dead)
        with torch.no_grad():
            a_crow, a_cols = topk_select(act.masked_fill(~dead, -torch.inf), k_aux)
        e_hat = sparse_code(x, center, w_enc, b_enc, w_dec, pre, a_crow, a_cols)
        aux = (e_hat + err.detach()).pow(2).sum() * scale  # e^ should predict y - y^ = -err
        out["aux"] = aux * min(n_dead / k_aux_full, 1.0)
    out["loss"] = out["mse"] + aux_alpha * out["aux"]
    if activation == "batchtopk":
        active = act[_rows(crow), cols]
        out["min_active"] = active.min() if active.numel() else None
    return out


def _rows(crow: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.repeat_interleave(torch.arange(crow.numel() - 1), crow.diff())


def reference_loss(
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    activation: str,
    k: int,
    center_input: bool,
    norm: float,
    global_batch: int,
    dead: torch.Tensor | None = None,
    aux_alpha: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The same losses with dense tensors and plain autograd: the slow, obviously-correct version."""
    import torch

    w_enc, b_enc, w_dec, b_dec = params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"]
    xin = x - b_dec if center_input else x
    pre = xin @ w_enc.T + b_enc
    act = torch.relu(pre)
    if activation == "batchtopk":
        cut = act.detach().reshape(-1).sort(descending=True).values[k * global_batch - 1]
        mask = (act.detach() >= cut) & (act.detach() > 0)
    else:
        idx = act.detach().topk(k, dim=-1).indices
        mask = torch.zeros_like(act, dtype=torch.bool).scatter(-1, idx, True)
    z = act * mask
    recon = z @ w_dec + b_dec
    if params.get("W_skip") is not None:
        recon = recon + x @ params["W_skip"].T
    err = recon - y
    scale = 1.0 / (global_batch * norm)
    mse = (err**2).sum() * scale
    aux = mse.new_zeros(())
    if dead is not None and aux_alpha > 0 and int(dead.sum()) > 0:
        k_aux_full = y.shape[1] // 2
        k_aux = min(k_aux_full, int(dead.sum()))
        masked = act.detach().masked_fill(~dead, -torch.inf)
        idx = masked.topk(k_aux, dim=-1).indices
        z_dead = act * torch.zeros_like(act, dtype=torch.bool).scatter(-1, idx, True)
        aux = ((z_dead @ w_dec + err.detach()) ** 2).sum() * scale * min(int(dead.sum()) / k_aux_full, 1.0)
    return {"mse": mse, "aux": aux, "loss": mse + aux_alpha * aux, "z": z}
