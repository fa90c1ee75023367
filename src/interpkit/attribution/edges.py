"""``edge_scores``: every edge method in one table, one file each.

``eap`` (``eap.py``), ``eap-ig`` (``eap_ig.py``; ``variant="inputs"`` or ``"activations"``),
``eap-ig-act`` (``eap_act.py``: the activations variant), ``exact`` (``edge_exact.py``) and
``hybrid`` (``hybrid.py``: a gradient ranking with its top candidates patched exactly). Each is
``(model, task, direction, *, metric, check, seed, graph, ...) -> Result`` over the edges of
``graph`` (default :func:`interpkit.graph.build_graph`); adding a method is one file and one row.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=4)
    >>> ik.attribution.edge_scores(model, task, "eap", direction="denoise", check=0).meta["method"]
    'eap'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from interpkit.attribution._errors import AttributionError
from interpkit.attribution.eap import eap
from interpkit.attribution.eap_act import eap_ig_act
from interpkit.attribution.eap_ig import eap_ig
from interpkit.attribution.edge_exact import exact_edge_scores
from interpkit.attribution.hybrid import hybrid
from interpkit.errors import unknown
from interpkit.runtime import default_direction

if TYPE_CHECKING:
    from interpkit.models import Model
    from interpkit.results import Result
    from interpkit.tasks import Task

EDGE_TABLE: dict[str, Callable[..., Result]] = {
    "eap": eap,
    "eap-ig": eap_ig,
    "eap-ig-act": eap_ig_act,
    "exact": exact_edge_scores,
    "hybrid": hybrid,
}
EDGE_METHODS = tuple(EDGE_TABLE)


def edge_scores(model: Model, task: Task, method: str = "eap", direction: str | None = None, **options: Any) -> Result:
    """Score every edge of the graph with ``method`` (see :data:`EDGE_TABLE`); ``options`` go to the method.

    ``direction`` defaults to "denoise", interpkit's one default (before 0.2 it was "noise" here:
    omitting it warns, pass it to silence the warning).
    """
    if method not in EDGE_TABLE:
        raise unknown("edge method", method, EDGE_METHODS, AttributionError)
    direction = default_direction(direction, "edge_scores", was="noise")
    return EDGE_TABLE[method](model, task, direction, **options)
