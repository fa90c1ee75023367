"""The two ends of every edge in a run: what each sender writes, and how a receiver's input is reached.

:func:`sender_outputs` puts each sender's output in the residual stream from captured activations;
:func:`receiver_mode` says how a model's receivers can be changed one by one (each head its own
input copy, or the change projected after ``W_Q/W_K/W_V``), and :func:`mode_context` switches the
bridge into that mode for the duration of a run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from interpkit.graph._nodes import GraphError
from interpkit.models.anatomy import mlp_inputs, split_inputs

if TYPE_CHECKING:
    import torch

    from interpkit.graph._graph import Graph
    from interpkit.models import Model


def sender_hooks(graph: Graph) -> list[str]:
    """The hooks whose activations give every sender's output (one per sender group)."""
    return list(dict.fromkeys(g.kind.hook(g.layer) for g in graph.sender_groups))


def sender_outputs(model: Model, graph: Graph, acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each sender's output in the residual stream, ``(batch, pos, n_senders, d_model)``, graph order.

    ``acts``: the activations at :func:`sender_hooks` (any alias). Each part is computed on its
    layer's device and gathered on ``model.device``.
    """
    import torch

    parts = [
        g.kind.outputs(model, g.layer, acts[model.resolve_hook(g.kind.hook(g.layer))]) for g in graph.sender_groups
    ]
    return torch.cat([p.to(model.device) for p in parts], dim=2)


def receiver_mode(model: Model, error: type[Exception] = GraphError) -> str:
    """How edges into single receivers are patched on ``model``: "split" or "projected".

    Models with norms after attention and MLP are refused (their heads' writes are not additive).

    "projected" (no per-head input hooks: the change goes in after ``W_Q/W_K/W_V``) is exact only for
    attention-only models without a norm before attention; anything else is refused.
    """
    an = model.anatomy
    if an.post_norms:
        raise error(
            f"{model.name} normalises each attention and MLP output before adding it to the residual stream "
            "(Gemma 2, OLMo2): a head's write is not its own z @ W_O but passes through a norm of the whole "
            "attention output, so edges between single heads are not defined by the additive residual stream "
            "interpkit's edge methods rely on. Activation patching (ik.patch), node attribution and DLA "
            "(which linearises those norms) still work."
        )
    if an.split_inputs:
        return "split"
    if an.norm_kind is not None or not an.attn_only:
        raise error(
            f"{model.name}'s bridge has no per-head q/k/v input hooks (set_use_split_qkv_input is unsupported for "
            "its attention class), so edges into single heads exist only for attention-only models without a norm "
            "before attention. Node-level attribution (ik.attribution.atp) and exact path patching still work."
        )
    return "projected"


@contextlib.contextmanager
def mode_context(model: Model, mode: str) -> Iterator[None]:
    """The bridge switched into receiver ``mode`` ("split": per-head input copies; "normed": MLP input hooks)."""
    if mode == "split":
        with split_inputs(model):
            yield
    elif mode == "normed":
        with mlp_inputs(model):
            yield
    else:
        yield
