"""Circuit discovery: pick the edges of a circuit from edge scores, or by ablating edges (ACDC).

Selections over edge scores (EAP, EAP-IG or exact edge patching, see
:mod:`interpkit.attribution.eap`), all by the magnitude of the score since an edge that moves
the metric either way is part of the mechanism:

* ``top_n``: the ``n_edges`` edges with the largest |score| (Syed et al. 2023);
* ``threshold``: every edge with |score| >= ``threshold``;
* ``greedy``: Hanna et al. 2024 ("Have faith in faithfulness", §4): start from ``logits`` and
  repeatedly add the highest-|score| edge whose receiver's component is already in the circuit,
  until ``n_edges``. The result is connected by construction, so fewer edges are lost to pruning.

``acdc`` (Conmy et al. 2023, "Towards automated circuit discovery", Algorithm 1) needs no
scores: starting from the full graph, it visits receivers from ``logits`` backwards in reverse
topological order and, for each incoming edge (latest sender first), patches that edge to its
ablated value in a real forward; the edge stays removed when the metric (KL divergence to the
full model by default, or the task metric) changes by less than ``tau``. See ``_acdc``.

Every selection is pruned afterwards (:meth:`Circuit.prune`): edges off every embed -> logits
path are dropped, so a circuit can have fewer edges than asked for.

    >>> import interpkit as ik
    >>> from interpkit.circuits import discover_circuit, edge_removal_scores
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=8)
    >>> circ = discover_circuit(model, task, scores=edge_removal_scores(model, task), n_edges=20)
    >>> len(circ) <= 20
    True
    >>> len(discover_circuit(model, task, select="acdc", tau=0.05)) > 0
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.circuits._circuit import Circuit, feeds
from interpkit.circuits._errors import CircuitError
from interpkit.errors import unknown
from interpkit.graph import Graph, build_graph

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.results import Result
    from interpkit.tasks import Task

SELECTIONS = ("top_n", "threshold", "greedy", "acdc")
METHODS = ("eap", "eap-ig", "eap-ig-act", "exact", "hybrid")


def graph_of(model: Model, obj: Any = None, graph: Graph | None = None) -> Graph:
    """The graph ``obj`` (a Circuit, or an edge Result whose ``meta["graph"]`` names its node kinds) was made on."""
    from interpkit.circuits._circuit import Circuit

    if graph is not None:
        return graph
    if isinstance(obj, Circuit):
        return obj.graph
    kinds = (getattr(obj, "meta", None) or {}).get("graph") or {}
    return build_graph(model, kinds.get("senders"), kinds.get("receivers"))


def score_matrix(model: Model, scores: Result | Circuit, graph: Graph | None = None) -> torch.Tensor:
    """``(n_senders, n_receivers)`` scores (0 off the graph) from an edge-attribution Result or a scored Circuit."""
    import torch

    from interpkit.circuits._circuit import Circuit

    graph = graph_of(model, scores, graph)
    if isinstance(scores, Circuit):
        scores.check_model(model)
        if not scores.scores:
            raise CircuitError("this circuit has no edge scores to rank its edges by")
        matrix = torch.zeros(graph.mask.shape)
        for label, value in scores.scores.items():
            matrix[graph.edge_index(label)] = value
        return matrix
    if getattr(scores, "dims", None) != ("edge",):
        raise CircuitError(f"expected an edge attribution Result (dims ('edge',)) or a scored Circuit, got {scores!r}")
    labels = scores.labels.get("edge") or []
    if labels != graph.edge_labels():
        bad = next((e for e in labels if e not in set(graph.edge_labels())), None)
        raise CircuitError(
            f"these edge scores are not for {model.name}'s graph"
            + (f" (edge {bad!r} is not in it)" if bad else " (the edges differ in number or order)")
        )
    matrix = torch.zeros(graph.mask.shape)
    matrix[graph.mask] = scores.scores.detach().float().cpu()
    return matrix


def top_n_mask(graph: Graph, matrix: torch.Tensor, n_edges: int) -> torch.Tensor:
    """The ``n_edges`` edges of largest |score| (ties broken by graph order)."""
    import torch

    key = matrix.abs().masked_fill(~graph.mask, -1.0).reshape(-1)
    n = max(0, min(int(n_edges), graph.n_edges))
    out = torch.zeros(key.numel(), dtype=torch.bool)
    out[torch.sort(key, descending=True, stable=True).indices[:n]] = True
    return out.reshape(graph.mask.shape) & graph.mask


def greedy_mask(graph: Graph, matrix: torch.Tensor, n_edges: int) -> torch.Tensor:
    """Hanna et al. 2024's greedy growth from ``logits`` (see the module docstring)."""
    import torch

    fed = feeds(graph)  # (R, S): receiver r is an input of sender component s
    key = matrix.abs().masked_fill(~graph.mask, -1.0)
    chosen = torch.zeros_like(graph.mask)
    live = torch.tensor([n.kind == "logits" for n in graph.receivers])  # receivers whose component is in
    for _ in range(max(0, min(int(n_edges), graph.n_edges))):
        cand = key.masked_fill(~live[None, :] | chosen, -1.0)
        best = int(cand.reshape(-1).argmax())
        s, r = divmod(best, key.shape[1])
        if float(cand[s, r]) < 0:
            break  # nothing left that connects to the circuit
        chosen[s, r] = True
        live |= fed[:, s]
    return chosen


