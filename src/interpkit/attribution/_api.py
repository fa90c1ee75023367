"""``ik.attribute(model, task, method, level)``: one entry point over the attribution methods.

Node level: ``atp`` (attribution patching) and ``exact`` (activation patching), both over one
site kind (``site="head_out"`` by default). Edge level: ``eap``, ``eap-ig`` and ``exact`` over
every edge of the graph in ``graph.py``. Every method returns a Result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.attribution.atp import AttributionError, atp
from interpkit.attribution.eap import edge_scores
from interpkit.errors import unknown

if TYPE_CHECKING:
    from interpkit.models import Model
    from interpkit.results import Result
    from interpkit.tasks import Task

NODE_METHODS = ("atp", "exact")
EDGE_METHODS = ("eap", "eap-ig", "exact")


def attribute(model: Model, task: Task, method: str = "eap", level: str = "edge", **options: Any) -> Result:
    """Attribute the task metric to nodes or edges.

    >>> res = ik.attribute(model, task, method="eap-ig", level="edge", ig_steps=5)   # doctest: +SKIP
    >>> res = ik.attribute(model, task, method="atp", level="node", site="head_out")  # doctest: +SKIP
    """
    if level == "edge":
        if method not in EDGE_METHODS:
            raise unknown("edge attribution method", method, EDGE_METHODS, AttributionError)
        return edge_scores(model, task, method, **options)
    if level == "node":
        if method not in NODE_METHODS:
            raise unknown("node attribution method", method, NODE_METHODS, AttributionError)
        if method == "atp":
            return atp(model, task, **options)
        from interpkit.patching import patch

        return patch(model, task, **{"site": "head_out", **options})
    raise unknown("attribution level", level, ("node", "edge"), AttributionError)
