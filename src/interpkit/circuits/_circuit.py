"""``Circuit``: a set of edges of a model's computational graph, with optional per-edge scores.

The graph is an :mod:`interpkit.graph` graph (by default :func:`interpkit.graph.build_graph`'s: senders (``embed``, heads
``L3H5``, MLPs ``L3.mlp``) write to the residual stream, receivers (``L3H5.q``, ``L3H5.k`` or
``L3KV1.k`` under grouped-query attention, ``L3.mlp``, ``logits``) read it, and an edge
``"L0H3->L1H5.k"`` exists where the sender writes before the receiver reads; other node kinds
can be registered). A circuit keeps a
subset of those edges; every other edge carries its ablated value when the circuit is run
(:func:`interpkit.circuits.run_with_edges`).

A circuit remembers which model it belongs to (name, shape and a hash of the graph), so a saved
circuit cannot silently be applied to another model. :meth:`Circuit.prune` drops edges that
cannot matter: an edge whose sender is never reached from ``embed`` through kept edges, or
whose receiver's component has no kept path on to ``logits`` (Conmy et al. 2023, ACDC §3; the
MIB benchmark, Mueller et al. 2025, evaluates circuits after the same pruning).

    >>> import interpkit as ik
    >>> from interpkit.circuits import Circuit
    >>> model = ik.load_model("toy-induction")
    >>> circ = Circuit(model, ["embed->L0H1.k", "L0H1->L1H2.k", "L1H2->logits"])
    >>> len(circ), "L1H2->logits" in circ
    (3, True)
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.circuits._errors import CircuitError
from interpkit.errors import unknown
from interpkit.graph import Graph, build_graph
from interpkit.results import write_text_atomic

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model

FORMAT = "interpkit-circuit/1"


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """What a circuit records about its model: enough to rebuild and check its graph."""

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    attn_only: bool
    graph_hash: str
    parallel_attn_mlp: bool = False  # absent from files written before it was recorded: sequential blocks
    graph_kinds: dict[str, list[str]] | None = None  # the node kinds, where not the default graph's

    @classmethod
    def of(cls, model: Model, graph: Graph | None = None) -> ModelIdentity:
        c = model.cfg
        graph = graph or build_graph(model)
        kinds = None if graph.is_default else {k: list(v) for k, v in graph.kinds.items()}
        return cls(
            model.name, c.n_layers, c.n_heads, c.n_kv_heads, bool(c.attn_only), graph.hash(), c.parallel_attn_mlp,
            kinds,
        )  # fmt: skip

    def graph(self) -> Graph:
        cfg = types.SimpleNamespace(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            attn_only=self.attn_only,
            parallel_attn_mlp=self.parallel_attn_mlp,
        )
        kinds = self.graph_kinds or {}
        return build_graph(types.SimpleNamespace(cfg=cfg), kinds.get("senders"), kinds.get("receivers"))

    def __hash__(self) -> int:
        return hash((self.name, self.graph_hash))


def graph_hash(graph: Graph) -> str:
    """SHA-256 (first 16 hex digits) of the graph's node labels and edge mask."""
    return graph.hash()


def receiver_node(graph: Graph, r: int) -> str:
    """The component a receiver input belongs to: ``L3H5.q`` -> ``L3H5``, ``L3KV1.k`` -> ``L3KV1``."""
    node = graph.receivers[r]
    return node.label if node.kind in ("mlp", "logits") else node.label.rsplit(".", 1)[0]


def feeds(graph: Graph) -> torch.Tensor:
    """``(n_receivers, n_senders)`` bool: receiver r is an input of sender component s.

    A head is fed by its query input and by the key/value inputs of its KV head; an MLP by its
    input. ``embed`` has no inputs and ``logits`` is no sender.
    """
    return graph.feeds()


def _flags(graph: Graph, kind: str, device: Any) -> torch.Tensor:
    import torch

    nodes = graph.senders if kind == "embed" else graph.receivers
    return torch.tensor([n.kind == kind for n in nodes], device=device)


