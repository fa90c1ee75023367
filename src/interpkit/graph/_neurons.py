"""MLP neurons as senders: chosen neurons of each layer are nodes of their own (``L3.mlp#17``: its
activation times its row of ``W_out``), the layer's other neurons one node (``L3.mlp#other``).
``b_out`` belongs to no node (it is never ablated, as the attention output bias); with
``hold_first``, neither does the first position's write (held constant, as attribution graphs hold
an attention sink). With every layer listed in ``chosen`` these replace the whole-MLP senders;
layers left out keep them.

    >>> import interpkit as ik
    >>> from interpkit.graph import build_graph, neuron_senders
    >>> model = ik.models.boot_native({"d_model": 16, "d_head": 4, "n_layers": 2, "n_ctx": 16, "n_heads": 4,
    ...                                "d_vocab": 23, "d_mlp": 32, "act_fn": "gelu", "normalization_type": "LN"})
    >>> graph = build_graph(model, senders=neuron_senders(model, {1: [9, 4]}))
    >>> [n.label for n in graph.senders][-4:]
    ['L1H3', 'L1.mlp#4', 'L1.mlp#9', 'L1.mlp#other']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.graph._builtin import MLPs
from interpkit.graph._nodes import GraphError, Node, SenderKind, register_kind

if TYPE_CHECKING:
    import torch


class Neurons(SenderKind):
    """The chosen neurons of each listed layer, one node each (``L3.mlp#17``)."""

    name = "neurons"
    stage = 1
    component_kind = "mlp"

    def __init__(self, chosen: dict[int, list[int]], hold_first: bool = False) -> None:
        self.chosen = chosen
        self.hold_first = hold_first

    def _held(self, out: torch.Tensor) -> torch.Tensor:
        if self.hold_first and out.shape[1] > 0:
            out[:, 0] = 0
        return out

    def exists(self, cfg: Any) -> bool:
        return not cfg.attn_only

    def layers(self, cfg: Any) -> list[int]:
        return sorted(self.chosen)

    def nodes(self, cfg: Any, layer: int) -> list[Node]:
        return [Node(f"L{layer}.mlp#{i}", self.name, layer, i, 1, f"L{layer}.mlp") for i in self.chosen[layer]]

    def hook(self, layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_post"

    def outputs(self, model: Any, layer: int, act: torch.Tensor) -> torch.Tensor:
        w_out = model.anatomy.mlp(layer).W_out  # (d_mlp, d_model)
        idx = self.chosen[layer]
        return self._held(act[..., idx].to(w_out.device, w_out.dtype)[..., None] * w_out[idx])  # (rows, pos, n, d)

    def spec(self) -> dict[str, Any]:
        chosen = {str(k): v for k, v in sorted(self.chosen.items())}
        return {"name": self.name, "chosen": chosen, "hold_first": self.hold_first}


class OtherNeurons(Neurons):
    """The neurons of each listed layer left out of ``chosen``, summed into one node (``L3.mlp#other``)."""

    name = "neurons_other"
    component_kind = "mlp.other"

    def nodes(self, cfg: Any, layer: int) -> list[Node]:
        return [Node(f"L{layer}.mlp#other", self.name, layer, None, 1, f"L{layer}.mlp")]

    def outputs(self, model: Any, layer: int, act: torch.Tensor) -> torch.Tensor:
        w_out = model.anatomy.mlp(layer).W_out
        keep = act.new_ones(w_out.shape[0], dtype=w_out.dtype, device=w_out.device)
        keep[self.chosen[layer]] = 0
        return self._held(((act.to(w_out.device, w_out.dtype) * keep) @ w_out)[:, :, None])  # (rows, pos, 1, d)


def neuron_senders(model: Any, chosen: Mapping[int, Sequence[int]], *, hold_first: bool = False) -> list[Any]:
    """Sender kinds with ``chosen`` ({layer: neuron indices}) as nodes (see the module doc)."""
    cfg = model.cfg
    if cfg.attn_only or not cfg.d_mlp:
        raise GraphError(f"{model.name} has no MLPs, so no neurons to make nodes of")
    table: dict[int, list[int]] = {}
    for layer, idx in chosen.items():
        if not 0 <= int(layer) < cfg.n_layers:
            raise GraphError(f"neurons chosen at layer {layer}; {model.name} has layers 0..{cfg.n_layers - 1}")
        table[int(layer)] = sorted({int(i) for i in idx})
        bad = [i for i in table[int(layer)] if not 0 <= i < cfg.d_mlp]
        if bad:
            raise GraphError(f"neurons {bad[:5]} at layer {layer} are out of range 0..{cfg.d_mlp - 1}")
    others = [lay for lay in range(cfg.n_layers) if lay not in table]
    kinds = [MLPs(layers=others, name="mlp_unchosen"), Neurons(table, hold_first), OtherNeurons(table, hold_first)]
    return ["embed", "head", *(register_kind(k, replace=True) for k in kinds)]
