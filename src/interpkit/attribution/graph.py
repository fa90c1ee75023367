"""The edge graph, moved to :mod:`interpkit.graph` (nodes of open kinds); these names stay for old imports."""

from interpkit.graph import Graph as Graph
from interpkit.graph import Node as Node
from interpkit.graph import build_graph as build_graph

__all__ = ["Graph", "Node", "build_graph"]
