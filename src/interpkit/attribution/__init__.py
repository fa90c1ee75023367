"""Attribution: DLA and logit lens; AtP, AtP*, IG and exact at node level; EAP, EAP-IG, exact at edge level;
QK attribution (why a head attends where it does)."""

from interpkit.attribution._api import attribute as attribute
from interpkit.attribution.atp import AttributionError as AttributionError
from interpkit.attribution.atp import atp as atp
from interpkit.attribution.atp_star import atp_star as atp_star
from interpkit.attribution.dla import dla as dla
from interpkit.attribution.dla import logit_lens as logit_lens
from interpkit.attribution.eap import edge_scores as edge_scores
from interpkit.attribution.graph import build_graph as build_graph
from interpkit.attribution.honesty import pearson as pearson
from interpkit.attribution.honesty import spearman as spearman
from interpkit.attribution.ig import ig as ig
from interpkit.attribution.qk import QKWarning as QKWarning
from interpkit.attribution.qk import qk as qk
from interpkit.attribution.qk import qk_loadings as qk_loadings

__all__ = [
    "AttributionError",
    "QKWarning",
    "atp",
    "atp_star",
    "attribute",
    "build_graph",
    "dla",
    "edge_scores",
    "ig",
    "logit_lens",
    "pearson",
    "qk",
    "qk_loadings",
    "spearman",
]
