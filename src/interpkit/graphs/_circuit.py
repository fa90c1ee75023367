"""An attribution graph as a circuit of :mod:`interpkit.graph`, so faithfulness, discovery's tools
and circuit files work on it in the real model (attention live, not frozen).

Inside ``with ik.dictionaries.spliced(model, transcoders) as splice:``, ``graph.circuit(model,
splice)`` is the circuit over ``build_graph(model, senders=splice.senders(chosen))`` where ``chosen``
are the graph's features, each a node ``L{l}.mlp#{feature}`` of its own. It keeps every edge out of
the embeddings, the heads (the graph froze attention; the circuit runs it), the unspliced MLPs,
the graph's features and the splice's rest at every layer (``L{l}.mlp#rest``: error terms,
``b_dec``, skip term and the first position's whole activation, which the graph holds constant).
It drops the latents outside the graph (``L{l}.mlp#other``). The edge graph has no positions: a
feature counts wherever it is active and the rest is one node per layer, so the circuit keeps
every error node (pruning's choice among them is not expressible here). Its faithfulness under zero
ablation asks how much of the prompt's metric the graph's features carry when the dictionaries'
other latents are silenced in the live model; under mean or counterfactual ablation, as for any
circuit. Splice with ``skip_first=True`` when the graph held its first position constant (the
default), so that the two agree on what a feature at position 0 is.

    >>> with ik.dictionaries.spliced(model, transcoders) as splice:              # doctest: +SKIP
    ...     circ = graph.prune().circuit(model, splice)
    ...     ik.faithfulness(model, task, circ, "zero").scores
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.graphs._frozen import GraphError

if TYPE_CHECKING:
    from interpkit.circuits import Circuit
    from interpkit.graphs._graph import Graph
    from interpkit.models import Model


def graph_circuit(graph: Graph, model: Model, splice: Any) -> Circuit:
    """The circuit of ``graph``'s features and errors over ``splice``'s sender graph (module doc)."""
    import torch

    from interpkit.circuits import Circuit
    from interpkit.graph import build_graph

    if graph.meta.get("features") == "neurons" or any(n.kind == "neuron" for n in graph.nodes):
        raise GraphError(
            "a neuron graph has no dictionary to splice: build the graph with transcoders "
            "(features=...) and splice the same ones to make it a circuit"
        )
    unskipped = [e.site for e in splice.entries.values() if not e.skip_first]
    if graph.meta.get("skip_first_position", True) and unskipped:
        raise GraphError(
            f"the graph holds its first position constant but the splice encodes it at {unskipped}: "
            "splice with skip_first=True (or build the graph with skip_first_position=False)"
        )
    features: dict[int, set[int]] = {}
    for n in graph.nodes:
        if n.kind == "feature":
            features.setdefault(n.layer, set()).add(n.feature)
    edge_graph = build_graph(model, senders=splice.senders({lay: sorted(f) for lay, f in features.items()}))
    kept = torch.tensor([not node.label.endswith("#other") for node in edge_graph.senders], dtype=torch.bool)
    meta = {"from": "attribution graph", "features": sum(len(f) for f in features.values())}
    return Circuit.from_mask(model, edge_graph.mask & kept[:, None], meta=meta, graph=edge_graph)