def _check_sizes(select: str, n_edges: Any, threshold: Any, tau: Any, target: Any) -> None:
    if tau is not None:
        raise CircuitError(f"tau is ACDC's option; select={select!r} does not use it")
    if select == "threshold":
        if threshold is None or n_edges is not None or target is not None:
            raise CircuitError("select='threshold' needs threshold (and no n_edges or target)")
    elif threshold is not None or (n_edges is not None and target is not None):
        raise CircuitError(f"select={select!r} takes n_edges or a target faithfulness (default 0.9), not both")
    elif n_edges is not None and (isinstance(n_edges, bool) or not isinstance(n_edges, int) or n_edges < 0):
        raise CircuitError(f"n_edges must be an int >= 0, got {n_edges!r}")


def discover_circuit(
    model: Model,
    task: Task,
    method: str = "eap-ig",
    *,
    select: str = "top_n",
    n_edges: int | None = None,
    threshold: float | None = None,
    tau: float | None = None,
    metric: str | None = None,
    ablation: str = "counterfactual",
    scores: Result | None = None,
    seed: int = 0,
    direction: str | None = None,
    graph: Graph | None = None,
    target: float | None = None,
    **method_options: Any,
) -> Circuit:
    """A pruned circuit for ``task``: edges selected from ``method``'s scores, or found by ACDC.

    With ``top_n`` or ``greedy`` and no ``n_edges``, the circuit is the smallest one found whose
    faithfulness under ``ablation`` reaches ``target`` (default 0.9; see ``_target``): its size,
    faithfulness and the curve searched are in ``circuit.meta``; where no size reaches the target,
    the most faithful circuit found is returned with a ``CircuitWarning`` that says so.
    ``scores``: an edge attribution Result to select from instead of computing ``method``'s.
    ``ablation`` is used by the target search and by ACDC (with ``tau``); ``method_options`` go to
    :func:`interpkit.attribution.edge_scores` (``ig_steps``, ...).

    >>> circ = discover_circuit(model, task, "eap", select="greedy", n_edges=30)   # doctest: +SKIP
    >>> circ = discover_circuit(model, task, target=0.8)                          # doctest: +SKIP
    >>> circ = discover_circuit(model, task, select="acdc", tau=0.01)              # doctest: +SKIP
    """
    if method == "acdc" and select == "top_n":
        select = "acdc"  # ACDC is a discovery method of its own, not a selection over scores
    if select not in SELECTIONS:
        raise unknown("selection", str(select), SELECTIONS, CircuitError)
    meta: dict[str, Any] = {"select": select, "metric": metric or task.metric, "task": task.name}
    if select == "acdc":
        if tau is None:
            raise CircuitError("select='acdc' needs tau, the largest metric change an edge removal may cause")
        if n_edges is not None or threshold is not None:
            raise CircuitError("select='acdc' takes tau, not n_edges or threshold")
        from interpkit.circuits._acdc import acdc

        return acdc(model, task, tau=float(tau), metric=metric, ablation=ablation, seed=seed, graph=graph)
    _check_sizes(select, n_edges, threshold, tau, target)
    if scores is None:
        if method not in METHODS:
            raise unknown("edge method", str(method), METHODS, CircuitError)
        from interpkit.attribution import edge_scores
        from interpkit.runtime import default_direction

        direction = default_direction(direction, "discover_circuit", was="noise")
        scores = edge_scores(model, task, method, direction, metric=metric, seed=seed, graph=graph, **method_options)
        meta["method"] = method
    else:
        meta["method"] = (scores.meta or {}).get("method", "given scores")
    graph = graph_of(model, scores, graph)
    matrix = score_matrix(model, scores, graph)
    pick = {"top_n": top_n_mask, "greedy": greedy_mask}.get(select)
    if select == "threshold":
        mask = (matrix.abs() >= float(threshold)) & graph.mask
    elif n_edges is not None:
        mask = pick(graph, matrix, n_edges)
    else:
        from interpkit.circuits._target import smallest_faithful

        mask, found = smallest_faithful(
            model, task, graph, lambda k: pick(graph, matrix, k), 0.9 if target is None else target, ablation,
            metric, seed,
        )  # fmt: skip
        meta.update(found)
    meta.update({"n_edges_requested": n_edges, "threshold": threshold, "n_edges_selected": int(mask.sum())})
    return Circuit.from_mask(model, mask, matrix, meta, graph).prune()
