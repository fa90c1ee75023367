"""EAP: edge attribution patching, every edge of the graph from one backward pass.

Syed, Rager and Conmy 2023; Hanna et al. 2024. The change of the metric when edge u -> v is
patched is estimated as ``Σ_(batch, pos) Δ_u · ∂m/∂x_v``, where ``Δ_u`` is the change of u's
output between the runs (for a head, ``Δz @ W_O``) and ``x_v`` is v's own copy of the residual
stream (each head's q/k/v input, each MLP's input, the final residual for logits). Every edge
comes from one forward per run and one backward: the scores are a (senders x receivers) matrix
product. Grouped-query models keep their KV heads: key and value inputs are per KV head.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=4)
    >>> res = ik.attribution.eap(model, task, check=0)
    >>> res.dims, len(res.labels["edge"])
    (('edge',), 81)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from interpkit.attribution._edges import finish_edges, linear_scores, setup_edges
from interpkit.attribution._gradients import receiver_gradients
from interpkit.attribution.honesty import DEFAULT_SAMPLE

if TYPE_CHECKING:
    from interpkit.graph import Graph
    from interpkit.models import Model
    from interpkit.results import Result
    from interpkit.tasks import Task


def eap(
    model: Model,
    task: Task,
    direction: str = "denoise",
    *,
    metric: str | None = None,
    check: int | str = DEFAULT_SAMPLE,
    seed: int = 0,
    graph: Graph | None = None,
) -> Result:
    """EAP scores of every edge of ``graph`` (default: ``interpkit.graph.build_graph(model)``).

    ``check``: exact patching of a sample of that many edges (half the largest scores), correlated
    with the estimate in ``extras["check"]`` (0: off; ``"thorough"``: 128 edges on 8 examples).
    """
    run = setup_edges(model, task, direction, metric, graph, check=check, seed=seed)
    grads = receiver_gradients(model, run.task, run.target, run.metric, run.base["clean_logprobs"], graph=run.graph)
    matrix, per_example = linear_scores(run, grads)
    return finish_edges(model, run, matrix, "eap", per_example, seed=seed)
