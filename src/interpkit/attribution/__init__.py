"""Attribution: DLA and logit lens; AtP, AtP*, IG and exact at node level; EAP, EAP-IG, exact at edge level.

Node methods (``ik.attribute(..., level="node")``) share ``ik.patch``'s plan and units; edge
methods (``level="edge"``, :func:`edge_scores`) score every edge of an :mod:`interpkit.graph`
graph, one file per method in the table of ``edges.py``. Gradient methods carry their agreement
with exact patching on a sample (``extras["check"]``, ``honesty.py``).
"""

from interpkit.attribution._api import attribute as attribute
from interpkit.attribution._errors import AttributionError as AttributionError
from interpkit.attribution.atp import atp as atp
from interpkit.attribution.atp_star import atp_star as atp_star
from interpkit.attribution.dla import dla as dla
from interpkit.attribution.dla import logit_lens as logit_lens
from interpkit.attribution.eap import eap as eap
from interpkit.attribution.eap_act import eap_ig_act as eap_ig_act
from interpkit.attribution.eap_ig import eap_ig as eap_ig
from interpkit.attribution.edge_exact import exact_edge_scores as exact_edge_scores
from interpkit.attribution.edges import EDGE_METHODS as EDGE_METHODS
from interpkit.attribution.edges import edge_scores as edge_scores
from interpkit.attribution.honesty import pearson as pearson
from interpkit.attribution.honesty import spearman as spearman
from interpkit.attribution.hybrid import hybrid as hybrid
from interpkit.attribution.ig import ig as ig
from interpkit.attribution.qk import QKWarning as QKWarning
from interpkit.attribution.qk import qk as qk
from interpkit.attribution.qk import qk_loadings as qk_loadings
from interpkit.graph import build_graph as build_graph

__all__ = [
    "EDGE_METHODS",
    "AttributionError",
    "QKWarning",
    "atp",
    "atp_star",
    "attribute",
    "build_graph",
    "dla",
    "eap",
    "eap_ig",
    "eap_ig_act",
    "edge_scores",
    "exact_edge_scores",
    "hybrid",
    "ig",
    "logit_lens",
    "pearson",
    "qk",
    "qk_loadings",
    "spearman",
]
