"""``Graph``: the nodes and sparse direct-effect edges of one prompt's attribution graph.

Nodes, in order: feature nodes (``kind`` ``"neuron"`` or ``"feature"``, sorted by layer, position,
unit), error nodes (one per layer and position, transcoder graphs only), token embeddings (one per
position), logits. ``adjacency`` is a sparse ``(node, node)`` matrix, rows the targets and columns
the sources: ``adjacency[t, s]`` is the direct effect of s on t's pre-activation (a logit node's
value is its demeaned logit, as in circuit-tracer), with attention, norms and the other features
frozen. For every feature and logit node, its incoming edges plus ``node.constant`` (biases, under
the frozen model) plus ``node.other`` (the features outside the graph) give ``node.pre_activation``.

Node kinds are plain strings (``embedding``, ``neuron``, ``feature``, ``error``, ``logit``), the
node kinds interpkit's open graph registry will carry. ``scores`` holds the replacement and
completeness scores of the unpruned graph and of the default pruning; ``verification`` the check
of its top nodes by intervention (:func:`interpkit.graphs.verify`).

    >>> g = ik.graphs.attribute(model, "The capital of France is")   # doctest: +SKIP
    >>> g.prune().nodes[:3], g.scores, g.verification["spearman_frozen"]   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.graphs import _influence

if TYPE_CHECKING:
    import torch

FEATURE_KINDS = ("neuron", "feature")


@dataclasses.dataclass
class Node:
    """One node; ``feature`` is the unit index (-1 for errors, the token id for embeddings and logits)."""

    id: str
    kind: str
    layer: int  # -1 for embeddings, n_layers for logits
    position: int
    feature: int
    activation: float | None = None
    influence: float | None = None
    pre_activation: float | None = None
    constant: float | None = None
    other: float | None = None
    label: str = ""
    probability: float | None = None


@dataclasses.dataclass
class Graph:
    """An attribution graph (see the module docstring)."""

    nodes: list[Node]
    adjacency: torch.Tensor  # sparse COO (n_nodes, n_nodes); rows targets, columns sources
    tokens: list[int]
    token_strs: list[str]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    verification: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._index = {n.id: i for i, n in enumerate(self.nodes)}

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for n in self.nodes:
            kinds[n.kind] = kinds.get(n.kind, 0) + 1
        shown = ", ".join(f"{v} {k}" for k, v in kinds.items())
        return f"Graph({len(self.nodes)} nodes: {shown}; {self.n_edges} edges)"

    @property
    def n_edges(self) -> int:
        return int((self.adjacency.coalesce().values() != 0).sum())

    def index(self, node: str | int | Node) -> int:
        """The position of ``node`` (an id, an index or a Node) in :attr:`nodes`."""
        from interpkit.errors import unknown
        from interpkit.graphs._frozen import GraphError

        if isinstance(node, Node):
            node = node.id
        if isinstance(node, int) and not isinstance(node, bool):
            if not 0 <= node < len(self.nodes):
                raise GraphError(f"node index {node} is out of range 0..{len(self.nodes) - 1}")
            return node
        if node not in self._index:
            raise unknown("graph node", str(node), list(self._index), GraphError)
        return self._index[node]

    def node(self, node: str | int) -> Node:
        return self.nodes[self.index(node)]

    def dense(self) -> torch.Tensor:
        """The adjacency as a dense ``(node, node)`` matrix."""
        return self.adjacency.to_dense()

    def kinds(self) -> list[str]:
        return [n.kind for n in self.nodes]

    def logit_weights(self) -> torch.Tensor:
        """Each node's weight in the influence sums: its probability for logit nodes, else 0."""
        import torch

        return torch.tensor([(n.probability or 0.0) if n.kind == "logit" else 0.0 for n in self.nodes])

    def influence(self) -> torch.Tensor:
        """Every node's total influence on the logits (normalised absolute edges, all paths)."""
        return _influence.influence(_influence.normalise(self.dense()), self.logit_weights())

    def top_nodes(self, k: int = 10, kinds: tuple[str, ...] = FEATURE_KINDS) -> list[Node]:
        """The ``k`` nodes of ``kinds`` with the largest influence on the logits."""
        import torch

        scores = self.influence()
        keep = torch.tensor([n.kind in kinds for n in self.nodes])
        order = torch.argsort(torch.where(keep, scores, torch.tensor(-1.0)), descending=True)
        return [self.nodes[int(i)] for i in order[: min(k, int(keep.sum()))]]

    def incoming(self, node: str | int, k: int = 10) -> list[tuple[Node, float]]:
        """The ``k`` strongest inputs of ``node``: ``(source, direct effect)``, largest magnitude first."""
        row = self.dense()[self.index(node)]
        order = row.abs().argsort(descending=True)[:k]
        return [(self.nodes[int(i)], float(row[i])) for i in order if float(row[i]) != 0.0]

    def outgoing(self, node: str | int, k: int = 10) -> list[tuple[Node, float]]:
        """The ``k`` strongest outputs of ``node``: ``(target, direct effect)``."""
        col = self.dense()[:, self.index(node)]
        order = col.abs().argsort(descending=True)[:k]
        return [(self.nodes[int(i)], float(col[i])) for i in order if float(col[i]) != 0.0]

    # ------------------------------------------------------------------ scores and pruning
    def graph_scores(self) -> dict[str, float]:
        """``replacement`` and ``completeness`` of this graph as it stands."""
        return _influence.scores(self.dense(), self.logit_weights(), self.kinds())

    @property
    def replacement_score(self) -> float:
        return self.graph_scores()["replacement"]

    @property
    def completeness_score(self) -> float:
        return self.graph_scores()["completeness"]

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Graph:
        """The subgraph carrying ``node_threshold`` of the influence and ``edge_threshold`` of the edges."""
        a = self.dense()
        node_mask, edge_mask = _influence.prune_masks(
            a, self.logit_weights(), self.kinds(), node_threshold, edge_threshold
        )
        keep = node_mask.nonzero()[:, 0]
        kept = (a * edge_mask)[keep][:, keep]
        meta = {**self.meta, "pruned": {"node_threshold": node_threshold, "edge_threshold": edge_threshold}}
        pruned = Graph(
            nodes=[dataclasses.replace(self.nodes[int(i)]) for i in keep],
            adjacency=kept.to_sparse(),
            tokens=list(self.tokens),
            token_strs=list(self.token_strs),
            meta=meta,
            scores={},
            verification=self.verification,
        )
        pruned.scores = pruned.graph_scores()
        return pruned

    # ------------------------------------------------------------------ outputs
    def to_json(self, path: str | Path | None = None, *, slug: str | None = None) -> dict[str, Any]:
        """The graph in circuit-tracer's graph JSON schema (its frontend and Neuronpedia read it);
        written atomically to ``path`` when given. :meth:`from_json` reads it back."""
        from interpkit.graphs._json import to_schema
        from interpkit.results import json_text, write_text_atomic

        data = to_schema(self, slug)
        if path is not None:
            write_text_atomic(path, json_text(data, indent=None) + "\n")
        return data

    @classmethod
    def from_json(cls, source: str | Path | dict[str, Any]) -> Graph:
        """A Graph from :meth:`to_json`'s output (a path or the parsed dict)."""
        from interpkit.graphs._json import from_schema

        return from_schema(source)

    def figure(self, **kwargs: Any) -> Any:
        """A plotly figure: nodes by layer and position, edges coloured by sign (see ``plots.graph_figure``)."""
        from interpkit.results import figure_for

        return figure_for(self, "attribution_graph", **kwargs)

    def circuit(self, model: Any, splice: Any = None) -> Any:
        """This graph's features as an :class:`interpkit.circuits.Circuit` of the live model (over
        ``splice``'s sender graph for transcoders; none for neurons): see :mod:`interpkit.graphs._circuit`.

        >>> with ik.dictionaries.spliced(model, transcoders) as splice:     # doctest: +SKIP
        ...     ik.faithfulness(model, task, graph.prune().circuit(model, splice), "zero")
        """
        from interpkit.graphs._circuit import graph_circuit

        return graph_circuit(self, model, splice)

    def viewer(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the self-contained HTML viewer of this graph (see :func:`interpkit.graphs.write_viewer`)."""
        from interpkit.graphs._viewer import write_viewer

        return write_viewer(self, path, **kwargs)
