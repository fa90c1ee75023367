"""The smallest circuit that reaches a target faithfulness: what ``discover_circuit`` returns by default.

Given edge scores, the candidates are the (pruned) top-k circuits. Their faithfulness is measured
on a coarse geometric grid of sizes in one batched evaluation (the full and empty graphs are the
normalisation's own rows), then the bracket between the last size below the target and the first
at or above it is narrowed by rounds of several interior sizes at once (each round one batched
evaluation, shared with the curve), down to a single edge. Faithfulness is not monotone in k in
general; the answer is the smallest size *found* to reach the target, and every size evaluated is
reported (``meta["curve"]``), so a reader sees the curve the choice was made on.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=8)
    >>> circ = ik.discover_circuit(model, task, "eap", direction="noise", target=0.8)
    >>> circ.meta["faithfulness"] >= 0.8, circ.meta["reached"]
    (True, True)
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from interpkit.circuits._circuit import prune_mask
from interpkit.circuits._errors import CircuitError

if TYPE_CHECKING:
    import torch

    from interpkit.graph import Graph
    from interpkit.models import Model
    from interpkit.tasks import Task

ROUND_POINTS = 7  # interior sizes evaluated per bisection round (one batched evaluation)


class CircuitWarning(UserWarning):
    """A circuit was returned that does not meet what was asked (the target faithfulness)."""


def _grid(n: int) -> list[int]:
    sizes, k = {0, n}, 1
    while k < n:
        sizes.add(k)
        k *= 2
    return sorted(sizes)


def smallest_faithful(
    model: Model,
    task: Task,
    graph: Graph,
    select: Any,
    target: float,
    ablation: str,
    metric: str | None,
    seed: int,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The mask of the smallest pruned ``select(k)`` circuit with faithfulness >= ``target``, and what was measured.

    ``select(k)`` is the (unpruned) top-k mask of the ranking. Returns ``(mask, info)``; ``info``
    has the chosen size, its faithfulness, whether the target was reached, and the curve.
    """
    import torch

    from interpkit.circuits._engine import EdgeRunner

    if not 0.0 < float(target) <= 1.5:
        raise CircuitError(f"target faithfulness must be in (0, 1.5], got {target!r}")
    runner = EdgeRunner(model, task, ablation, metric=metric, seed=seed, graph=graph)
    ends = runner(torch.stack([graph.mask, torch.zeros_like(graph.mask)]))  # (2, examples): full, empty
    full, empty = ends[0].double().mean(), ends[1].double().mean()
    if float(full - empty) == 0.0:
        raise CircuitError(f"cannot normalise: the metric is the same with every edge and with none ({ablation})")
    curve: dict[int, float] = {0: 0.0}
    masks: dict[int, torch.Tensor] = {}

    def measure(sizes: list[int]) -> None:
        todo = [k for k in sizes if k not in curve]
        if not todo:
            return
        batch = torch.stack([prune_mask(graph, select(k)) for k in todo])
        values = runner(batch).double().mean(-1)
        for k, m, v in zip(todo, batch, values, strict=True):
            curve[k], masks[k] = float((v - empty) / (full - empty)), m

    n = graph.n_edges
    measure(_grid(n))
    reached = [k for k in sorted(curve) if curve[k] >= target]
    if reached:
        hi = reached[0]
        lo = max(k for k in curve if k < hi)
        while hi - lo > 1:
            step = (hi - lo) / (ROUND_POINTS + 1)
            measure(sorted({lo + max(1, round(step * i)) for i in range(1, ROUND_POINTS + 1)} - {hi}))
            inside = [k for k in sorted(curve) if lo < k < hi and curve[k] >= target]
            hi = inside[0] if inside else hi
            lo = max(k for k in curve if k < hi)
        chosen = hi
    else:
        chosen = max(curve, key=lambda k: (curve[k], -k))
        best = curve[chosen]
        warnings.warn(
            f"no circuit size reaches faithfulness {target:g} under {ablation} ablation: the most faithful top-k "
            f"circuit found has {int(masks[chosen].sum()) if chosen in masks else 0} edges and faithfulness "
            f"{best:.3f}; it is returned (see circuit.meta['curve'])",
            CircuitWarning,
            stacklevel=3,
        )
    mask = masks.get(chosen, torch.zeros_like(graph.mask))
    info = {
        "target": float(target),
        "ablation": ablation,
        "reached": bool(reached),
        "n_edges_chosen": chosen,
        "faithfulness": curve[chosen],
        "curve": {"sizes": sorted(curve), "faithfulness": [curve[k] for k in sorted(curve)]},
        "evaluated": len(curve),
    }
    if not reached:
        info["note"] = f"no size reached {target:g}; the most faithful circuit found is returned"
    return mask, info
