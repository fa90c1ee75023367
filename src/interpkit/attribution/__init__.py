"""Attribution: AtP at node level; EAP, EAP-IG and exact patching at edge level; head scores."""

from interpkit.attribution._api import attribute as attribute
from interpkit.attribution.atp import AttributionError as AttributionError
from interpkit.attribution.atp import atp as atp
from interpkit.attribution.atp import spearman as spearman
from interpkit.attribution.eap import edge_scores as edge_scores
from interpkit.attribution.graph import build_graph as build_graph

__all__ = ["AttributionError", "atp", "attribute", "build_graph", "edge_scores", "spearman"]
