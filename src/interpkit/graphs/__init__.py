"""Attribution graphs over features, verified by interventions (Ameisen et al. 2025, "Circuit Tracing").

``attribute(model, prompt, features="neurons" | transcoders)`` builds the graph of one prompt: nodes
are token embeddings, the features active at each position (MLP neurons with frozen gates, or
per-layer transcoder latents), one error node per layer and position (transcoders) and the top
logits; edges are direct effects under frozen attention patterns and norm scales. The Graph
prunes, scores (replacement, completeness), exports circuit-tracer's JSON, draws a figure and
writes a self-contained HTML viewer; ``intervene`` and ``verify`` test its predictions in the
real model.

    >>> g = ik.graphs.attribute(model, "The capital of France is")    # doctest: +SKIP
    >>> g.scores, g.verification["spearman_frozen"]                   # doctest: +SKIP
    >>> g.prune().viewer("runs/graph/viewer.html")                    # doctest: +SKIP
"""

from interpkit.graphs._attribute import attribute as attribute
from interpkit.graphs._features import transcoder_map as transcoder_map
from interpkit.graphs._frozen import GraphError as GraphError
from interpkit.graphs._graph import Graph as Graph
from interpkit.graphs._graph import Node as Node
from interpkit.graphs._intervene import intervene as intervene
from interpkit.graphs._intervene import predict as predict
from interpkit.graphs._intervene import verify as verify
from interpkit.graphs._viewer import write_viewer as write_viewer

__all__ = [
    "Graph",
    "GraphError",
    "Node",
    "attribute",
    "intervene",
    "predict",
    "transcoder_map",
    "verify",
    "write_viewer",
]
