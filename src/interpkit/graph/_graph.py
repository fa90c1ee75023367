"""The computational graph as data: senders, receivers, the edges between them, grouped by hook."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.graph._builtin import RECEIVERS, SENDERS
from interpkit.graph._nodes import GraphError, Node, NodeKind, get_kind

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class Group:
    """The nodes ``[lo, hi)`` (graph order) of one kind in one layer: they share one hook."""

    kind: Any  # a SenderKind or ReceiverKind
    layer: int
    lo: int
    hi: int

    def __len__(self) -> int:
        return self.hi - self.lo


@dataclasses.dataclass
class Graph:
    """Senders, receivers and the edge mask ``(n_senders, n_receivers)`` (True where u writes before v reads).

    ``sender_groups`` / ``receiver_groups`` partition the nodes by (kind, layer): one hook each.
    ``kinds`` names the sender and receiver kinds it was built from (what a circuit file records).
    """

    senders: list[Node]
    receivers: list[Node]
    mask: torch.Tensor
    sender_groups: list[Group] = dataclasses.field(default_factory=list)
    receiver_groups: list[Group] = dataclasses.field(default_factory=list)
    kinds: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    @property
    def is_default(self) -> bool:
        """Whether it is the standard graph (embed, heads, MLPs -> q/k/v, MLP inputs, logits)."""
        return self.kinds == {"senders": list(SENDERS), "receivers": list(RECEIVERS)}

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

    def feeds(self) -> torch.Tensor:
        """``(n_receivers, n_senders)`` bool: receiver r is an input of sender s's component."""
        import torch

        return torch.tensor([[s.component in r.feeds for s in self.senders] for r in self.receivers], dtype=torch.bool)

    def hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the node labels and the edge mask."""
        digest = hashlib.sha256()
        digest.update("|".join(n.label for n in self.senders).encode())
        digest.update(b"#")
        digest.update("|".join(n.label for n in self.receivers).encode())
        digest.update(self.mask.cpu().numpy().tobytes())
        return digest.hexdigest()[:16]


def _layout(cfg: Any, kinds: Sequence[NodeKind]) -> tuple[list[Node], list[Group], list[tuple[int, int]]]:
    """Nodes of ``kinds`` in graph order (by layer, stage, then the order the kinds are given), their groups and orders."""
    entries = []
    for position, kind in enumerate(kinds):
        if not kind.exists(cfg):
            continue
        for layer in kind.layers(cfg):
            entries.append(((layer, kind.stage, position), kind, layer))
    nodes: list[Node] = []
    groups: list[Group] = []
    orders: list[tuple[int, int]] = []
    for _, kind, layer in sorted(entries, key=lambda e: e[0]):
        new = kind.nodes(cfg, layer)
        groups.append(Group(kind, layer, len(nodes), len(nodes) + len(new)))
        nodes += new
        orders += [kind.order(cfg, layer)] * len(new)
    return nodes, groups, orders


def build_graph(
    model: Any, senders: Sequence[str | NodeKind] | None = None, receivers: Sequence[str | NodeKind] | None = None
) -> Graph:
    """Every sender, receiver and edge of ``model`` (default: embed, heads, MLPs -> q/k/v, MLP inputs, logits).

    ``senders`` / ``receivers`` name registered node kinds (:func:`interpkit.graph.kinds`) or give
    kind objects; two sender kinds may not decompose the same part of the residual stream.

    >>> import interpkit as ik
    >>> from interpkit.graph import build_graph
    >>> graph = build_graph(ik.load_model("toy-induction"))
    >>> graph.edge_labels()[:2], graph.n_edges
    (['embed->L0H0.q', 'embed->L0H1.q'], 81)
    """
    import torch

    cfg = model.cfg
    s_kinds = [get_kind("sender", k) for k in (SENDERS if senders is None else senders)]
    r_kinds = [get_kind("receiver", k) for k in (RECEIVERS if receivers is None else receivers)]
    seen: dict[tuple[str, int], str] = {}
    for kind in s_kinds:
        if not kind.exists(cfg):
            continue
        part = getattr(kind, "component_kind", "") or kind.name
        for layer in kind.layers(cfg):
            if (part, layer) in seen:
                raise GraphError(
                    f"sender kinds {seen[part, layer]!r} and {kind.name!r} both write the {part} output of layer "
                    f"{layer}: a graph's senders must add up to the residual stream once"
                )
            seen[part, layer] = kind.name
    s_nodes, s_groups, s_order = _layout(cfg, s_kinds)
    r_nodes, r_groups, r_order = _layout(cfg, r_kinds)
    so, ro = torch.tensor(s_order).reshape(-1, 2), torch.tensor(r_order).reshape(-1, 2)
    before = (so[:, None, 0] < ro[None, :, 0]) | (
        (so[:, None, 0] == ro[None, :, 0]) & (so[:, None, 1] < ro[None, :, 1])
    )
    names = {"senders": [k.name for k in s_kinds], "receivers": [k.name for k in r_kinds]}
    return Graph(s_nodes, r_nodes, before, s_groups, r_groups, names)
