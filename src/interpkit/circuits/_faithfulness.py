"""How much of the model's behaviour a circuit explains: faithfulness, its curve, and stability.

Normalised faithfulness (Wang et al. 2022, §4; Hanna et al. 2024; the MIB benchmark, Mueller
et al. 2025) compares the task metric with only the circuit's edges live to the full model and
to the empty circuit (every edge ablated):

    f(C) = (m(C) - m(empty)) / (m(full) - m(empty))

so the full model scores 1 and the empty circuit 0. It is a ratio of means over the examples;
per-example values are kept too (their own ratios are noisy where an example's denominator is
small). The uncertainty is a bootstrap over examples (the ratio resampled ``n_boot`` times).
All circuits, the full model and the empty circuit are rows of the same batched forwards
(:mod:`interpkit.circuits._engine`), so ``f(full) == 1`` and ``f(empty) == 0`` exactly.

``faithfulness_curve`` evaluates the top-k edges of a ranking for many k at once. MIB reports
two areas over the fraction of edges kept: CPR, the area under f (higher is better: the
ranking finds what is *sufficient*), and CMD, the area under |1 - f| (lower is better: how far
the circuits are from reproducing the model). ``stability`` finds circuits on bootstrap
resamples of the task's examples and reports their Jaccard overlap with each other and with the
circuit found on all examples.

    >>> import interpkit as ik
    >>> from interpkit.circuits import discover_circuit, edge_removal_scores, faithfulness
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=8)
    >>> circ = discover_circuit(model, task, scores=edge_removal_scores(model, task), n_edges=20)
    >>> rep = faithfulness(model, task, circ, ablation="counterfactual")
    >>> rep.scores.shape, rep.kind
    (torch.Size([1]), 'faithfulness')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.circuits._circuit import Circuit, prune_mask
from interpkit.circuits._discover import graph_of, score_matrix, top_n_mask
from interpkit.circuits._engine import EdgeRunner, as_masks
from interpkit.circuits._errors import CircuitError
from interpkit.results import Result, make_provenance
from interpkit.runtime import default_ablation

if TYPE_CHECKING:
    import torch

    from interpkit.graph import Graph
    from interpkit.models import Model
    from interpkit.tasks import Task

MIB_FRACTIONS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def _normalised(values: torch.Tensor, full: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """Ratio of means over the last dim: ``(mean(values) - mean(empty)) / (mean(full) - mean(empty))``."""
    full_mean, empty_mean = full.mean(-1)[..., None], empty.mean(-1)[..., None]  # broadcast over circuits
    return (values.mean(-1) - empty_mean) / (full_mean - empty_mean)


def _bootstrap(values: torch.Tensor, full: torch.Tensor, empty: torch.Tensor, n_boot: int, seed: int) -> torch.Tensor:
    """``(n_boot, n_circuits)`` normalised faithfulness on resampled examples."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, values.shape[-1], (n_boot, values.shape[-1]), generator=gen)
    return _normalised(values[:, idx].transpose(0, 1), full[idx], empty[idx])


def _evaluate(
    model: Model, task: Task, masks: torch.Tensor, ablation: str, metric: str | None, seed: int, graph: Graph
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, EdgeRunner]:
    """Per-example metric of ``masks``, the full model and the empty circuit (one batch).

    Each distinct mask runs once: a curve's first and last sizes are often the empty and the full
    graph, and pruned top-k circuits of nearby sizes often coincide.
    """
    import torch

    runner = EdgeRunner(model, task, ablation, metric=metric, seed=seed, graph=graph)
    rows = torch.cat([graph.mask[None], torch.zeros_like(graph.mask)[None], masks.cpu()])
    distinct, inverse = torch.unique(rows.flatten(1), dim=0, return_inverse=True)
    values = runner(distinct.view(-1, *rows.shape[1:])).double().cpu()[inverse]
    if torch.isnan(values).any():
        raise CircuitError("the metric is NaN for some circuit; check the task's answers and the model's dtype")
    return values[2:], values[0], values[1], runner


