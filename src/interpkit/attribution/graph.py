"""The computational graph edge attribution works on: component outputs -> component inputs.

Nodes that write to the residual stream (senders): ``embed``, every head ``L3H5``, every MLP
``L3.mlp``. Inputs that read it (receivers): every head's query ``L3H5.q``, key and value
(``L3H5.k`` / ``L3H5.v``; under grouped-query attention the key and value inputs belong to the
shared KV head and are named ``L3KV1.k`` / ``L3KV1.v`` — interpkit does not ungroup), every MLP
``L3.mlp``, and ``logits``. An edge ``u -> v`` exists when u writes before v reads in residual
order: attention of layer l reads what embed and layers < l wrote; the MLP of layer l also reads
layer l's heads, except in a model with parallel attention and MLP (GPT-NeoX / Pythia, GPT-J,
Phi: ``model.cfg.parallel_attn_mlp``), where both read the block's input; logits read
everything. Edge labels are ``"L0H3->L1H5.k"``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model


@dataclasses.dataclass(frozen=True)
class Node:
    label: str
    kind: str  # embed | head | mlp (senders); q | k | v | mlp | logits (receivers)
    layer: int  # -1 for embed; n_layers for logits
    index: int | None = None  # head (senders, q receivers) or KV head (k/v receivers)

    @property
    def order(self) -> tuple[int, int]:
        """(layer, stage): heads and attention inputs are stage 0, MLPs stage 1."""
        return (self.layer, 1 if self.kind == "mlp" else 0)


@dataclasses.dataclass
class Graph:
    senders: list[Node]
    receivers: list[Node]
    mask: torch.Tensor  # (n_senders, n_receivers) bool: which edges exist

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    def edge_labels(self) -> list[str]:
        """Labels of the existing edges in row-major (sender, receiver) order."""
        pairs = self.mask.nonzero().tolist()
        return [f"{self.senders[s].label}->{self.receivers[r].label}" for s, r in pairs]

    def edge_index(self, label: str) -> tuple[int, int]:
        """(sender index, receiver index) of ``"u->v"``; KeyError if not an edge."""
        u, v = label.split("->")
        s = next(i for i, n in enumerate(self.senders) if n.label == u)
        r = next(i for i, n in enumerate(self.receivers) if n.label == v)
        if not bool(self.mask[s, r]):
            raise KeyError(f"{label} is not an edge: {u} does not write before {v} reads")
        return s, r


def build_graph(model: Model) -> Graph:
    """Every sender, receiver and edge of ``model`` (heads, MLPs, embed, logits)."""
    import torch

    c = model.cfg
    gqa = c.n_kv_heads < c.n_heads
    senders = [Node("embed", "embed", -1)]
    receivers: list[Node] = []
    for layer in range(c.n_layers):
        senders += [Node(f"L{layer}H{h}", "head", layer, h) for h in range(c.n_heads)]
        receivers += [Node(f"L{layer}H{h}.q", "q", layer, h) for h in range(c.n_heads)]
        for kind in ("k", "v"):
            receivers += [
                Node(f"L{layer}KV{g}.{kind}" if gqa else f"L{layer}H{g}.{kind}", kind, layer, g)
                for g in range(c.n_kv_heads)
            ]
        if not c.attn_only:
            senders.append(Node(f"L{layer}.mlp", "mlp", layer))
            receivers.append(Node(f"L{layer}.mlp", "mlp", layer))
    receivers.append(Node("logits", "logits", c.n_layers))
    s_order = torch.tensor([n.order for n in senders])
    # a parallel block's MLP reads what its attention reads: the block's input, at the heads' stage
    r_order = torch.tensor([(n.layer, 0) if c.parallel_attn_mlp else n.order for n in receivers])
    before = (s_order[:, None, 0] < r_order[None, :, 0]) | (
        (s_order[:, None, 0] == r_order[None, :, 0]) & (s_order[:, None, 1] < r_order[None, :, 1])
    )
    return Graph(senders, receivers, before)
