"""What every edge method shares: the graph, the two runs, each sender's change, and the Result.

An edge method is ``(model, task, *, direction, metric, check, seed, graph, ...) -> Result`` (one
file each: ``eap.py``, ``eap_ig.py``, ``eap_act.py``, ``edge_exact.py``) and lives in the table of
``edges.py``. :func:`setup_edges` runs the clean and corrupt runs once, capturing every sender's
output on the way; :func:`finish_edges` turns a ``(senders x receivers)`` matrix into a Result with
its honesty check (exact patching of a sample of edges, ``honesty.py``).

All scores are the metric change caused by patching the edge (target -> source), averaged over
examples. ``direction="noise"``: target clean, source corrupt; ``"denoise"``: the reverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.graph import build_graph, sender_hooks, sender_outputs
from interpkit.metrics import get as get_metric
from interpkit.results import Result, make_provenance
from interpkit.runtime import baseline, check_mode

if TYPE_CHECKING:
    import torch

    from interpkit.graph import Graph
    from interpkit.models import Model
    from interpkit.tasks import Task


@dataclasses.dataclass
class EdgeRun:
    """The two runs of an edge method: target (patched into) and source, with every sender's output change."""

    task: Task
    graph: Graph
    metric: str
    direction: str
    base: dict[str, Any]
    target: torch.Tensor  # the target run's tokens
    target_acts: dict[str, torch.Tensor]
    source_acts: dict[str, torch.Tensor]
    delta: torch.Tensor | None  # (batch, pos, n_senders, d_model): source minus target output of each sender
    pairs: list[tuple[int, int]]  # every edge as (sender, receiver), graph order
    n_check: int  # edges checked by exact patching (0: no check)
    examples: list[int]  # the examples the check runs on


def setup_edges(
    model: Model,
    task: Task,
    direction: str,
    metric: str | None,
    graph: Graph | None,
    *,
    check: int | str,
    seed: int,
    capture: bool = True,
    extra_hooks: Sequence[str] = (),
) -> EdgeRun:
    """Validate, run both prompts once (capturing the senders' outputs unless ``capture=False``), and plan the check."""
    import torch

    from interpkit.attribution.honesty import check_size, sample_indices

    check_mode(direction, None)
    n_check, n_examples = check_size(check)
    metric = metric or task.metric
    get_metric(metric)
    task = task.to(model.device)
    model.check_tokens(task.clean)
    graph = graph or build_graph(model)
    hooks = [*sender_hooks(graph), *extra_hooks] if capture else []
    noise = direction == "noise"
    # the check's exact edges start from the target run's layer inputs: captured on the way too
    starts = [f"blocks.{lay}.hook_resid_pre" for lay in range(model.cfg.n_layers)] if capture and n_check else []
    clean_hooks, corrupt_hooks = ([*hooks, *starts], hooks) if noise else (hooks, [*hooks, *starts])
    base = baseline(model, task, metric, clean_hooks, corrupt_hooks)  # the two runs, senders captured on the way
    target_acts, source_acts = (
        (base["clean_acts"], base["corrupt_acts"]) if noise else (base["corrupt_acts"], base["clean_acts"])
    )
    delta = None
    if capture:
        with torch.no_grad():
            delta = sender_outputs(model, graph, source_acts) - sender_outputs(model, graph, target_acts)
    pairs = [tuple(p) for p in graph.mask.nonzero().tolist()]
    return EdgeRun(
        task,
        graph,
        metric,
        direction,
        base,
        task.clean if noise else task.corrupt,
        target_acts,
        source_acts,
        delta,
        pairs,  # type: ignore[arg-type]
        n_check,
        sample_indices(len(task), n_examples, seed),
    )


def linear_scores(run: EdgeRun, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ Δ_u · ∂m/∂x_v`` for every edge, and per example on the check's examples.

    ``grads`` ``(batch, pos, n_receivers, d_model)`` carry the ``1/n`` of the mean metric. Returns
    the ``(senders x receivers)`` matrix and ``(len(run.examples), senders, receivers)``.
    """
    import torch

    delta = run.delta
    assert delta is not None
    with torch.no_grad():
        # one (senders x receivers) GEMM over batch, position and d_model, in the model's float
        # precision (float32 sums over ~1e5 products agree with float64 to ~1e-6 relative)
        dt = torch.promote_types(delta.dtype, torch.float32)
        matrix = torch.einsum("bpsd,bprd->sr", delta.to(dt), grads.to(dt)).float()
        ex = torch.tensor(run.examples, dtype=torch.long, device=delta.device)
        per = torch.einsum("bpsd,bprd->bsr", delta[ex].double(), grads[ex].double()) * len(run.task)
    return matrix, per.float()


def finish_edges(
    model: Model,
    run: EdgeRun,
    matrix: torch.Tensor,
    method: str,
    per_example: torch.Tensor | None,
    *,
    seed: int,
    meta: dict[str, Any] | None = None,
) -> Result:
    """The Result of an edge method's ``(senders x receivers)`` matrix, with its honesty check.

    ``per_example`` ``(len(run.examples), senders, receivers)``: the method's own estimates on the
    check's examples; a sample of edges (half the largest |score|) is patched exactly on the same
    examples and compared with them. The exact rows reuse each sender's change from the method's runs.
    """
    import torch

    from interpkit.attribution.edge_exact import exact_edges
    from interpkit.attribution.honesty import pick_sample, summary

    graph = run.graph
    labels = graph.edge_labels()
    extras: dict[str, Any] = {"matrix": matrix.cpu()}
    if run.n_check and per_example is not None:
        sample = pick_sample(matrix[graph.mask], run.n_check, seed)
        pairs = [run.pairs[i] for i in sample]
        ss = torch.tensor([s for s, _ in pairs], device=per_example.device)
        rs = torch.tensor([r for _, r in pairs], device=per_example.device)
        checked = per_example[:, ss, rs].T  # (edges, examples)
        ex = torch.tensor(run.examples, device=model.device)
        delta = None if run.delta is None else run.delta[ex]
        target = (run.target_acts, run.base["clean" if run.direction == "noise" else "corrupt"])
        exact = exact_edges(
            model, run.task, graph, pairs, run.direction, run.metric, run.base["clean_logprobs"], run.examples,
            delta=delta, target_run=target,
        )  # fmt: skip
        extras["check"] = summary(checked.mean(-1), exact.mean(-1), [labels[i] for i in sample], seed, run.examples)
    return Result(
        scores=matrix[graph.mask].cpu(),
        dims=("edge",),
        labels={"edge": labels},
        metric=run.metric,
        clean_value=float(run.base["clean"].mean()),
        corrupt_value=float(run.base["corrupt"].mean()),
        kind="edge_attribution",
        meta={
            "method": method,
            "variant": None,
            "direction": run.direction,
            "level": "edge",
            "ig_steps": None,
            "ig_rule": None,
            "n_senders": len(graph.senders),
            "n_receivers": len(graph.receivers),
            **({} if graph.is_default else {"graph": graph.kinds}),
            **(meta or {}),
        },
        extras=extras,
        provenance=make_provenance(model, run.task, seed),
    )