def faithfulness(
    model: Model,
    task: Task,
    circuit: Circuit | Sequence[Circuit] | torch.Tensor,
    ablation: str | None = None,
    *,
    metric: str | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    graph: Graph | None = None,
) -> Result:
    """Normalised faithfulness of one or more circuits, scores ``(circuit,)``; see the module docstring.

    ``meta`` records m(full), m(empty), m(circuit), the edge counts and the ablation; ``extras``
    the per-example metric values and per-example faithfulness, the bootstrap standard error and
    95% interval.

    >>> rep = faithfulness(model, task, circ, ablation="mean")        # doctest: +SKIP
    >>> float(rep.scores[0]), rep.meta["ci95"][0]                     # doctest: +SKIP
    """
    import torch

    ablation = default_ablation(ablation, "faithfulness", was="mean")
    graph = graph_of(model, circuit if isinstance(circuit, Circuit) else next(iter(circuit), None), graph)
    masks = as_masks(model, circuit, graph)
    metric = metric or task.metric
    values, full, empty, runner = _evaluate(model, task, masks, ablation, metric, seed, graph)
    if float(full.mean() - empty.mean()) == 0.0:
        raise CircuitError(
            f"cannot normalise: the metric {metric!r} is the same ({float(full.mean()):.4g}) with every edge "
            f"and with none under {ablation!r} ablation"
        )
    scores = _normalised(values, full, empty)
    if n_boot >= 2:
        boot = _bootstrap(values, full, empty, n_boot, seed)
        lo, hi = torch.nanquantile(boot, 0.025, dim=0), torch.nanquantile(boot, 0.975, dim=0)
        stderr = boot.std(0)
    else:  # no bootstrap asked for
        lo = hi = stderr = torch.full_like(scores, float("nan"))
    per_example = (values - empty) / (full - empty)
    n_edges = [int(m.sum()) for m in masks]
    labels = [f"{n} edges" for n in n_edges]
    if len(set(labels)) < len(labels):
        labels = [f"circuit {i} ({n} edges)" for i, n in enumerate(n_edges)]
    return Result(
        scores=scores.float(),
        dims=("circuit",),
        labels={"circuit": labels},
        metric=metric,
        clean_value=float(runner.clean_values.mean()),
        corrupt_value=float(runner.corrupt_values.mean()),
        kind="faithfulness",
        meta={
            "ablation": ablation,
            "m_full": float(full.mean()),
            "m_empty": float(empty.mean()),
            "m_circuit": values.mean(-1).tolist(),
            "n_edges": n_edges,
            "n_edges_graph": runner.graph.n_edges,
            "stderr": stderr.tolist(),
            "ci95": [[float(a), float(b)] for a, b in zip(lo, hi, strict=True)],
            "n_boot": n_boot,
        },
        extras={
            "per_example_metric": values.float(),
            "full_per_example": full.float(),
            "empty_per_example": empty.float(),
            "per_example_faithfulness": per_example.float(),
        },
        provenance=make_provenance(model, task, seed),
    )


def faithfulness_curve(
    model: Model,
    task: Task,
    ranking: Result | Circuit,
    sizes: Sequence[int] | None = None,
    ablation: str | None = None,
    *,
    metric: str | None = None,
    prune: bool = True,
    seed: int = 0,
    graph: Graph | None = None,
) -> Result:
    """Faithfulness of the top-k edges (by |score|) for each k in ``sizes``, all as rows of batched forwards.

    ``ranking``: an edge attribution Result (``ik.attribute(..., level="edge")``) or a scored
    Circuit. ``sizes`` default to MIB's fractions of the graph's edges. ``prune``: prune each
    top-k circuit first (MIB does). ``meta["cpr"]`` and ``meta["cmd"]`` are the areas under f
    and under |1 - f| over the fraction of edges, by the trapezoid rule.

    >>> scores = ik.attribute(model, task, method="eap-ig", level="edge")   # doctest: +SKIP
    >>> curve = faithfulness_curve(model, task, scores)                    # doctest: +SKIP
    >>> curve.meta["cpr"], curve.meta["cmd"]                               # doctest: +SKIP
    """
    import torch

    ablation = default_ablation(ablation, "faithfulness_curve", was="mean")
    graph = graph_of(model, ranking, graph)
    matrix = score_matrix(model, ranking, graph)
    total = graph.n_edges
    if sizes is None:
        sizes = sorted({round(f * total) for f in MIB_FRACTIONS})
    sizes = [int(k) for k in sizes]
    bad = [k for k in sizes if not 0 <= k <= total]
    if bad or not sizes:
        raise CircuitError(f"circuit sizes must lie in 0..{total} (the graph's edges), got {bad or sizes}")
    masks = torch.stack([top_n_mask(graph, matrix, k) for k in sizes])
    if prune:
        masks = torch.stack([prune_mask(graph, m) for m in masks])
    metric = metric or task.metric
    values, full, empty, runner = _evaluate(model, task, masks, ablation, metric, seed, graph)
    if float(full.mean() - empty.mean()) == 0.0:
        raise CircuitError(f"cannot normalise: metric {metric!r} is the same with every edge and with none")
    scores = _normalised(values, full, empty)
    fractions = torch.tensor(sizes, dtype=torch.float64) / total
    order = torch.argsort(fractions)
    x, y = fractions[order], scores[order]
    cpr = float(torch.trapezoid(y, x)) if len(x) > 1 else float("nan")
    cmd = float(torch.trapezoid((1 - y).abs(), x)) if len(x) > 1 else float("nan")
    return Result(
        scores=scores.float(),
        dims=("size",),
        labels={"size": [str(k) for k in sizes]},
        metric=metric,
        clean_value=float(runner.clean_values.mean()),
        corrupt_value=float(runner.corrupt_values.mean()),
        kind="faithfulness_curve",
        meta={
            "ablation": ablation,
            "sizes": sizes,
            "fractions": fractions.tolist(),
            "n_edges_kept": [int(m.sum()) for m in masks],
            "n_edges_graph": total,
            "pruned": prune,
            "cpr": cpr,
            "cmd": cmd,
            "m_full": float(full.mean()),
            "m_empty": float(empty.mean()),
            "method": (getattr(ranking, "meta", None) or {}).get("method"),
        },
        extras={"per_example_metric": values.float()},
        provenance=make_provenance(model, task, seed),
    )


