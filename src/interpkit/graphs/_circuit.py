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

A neuron graph needs no splice: ``graph.circuit(model)`` is the circuit over
:func:`interpkit.graph.neuron_senders` with the graph's neurons as nodes and each layer's other
neurons as ``L{l}.mlp#other`` (dropped); ``b_out`` and, when the graph held it, the first
position's write stay in place.

    >>> circ = neuron_graph.prune().circuit(model)                               # doctest: +SKIP
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


def graph_circuit(graph: Graph, model: Model, splice: Any = None) -> Circuit:
    """The circuit of ``graph``'s features (and errors) over the sender graph they make (module doc)."""
    from interpkit.graph import build_graph, neuron_senders

    held = bool(graph.meta.get("skip_first_position", True))
    if graph.meta.get("features") == "neurons":
        if splice is not None:
            raise GraphError("a neuron graph needs no splice: call graph.circuit(model)")
        neurons = {lay: [] for lay in range(model.cfg.n_layers)}
        for n in graph.nodes:
            if n.kind == "neuron":
                neurons[n.layer].append(n.feature)
        senders = neuron_senders(model, neurons, hold_first=held)
        return _circuit(model, build_graph(model, senders=senders), sum(map(len, neurons.values())))
    if splice is None:
        raise GraphError("a transcoder graph's circuit runs on the spliced transcoders: graph.circuit(model, splice)")
    unskipped = [e.site for e in splice.entries.values() if not e.skip_first]
    if held and unskipped:
        raise GraphError(
            f"the graph holds its first position constant but the splice encodes it at {unskipped}: "
            "splice with skip_first=True (or build the graph with skip_first_position=False)"
        )
    features: dict[int, set[int]] = {}
    for n in graph.nodes:
        if n.kind == "feature":
            features.setdefault(n.layer, set()).add(n.feature)
    edge_graph = build_graph(model, senders=splice.senders({lay: sorted(f) for lay, f in features.items()}))
    return _circuit(model, edge_graph, sum(len(f) for f in features.values()))


def _circuit(model: Model, edge_graph: Any, n_features: int) -> Circuit:
    """Every edge of ``edge_graph`` except those out of the ``#other`` nodes."""
    import torch

    from interpkit.circuits import Circuit

    kept = torch.tensor([not node.label.endswith("#other") for node in edge_graph.senders], dtype=torch.bool)
    meta = {"from": "attribution graph", "features": n_features}
    return Circuit.from_mask(model, edge_graph.mask & kept[:, None], meta=meta, graph=edge_graph)
