"""Edge scores by ablation: each edge's effect when it alone is removed from the full model.

For every edge ``e`` of the graph, the model is run with every edge but ``e`` live and ``e``
carrying its ablated value (:mod:`interpkit.circuits._engine`); the score is the change of the
metric, ``m(G without e) - m(G)``, averaged over examples. With ``ablation="counterfactual"``
this is exact edge patching in the noising direction (the quantity EAP approximates to first
order, Syed et al. 2023); with ``"mean"`` it is the one-edge case of the faithfulness
evaluation of Hanna et al. 2024. All edges are rows of a few batched forwards, so it also works
where gradient methods cannot (bridges without per-head input hooks).

    >>> import interpkit as ik
    >>> from interpkit.circuits import discover_circuit, edge_removal_scores
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=8)
    >>> scores = edge_removal_scores(model, task, "counterfactual")
    >>> circ = discover_circuit(model, task, scores=scores, n_edges=20)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from interpkit.circuits._engine import EdgeRunner
from interpkit.results import Result, make_provenance

if TYPE_CHECKING:
    from interpkit.graph import Graph
    from interpkit.models import Model
    from interpkit.tasks import Task


def edge_removal_scores(
    model: Model,
    task: Task,
    ablation: str = "counterfactual",
    *,
    metric: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    graph: Graph | None = None,
) -> Result:
    """Metric change when each edge alone is ablated, dims ``("edge",)`` like ``edge_scores``."""
    import torch

    runner = EdgeRunner(model, task, ablation, metric=metric, seed=seed, graph=graph)
    graph = runner.graph
    pairs = graph.mask.nonzero()  # (n_edges, 2), graph order
    masks = graph.mask[None].repeat(len(pairs), 1, 1)
    masks[torch.arange(len(pairs)), pairs[:, 0], pairs[:, 1]] = False
    full = runner(graph.mask[None], batch_size=batch_size).mean(1)
    values = runner(masks, batch_size=batch_size).mean(1) - full  # (n_edges,)
    matrix = torch.zeros(graph.mask.shape)
    matrix[pairs[:, 0], pairs[:, 1]] = values.float().cpu()
    return Result(
        scores=values.float().cpu(),
        dims=("edge",),
        labels={"edge": graph.edge_labels()},
        metric=runner.metric,
        clean_value=float(runner.clean_values.mean()),
        corrupt_value=float(runner.corrupt_values.mean()),
        kind="edge_attribution",
        meta={
            "method": "edge-ablation",
            "ablation": ablation,
            "level": "edge",
            "n_senders": len(graph.senders),
            "n_receivers": len(graph.receivers),
        },
        extras={"matrix": matrix},
        provenance=make_provenance(model, task, seed),
    )