def reached_from_embed(graph: Graph, mask: torch.Tensor, fed: torch.Tensor | None = None) -> torch.Tensor:
    """``(n_senders,)`` bool: senders with a path of ``mask``'s edges from ``embed``."""
    import torch

    fed = feeds(graph).to(mask.device) if fed is None else fed  # (R, S)
    embed = _flags(graph, "embed", mask.device)
    reached = embed
    while True:
        recv = (mask & reached[:, None]).any(0)  # (R,) inputs with a kept edge from a reached sender
        new = embed | (fed & recv[:, None]).any(0)
        if torch.equal(new, reached):
            return reached
        reached = new


def reaches_logits(graph: Graph, mask: torch.Tensor, fed: torch.Tensor | None = None) -> torch.Tensor:
    """``(n_receivers,)`` bool: receivers whose component has a path of ``mask``'s edges to ``logits``."""
    import torch

    fed = feeds(graph).to(mask.device) if fed is None else fed  # (R, S)
    logits = _flags(graph, "logits", mask.device)
    useful = logits
    while True:
        onward = (mask & useful[None, :]).any(1)  # (S,) senders with a kept edge to a useful input
        new = logits | (fed & onward[None, :]).any(1)
        if torch.equal(new, useful):
            return useful
        useful = new


def prune_mask(graph: Graph, mask: torch.Tensor) -> torch.Tensor:
    """Drop edges not on a path embed -> ... -> logits, to a fixpoint; ``mask`` (S, R) bool."""
    import torch

    fed = feeds(graph).to(mask.device)
    mask = mask & graph.mask.to(mask.device)
    while True:
        pruned = mask & reached_from_embed(graph, mask, fed)[:, None] & reaches_logits(graph, mask, fed)[None, :]
        if torch.equal(pruned, mask):
            return mask
        mask = pruned


