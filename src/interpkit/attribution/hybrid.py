"""Hybrid edge scores: rank every edge by a gradient method, then patch the top candidates exactly.

Gradient estimates (EAP, EAP-IG) are cheap over all edges but can misrank where attention
saturates or paths cancel; exact edge patching is right but costs one row of forwards per edge
and example. The hybrid spends the exact budget where it matters: every edge is scored by
``rank_by``, and the ``candidates`` edges with the largest |estimate| are re-scored by exact
patching (:func:`interpkit.attribution.edge_exact.exact_edges`, rows starting at each
receiver's layer). Those edges carry exact scores, every other edge its estimate, so a circuit
selected from the top of the ranking is verified edge by edge. The honesty check comes free:
the estimate against exact patching on all the candidates (``extras["check"]``).

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=4)
    >>> res = ik.attribution.hybrid(model, task, rank_by="eap", candidates=16)
    >>> res.meta["method"], res.extras["check"]["n"]
    ('hybrid', 16)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.attribution._errors import AttributionError
from interpkit.errors import unknown
from interpkit.graph import build_graph

if TYPE_CHECKING:
    from interpkit.graph import Graph
    from interpkit.models import Model
    from interpkit.results import Result
    from interpkit.tasks import Task

RANKERS = ("eap", "eap-ig", "eap-ig-act")
DEFAULT_CANDIDATES = 256


def hybrid(
    model: Model,
    task: Task,
    direction: str = "denoise",
    *,
    rank_by: str = "eap-ig",
    candidates: int = DEFAULT_CANDIDATES,
    ig_steps: int = 5,
    metric: str | None = None,
    check: Any = 0,
    seed: int = 0,
    graph: Graph | None = None,
    batch_size: int | None = None,
) -> Result:
    """Edge scores of ``rank_by`` with its top ``candidates`` edges (by |score|) replaced by exact patching.

    ``check`` is accepted for the edge methods' uniform signature: the hybrid's check is the
    estimate against exact patching on every candidate.
    """
    import dataclasses

    import torch

    from interpkit.attribution.edge_exact import exact_edges
    from interpkit.attribution.edges import EDGE_TABLE
    from interpkit.attribution.honesty import summary
    from interpkit.runtime import baseline

    if rank_by not in RANKERS:
        raise unknown("hybrid ranking method", rank_by, RANKERS, AttributionError)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise AttributionError(f"candidates must be a number of edges >= 1, got {candidates!r}")
    options = {} if rank_by == "eap" else {"ig_steps": ig_steps}
    ranked = EDGE_TABLE[rank_by](model, task, direction, metric=metric, check=0, seed=seed, graph=graph, **options)
    graph = graph or build_graph(model)  # the graph the ranking was made on
    matrix = ranked.extras["matrix"].clone()
    estimates = matrix[graph.mask]
    order = torch.argsort(estimates.abs(), descending=True, stable=True)[: min(candidates, graph.n_edges)]
    pairs_all = graph.mask.nonzero().tolist()
    chosen = sorted(order.tolist())
    pairs = [tuple(pairs_all[i]) for i in chosen]
    metric = ranked.metric
    base = baseline(model, task.to(model.device), metric)
    exact = exact_edges(model, task.to(model.device), graph, pairs, direction, metric, base["clean_logprobs"],
                        batch_size=batch_size).mean(-1).cpu()  # fmt: skip
    s = torch.tensor([p[0] for p in pairs])
    r = torch.tensor([p[1] for p in pairs])
    matrix[s, r] = exact.float()
    labels = ranked.labels["edge"]
    check_block = summary(estimates[chosen], exact, [labels[i] for i in chosen], seed, list(range(len(task))))
    check_block["what"] = f"{rank_by}'s estimate against exact patching of every candidate (all examples)"
    meta = {**ranked.meta, "method": "hybrid", "rank_by": rank_by, "candidates": len(chosen)}
    extras = {**ranked.extras, "matrix": matrix, "check": check_block, "estimate": estimates}
    return dataclasses.replace(ranked, scores=matrix[graph.mask], meta=meta, extras=extras)