def stability(
    model: Model,
    task: Task,
    method: str = "eap-ig",
    *,
    n_boot: int = 10,
    select: str = "top_n",
    seed: int = 0,
    **kw: Any,
) -> Result:
    """Jaccard overlap of circuits discovered on ``n_boot`` bootstrap resamples of the examples.

    ``scores`` ``(resample,)``: each resample's circuit's Jaccard index with the circuit found on
    all examples; ``meta``: their mean and the mean pairwise Jaccard between resamples;
    ``extras``: the pairwise matrix and how often each edge was found. ``kw`` go to
    :func:`interpkit.circuits.discover_circuit` (``n_edges``, ``threshold``, ``tau``, ...).

    >>> res = stability(model, task, "eap", n_boot=5, n_edges=20)       # doctest: +SKIP
    >>> res.meta["mean_pairwise_jaccard"]                              # doctest: +SKIP
    """
    import torch

    from interpkit.circuits._discover import discover_circuit

    if n_boot < 1:
        raise CircuitError(f"stability needs n_boot >= 1 resamples, got {n_boot}")
    if kw.get("scores") is not None:
        raise CircuitError("stability recomputes the scores on each resample; do not pass scores=")
    reference = discover_circuit(model, task, method, select=select, seed=seed, **kw)
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(n_boot):
        idx = torch.randint(0, len(task), (len(task),), generator=gen)
        circ = discover_circuit(model, task.subset(idx.tolist()), method, select=select, seed=seed, **kw)
        sets.append(set(circ.edges))

    def jaccard(a: set[str], b: set[str]) -> float:
        return len(a & b) / len(a | b) if a | b else 1.0

    ref = set(reference.edges)
    to_ref = torch.tensor([jaccard(s, ref) for s in sets])
    pair = torch.tensor([[jaccard(a, b) for b in sets] for a in sets])
    off = pair[~torch.eye(n_boot, dtype=torch.bool)]
    freq: dict[str, float] = {}
    for s in sets:
        for e in s:
            freq[e] = freq.get(e, 0.0) + 1.0 / n_boot
    return Result(
        scores=to_ref.float(),
        dims=("resample",),
        labels={"resample": [f"boot {i}" for i in range(n_boot)]},
        metric=kw.get("metric") or task.metric,
        kind="circuit_stability",
        meta={
            "method": method,
            "select": select,
            "n_boot": n_boot,
            "mean_jaccard_to_full": float(to_ref.mean()),
            "mean_pairwise_jaccard": float(off.mean()) if off.numel() else 1.0,
            "n_edges_full": len(ref),
            "n_edges_resamples": [len(s) for s in sets],
            "options": {k: v for k, v in kw.items() if isinstance(v, (int, float, str, type(None)))},
        },
        extras={"pairwise_jaccard": pair, "edge_frequency": dict(sorted(freq.items(), key=lambda kv: -kv[1]))},
        provenance=make_provenance(model, task, seed),
    )
