"""``ik.attribute(model, task, method, level)``: one entry point over the attribution methods.

Every method is a function ``(model, task, **options) -> Result`` in one of two small tables.
Node level (one site kind, ``site="head_out"`` by default, the units and layout of ``ik.patch``):
``atp`` (attribution patching), ``atp*`` (AtP with the QK fix and GradDrop), ``ig`` (integrated
gradients along the activation path), ``exact`` (activation patching itself) and ``dla``
(direct logit attribution of the clean run, ``by="head"`` by default). Edge level, over every
edge of an :mod:`interpkit.graph` graph (``edges.py``): ``eap``, ``eap-ig`` (``variant="inputs"`` or ``"activations"``),
``eap-ig-act`` (the activations variant) and ``exact``. Gradient methods carry
``extras["check"]``, their agreement with exact patching on a sample (``check=0``: off).

    >>> res = ik.attribute(model, task, method="eap-ig", level="edge", ig_steps=5)   # doctest: +SKIP
    >>> res = ik.attribute(model, task, method="atp*", level="node", site="head_k")   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from interpkit.attribution._errors import AttributionError
from interpkit.attribution.atp import atp
from interpkit.attribution.atp_star import atp_star
from interpkit.attribution.dla import dla
from interpkit.attribution.edges import EDGE_TABLE
from interpkit.attribution.ig import ig
from interpkit.errors import closest, unknown
from interpkit.runtime import default_direction

if TYPE_CHECKING:
    from interpkit.models import Model
    from interpkit.results import Result
    from interpkit.tasks import Task


def _exact_nodes(model: Model, task: Task, **options: Any) -> Result:
    from interpkit.patching import patch

    options.pop("check", None)
    return patch(model, task, **{"site": "head_out", **options})


NODE_TABLE: dict[str, Callable[..., Result]] = {
    "atp": atp,
    "atp*": atp_star,
    "ig": ig,
    "exact": _exact_nodes,
    "dla": dla,
}
NODE_METHODS = tuple(NODE_TABLE)
LEVELS = {"node": NODE_TABLE, "edge": EDGE_TABLE}


def attribute(model: Model, task: Task, method: str = "eap", level: str = "edge", **options: Any) -> Result:
    """Attribute the task metric to nodes or edges with ``method`` (see the tables above).

    >>> res = ik.attribute(model, task, method="atp", level="node", site="head_out")  # doctest: +SKIP
    """
    if level not in LEVELS:
        raise unknown("attribution level", level, tuple(LEVELS), AttributionError)
    table = LEVELS[level]
    if method not in table:
        raise unknown(f"{level} attribution method", method, tuple(table), AttributionError)
    valid = _options(level, method)
    for name in options:
        if name not in valid:
            near = closest(name, valid)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise AttributionError(
                f"{level} method {method!r} has no option {name!r}{hint}; its options: {', '.join(valid)}"
            )
    if level == "edge":  # the edge methods' default direction was "noise" before 0.2
        options["direction"] = default_direction(options.get("direction"), "ik.attribute(level='edge')", was="noise")
    return table[method](model, task, **options)


def _options(level: str, method: str) -> tuple[str, ...]:
    """The keyword options ``ik.attribute`` accepts for one method (its function's parameters)."""
    import inspect

    if level == "node" and method == "exact":
        from interpkit.patching import patch

        return (*[p for p in inspect.signature(patch).parameters if p not in ("model", "task")], "check")
    fn = LEVELS[level][method]
    return tuple(p for p in inspect.signature(fn).parameters if p not in ("model", "task"))
