"""The two ends of every edge in the residual stream: what senders write and where receivers read.

:func:`split_inputs` gives every head its own copy of its q/k/v input and every MLP its own input
(the receivers of ``graph.py``'s edges); :func:`sender_outputs` puts each sender's output (the
embeddings, each head through ``W_O``, each MLP) in the residual stream. Shared by the edge
methods (``eap.py``, ``eap_act.py``, ``edge_exact.py``) and the circuits engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model


@contextlib.contextmanager
def split_inputs(model: Model) -> Iterator[None]:
    """Give every head its own copy of its q/k/v input and every MLP its own input, then restore."""
    bridge = model.bridge
    before = (
        bool(getattr(bridge.cfg, "use_split_qkv_input", False)),
        bool(getattr(bridge.cfg, "use_hook_mlp_in", False)),
    )
    bridge.set_use_split_qkv_input(True)
    bridge.set_use_hook_mlp_in(True)
    model.refresh_hooks()  # some adapters (GPT-2's fused qkv) create hook points when the flag is set
    try:
        yield
    finally:
        bridge.set_use_split_qkv_input(before[0])
        bridge.set_use_hook_mlp_in(before[1])
        model.refresh_hooks()


def supports_split_inputs(model: Model) -> bool:
    """Whether the bridge gives each head its own q/k/v input hook (``split_inputs``)."""
    cached = getattr(model, "_interpkit_split_inputs", None)
    if cached is None:
        try:
            with split_inputs(model):
                pass
            cached = True
        except NotImplementedError:
            cached = False
        model._interpkit_split_inputs = cached
    return cached


def _sender_names(model: Model) -> list[str]:
    c = model.cfg
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(c.n_layers):
        names.append(f"blocks.{layer}.attn.hook_z")
        if not c.attn_only:
            names.append(f"blocks.{layer}.hook_mlp_out")
    return names


def sender_outputs(model: Model, acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each sender's output in the residual stream, ``(batch, pos, n_senders, d_model)``, graph order.

    Each part is computed on its layer's device and gathered on ``model.device``.
    """
    import torch

    c = model.cfg
    parts = [acts["blocks.0.hook_resid_pre"][:, :, None]]  # embed (+ positions where learned)
    for layer in range(c.n_layers):
        w_o = model.bridge.blocks[layer].attn.W_O  # (head, d_head, d_model)
        z = acts[f"blocks.{layer}.attn.hook_z"]
        parts.append(torch.einsum("bphd,hdm->bphm", z.to(w_o.device, w_o.dtype), w_o))
        if not c.attn_only:
            parts.append(acts[f"blocks.{layer}.hook_mlp_out"][:, :, None])
    return torch.cat([p.to(model.device) for p in parts], dim=2)
