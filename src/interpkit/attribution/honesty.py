"""Honesty checks: how far a gradient estimate can be trusted, measured on a sample.

Every gradient-based attribution (AtP, AtP*, IG, EAP, EAP-IG) is a linearisation of activation
patching, and it fails in known places: saturated attention, cancelling paths, large patches
(Kramár et al. 2024, "AtP*", section 3; Hanna et al. 2024, "Have Faith in Faithfulness").
So each Result carries ``extras["check"]``: exact patching of a seeded random sample of its
components (or edges), run in one batched sweep, and the Spearman and Pearson correlations of
the estimate with it on that sample. The sample costs about ``k / batch_rows`` extra forwards,
and the exact patches run on a seeded subset of ``CHECK_EXAMPLES`` (4) examples, compared with
the estimate's own per-example values on the same examples: about ``32 x 4`` rows of partial
forwards, so the check is on by default (``check=32``); ``check=0`` turns it off.

    >>> res = ik.attribute(model, task, method="atp", level="node")     # doctest: +SKIP
    >>> res.extras["check"]["spearman"], res.extras["check"]["n"]       # doctest: +SKIP
    (0.93, 32)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.runtime import Plan
    from interpkit.tasks import Task

DEFAULT_SAMPLE = 32
CHECK_EXAMPLES = 4  # examples the sampled exact patches run on (seeded subset of the task)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two same-shaped tensors (average ranks for ties)."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        import torch

        x = x.reshape(-1).double()
        order = torch.argsort(x)
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        values, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
        if bool((counts > 1).any()):  # average the ranks of ties
            sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, r)
            r = (sums / counts)[inverse]
        return r

    return pearson(ranks(a), ranks(b))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two same-shaped tensors (NaN when either is constant)."""
    a = a.reshape(-1).double()
    b = b.reshape(-1).double()
    a, b = a - a.mean(), b - b.mean()
    denominator = (a.norm() * b.norm()).item()
    return float((a @ b).item() / denominator) if denominator > 0 else float("nan")


def sample_indices(n_total: int, k: int, seed: int) -> list[int]:
    """``k`` distinct indices of ``range(n_total)`` (all of them when ``k >= n_total``), sorted, seeded."""
    import torch

    if k >= n_total:
        return list(range(n_total))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=g)[:k].tolist())


def summary(
    estimate: torch.Tensor, exact: torch.Tensor, labels: Sequence[str], seed: int, examples: Sequence[int] = ()
) -> dict[str, Any]:
    """The ``extras["check"]`` block: correlations of ``estimate`` with ``exact`` on the sample."""
    return {
        "spearman": spearman(estimate, exact),
        "pearson": pearson(estimate, exact),
        "n": len(labels),
        "labels": list(labels),
        "estimate": estimate.detach().cpu().float(),
        "exact": exact.detach().cpu().float(),
        "seed": seed,
        "examples": list(examples),
        "what": "exact patching of a seeded random sample (on the listed examples), correlated with the estimate",
    }


def subplan(plan: Plan, idx: Sequence[int]) -> Plan:
    """The entries ``idx`` of ``plan`` as a flat plan of their own."""

    def pick(values: list[int] | None) -> list[int] | None:
        return None if values is None else [values[i] for i in idx]

    return dataclasses.replace(
        plan,
        layer=[plan.layer[i] for i in idx],
        head=pick(plan.head),
        pos=pick(plan.pos),
        dest=pick(plan.dest),
        src=pick(plan.src),
        shape=(len(idx),),
    )


def exact_nodes(
    model: Model,
    task: Task,
    plan: Plan,
    idx: Sequence[int],
    direction: str,
    metric: str,
    clean_logprobs: torch.Tensor,
    examples: Sequence[int] | None = None,
) -> torch.Tensor:
    """Exact patching of the plan entries ``idx``: metric after patching, ``(len(idx), len(examples))``.

    The same batched rows as ``ik.patch`` (each row one (patch, example), starting from the
    target run's ``resid_pre`` of the patch's layer), restricted to the sample.
    """
    import torch

    from interpkit.runtime import capture, grid_rows, masked_patch_hook, metric_rows, patch_mask

    sub = subplan(plan, idx)
    examples = list(range(len(task))) if examples is None else list(examples)
    sel = torch.tensor(examples, device=task.clean.device)
    part = task.subset(sel.cpu()).to(model.device)  # only the checked examples
    layers = sorted(set(sub.layer))
    hook_names = {lay: model.resolve_hook(sub.hook(lay)) for lay in layers}
    resid_names = {lay: model.resolve_hook(f"blocks.{lay}.hook_resid_pre") for lay in layers}
    target, source = (part.corrupt, part.clean) if direction == "denoise" else (part.clean, part.corrupt)
    target_acts, _ = capture(model, target, list(resid_names.values()))
    source_acts, _ = capture(model, source, list(hook_names.values()))
    values = torch.full((len(sub), len(examples)), float("nan"), device=model.device)

    def segment(lay: int) -> Any:
        ids = [i for i, pl in enumerate(sub.layer) if pl == lay]
        src = source_acts[hook_names[lay]]

        def hooks(a: int, b: int, ex: torch.Tensor) -> list[tuple[str, Any]]:
            chunk = rows.items[a:b]
            patch = masked_patch_hook(
                lambda shape, device: patch_mask(sub, chunk, shape, device), src[ex.to(src.device)]
            )
            return [(hook_names[lay], patch)]

        rows = grid_rows(lay, ids, len(examples), target_acts[resid_names[lay]], hooks)
        return rows

    logprobs = clean_logprobs[sel.to(clean_logprobs.device)]
    metric_rows(model, part, [segment(lay) for lay in layers], values, metric=metric, clean_logprobs=logprobs)
    return values


def node_check(
    model: Model,
    task: Task,
    plan: Plan,
    estimate: torch.Tensor,
    direction: str,
    metric: str,
    clean_logprobs: torch.Tensor,
    k: int = DEFAULT_SAMPLE,
    seed: int = 0,
) -> dict[str, Any]:
    """Check a node estimate ``(len(plan), batch)`` (metric after patching) against exact patching."""
    idx = sample_indices(len(plan), k, seed)
    examples = sample_indices(len(task), CHECK_EXAMPLES, seed)
    exact = exact_nodes(model, task, plan, idx, direction, metric, clean_logprobs, examples).mean(-1)
    labels = plan.component_labels()
    return summary(estimate[idx][:, examples].mean(-1), exact, [labels[i] for i in idx], seed, examples)