class Circuit:
    """Edges of one model's graph, optionally scored. See the module docstring."""

    def __init__(
        self,
        model: Model | ModelIdentity,
        edges: Iterable[str],
        scores: Mapping[str, float] | None = None,
        meta: Mapping[str, Any] | None = None,
        graph: Graph | None = None,
    ) -> None:
        self.identity = model if isinstance(model, ModelIdentity) else ModelIdentity.of(model, graph)
        self.graph = graph if graph is not None and graph.hash() == self.identity.graph_hash else self.identity.graph()
        self._index = {label: i for i, label in enumerate(self.graph.edge_labels())}
        wanted = set()
        for label in edges:
            if label not in self._index:
                raise unknown("edge", str(label), list(self._index), CircuitError)
            wanted.add(label)
        self._edges = sorted(wanted, key=self._index.__getitem__)  # graph (row-major) order
        self._set = frozenset(self._edges)
        self.scores = {k: float(scores[k]) for k in self._edges if k in scores} if scores else None
        self.meta = dict(meta or {})

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_mask(
        cls,
        model: Model | ModelIdentity,
        mask: torch.Tensor,
        matrix: torch.Tensor | None = None,
        meta: Mapping[str, Any] | None = None,
        graph: Graph | None = None,
    ) -> Circuit:
        """The circuit of the edges where ``mask`` (senders x receivers) is True; scores from ``matrix``."""
        identity = model if isinstance(model, ModelIdentity) else ModelIdentity.of(model, graph)
        graph = graph if graph is not None and graph.hash() == identity.graph_hash else identity.graph()
        if tuple(mask.shape) != tuple(graph.mask.shape):
            raise CircuitError(f"edge mask has shape {tuple(mask.shape)}; this graph needs {tuple(graph.mask.shape)}")
        pairs = (mask.cpu().bool() & graph.mask).nonzero().tolist()
        edges = [f"{graph.senders[s].label}->{graph.receivers[r].label}" for s, r in pairs]
        scores = None
        if matrix is not None:
            m = matrix.detach().cpu().float()
            scores = {e: float(m[s, r]) for e, (s, r) in zip(edges, pairs, strict=True)}
        return cls(identity, edges, scores, meta, graph)

    @classmethod
    def full(cls, model: Model | ModelIdentity, graph: Graph | None = None) -> Circuit:
        """Every edge of the graph."""
        identity = model if isinstance(model, ModelIdentity) else ModelIdentity.of(model, graph)
        graph = graph if graph is not None and graph.hash() == identity.graph_hash else identity.graph()
        return cls(identity, graph.edge_labels(), graph=graph)

    # ------------------------------------------------------------------ set protocol
    @property
    def edges(self) -> list[str]:
        """Edge labels in graph order."""
        return list(self._edges)

    def __len__(self) -> int:
        return len(self._edges)

    def __contains__(self, edge: object) -> bool:
        return edge in self._set

    def __iter__(self):
        return iter(self._edges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Circuit) and self.identity == other.identity and self._edges == other._edges

    def __repr__(self) -> str:
        return f"Circuit({len(self)} edges, {len(self.nodes)} nodes, model={self.identity.name!r})"

    @property
    def nodes(self) -> list[str]:
        """Components the edges touch, in graph order: senders, receiver components (``L3KV1`` for a shared KV input)."""
        mask = self.mask()
        out = [n.label for s, n in enumerate(self.graph.senders) if bool(mask[s].any())]
        for r in range(len(self.graph.receivers)):
            if bool(mask[:, r].any()):
                label = receiver_node(self.graph, r)
                if label not in out:
                    out.append(label)
        return out

    def mask(self) -> torch.Tensor:
        """``(n_senders, n_receivers)`` bool: the circuit's edges."""
        import torch

        out = torch.zeros_like(self.graph.mask)
        for label in self._edges:
            out[self.graph.edge_index(label)] = True
        return out

    def check_model(self, model: Model) -> None:
        """CircuitError unless ``model`` is the model this circuit was built on."""
        theirs = ModelIdentity.of(model, self.graph)
        if theirs != self.identity:
            diff = [
                f"{f.name}: circuit {getattr(self.identity, f.name)!r}, model {getattr(theirs, f.name)!r}"
                for f in dataclasses.fields(ModelIdentity)
                if getattr(self.identity, f.name) != getattr(theirs, f.name)
            ]
            raise CircuitError(f"this circuit belongs to another model ({'; '.join(diff)})")

    def prune(self) -> Circuit:
        """A new circuit without edges off every embed -> logits path (iterated to a fixpoint)."""
        kept = prune_mask(self.graph, self.mask())
        pairs = kept.nonzero().tolist()
        edges = [f"{self.graph.senders[s].label}->{self.graph.receivers[r].label}" for s, r in pairs]
        return Circuit(self.identity, edges, self.scores, self.meta, self.graph)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": dataclasses.asdict(self.identity),
            "edges": self.edges,
            "scores": self.scores,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], model: Model | None = None) -> Circuit:
        if data.get("format") != FORMAT:
            raise CircuitError(f"not an interpkit circuit (format {data.get('format')!r}, expected {FORMAT!r})")
        try:
            identity = ModelIdentity(**data["model"])
        except TypeError as exc:
            raise CircuitError(f"malformed model block in circuit file: {exc}") from None
        if identity.graph().hash() != identity.graph_hash:
            raise CircuitError(f"circuit file's graph hash {identity.graph_hash!r} does not match its model shape")
        circ = cls(identity, data.get("edges", []), data.get("scores"), data.get("meta"))
        if model is not None:
            circ.check_model(model)
        return circ

    def save(self, path: str | os.PathLike) -> Path:
        """Write the circuit as JSON (atomically); :meth:`load` reads it back."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, model: Model | None = None) -> Circuit:
        """Read a circuit file; with ``model``, CircuitError if it was built on another model."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CircuitError(f"cannot read circuit file {str(path)!r}: {exc}") from exc
        return cls.from_dict(data, model)

    def figure(self, title: str | None = None) -> Any:
        """A plotly figure of the circuit: layers left to right, edges sized by |score|, coloured by sign."""
        from interpkit.results import figure_for

        return figure_for(self, "circuit", title=title)
