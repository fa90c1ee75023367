"""Attribution patching (AtP): a first-order estimate of every activation patch at once.

Nanda 2023 ("Attribution patching"); Syed, Rager and Conmy 2023. Patching component a from
value a_target to a_source changes the metric by approximately

    m(a_source) - m(a_target) ≈ (a_source - a_target) · ∂m/∂a |_(target run)

so two forwards (source and target, caching the activations) and one backward (gradients at every
site of the target run) estimate the whole sweep that ``ik.patch`` computes exactly. The estimate
is returned in the same units and layout as ``ik.patch`` (the metric after patching, target value
plus the linear change), so the two Results can be compared entry by entry. The approximation is
poor where attention saturates or the patch is large (Kramár et al. 2024); every result carries
its rank correlation with exact patching on a sample of components (``extras["check"]``).

    >>> atp = ik.attribution.atp(model, task, site="head_out")      # doctest: +SKIP
    >>> exact = ik.patch(model, task, site="head_out")              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from interpkit.errors import InterpkitError
from interpkit.hooks import hooks
from interpkit.metrics import get as get_metric
from interpkit.patching._api import _str_tokens, baseline
from interpkit.patching._engine import capture
from interpkit.patching._plan import make_plan, patch_mask
from interpkit.patching._sources import check_mode
from interpkit.results import Result, make_provenance

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.tasks import Task


class AttributionError(InterpkitError):
    """Attribution cannot be computed as asked (e.g. the metric has no gradient path)."""


def target_gradients(
    model: Model, task: Task, tokens: torch.Tensor, names: Sequence[str], metric: str, clean_logprobs: torch.Tensor
) -> tuple[dict, torch.Tensor]:
    """Gradient of the summed per-example metric w.r.t. each hook's activation on ``tokens``."""
    import torch

    grads: dict[str, torch.Tensor] = {}

    def keep(grad: torch.Tensor, name: str) -> None:
        grads[name] = grad.detach().clone()

    fn = get_metric(metric)
    with torch.enable_grad(), hooks(model, grad=[(n, keep) for n in names]):
        logits = model.bridge(tokens)
        rows = torch.arange(len(task), device=logits.device)
        values = fn(logits[rows, task.answer_pos], task.answer, task.wrong, clean_logprobs)
        if not values.requires_grad:
            raise AttributionError(
                f"metric {metric!r} has no gradient path to the activations (e.g. accuracy); use logit_diff, logprob, prob or kl"
            )
        values.sum().backward()
    model.bridge.zero_grad(set_to_none=True)
    missing = [n for n in names if n not in grads]
    if missing:
        raise AttributionError(f"no gradient reached {missing[:3]}: the metric does not depend on them")
    return grads, values.detach()


def atp(
    model: Model,
    task: Task,
    site: str = "head_out",
    per_position: bool = False,
    direction: str = "denoise",
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    metric: str | None = None,
    check_sample: int = 0,
    seed: int = 0,
) -> Result:
    """AtP estimate of ``ik.patch(model, task, site, per_position, direction)`` for every patch.

    ``check_sample`` > 0 also runs exact patching on the whole sweep when it has at most that many
    patches, and stores the Spearman rank correlation in ``extras["check"]``.
    """
    import torch

    check_mode(direction, None)
    metric = metric or task.metric
    task = task.to(model.device)
    plan = make_plan(model, site, task.n_pos, per_position, layers, positions, False, _str_tokens(model, task))
    needed = sorted(set(plan.layer))
    names = [model.resolve_hook(plan.hook(lay)) for lay in needed]
    base = baseline(model, task, metric)
    target, source = (task.corrupt, task.clean) if direction == "denoise" else (task.clean, task.corrupt)
    source_acts, _ = capture(model, source, names)
    target_acts, _ = capture(model, target, names)
    grads, target_values = target_gradients(model, task, target, names, metric, base["clean_logprobs"])

    estimate = torch.empty(len(plan), len(task), device=model.device)
    with torch.no_grad():
        for lay, name in zip(needed, names, strict=True):
            ids = [i for i, pl in enumerate(plan.layer) if pl == lay]
            prod = ((source_acts[name] - target_acts[name]).float() * grads[name].float()).reshape(len(task), -1)
            shape = target_acts[name].shape
            mask = patch_mask(plan, ids, torch.Size((len(ids), *shape[1:])), model.device)
            mask = mask.expand(len(ids), *shape[1:]).reshape(len(ids), -1).float()
            estimate[ids] = mask @ prod.T + target_values[None]
    per_example = estimate.reshape(*plan.shape, len(task)).cpu()
    result = Result(
        scores=per_example.mean(-1),
        dims=plan.dims,
        labels=plan.labels,
        metric=metric,
        clean_value=float(base["clean"].mean()),
        corrupt_value=float(base["corrupt"].mean()),
        kind="atp",
        meta={"site": site, "per_position": per_position, "direction": direction, "method": "atp"},
        extras={"per_example": per_example},
        provenance=make_provenance(model, task, seed),
    )
    if check_sample and len(plan) <= check_sample:
        from interpkit.patching import patch

        exact = patch(model, task, site, per_position, direction, layers=layers, positions=positions, metric=metric)
        result.extras["check"] = {"spearman_vs_exact": spearman(result.scores, exact.scores), "n_components": len(plan)}
    return result


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two same-shaped tensors (average ranks for ties)."""
    import torch

    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1).double()
        order = torch.argsort(x)
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for value in torch.unique(x):  # average ties
            tied = x == value
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denominator) if denominator > 0 else float("nan")
