"""Attribution patching (AtP): a first-order estimate of every activation patch at once.

Nanda 2023 ("Attribution patching"); Syed, Rager and Conmy 2023. Patching component a from
value a_target to a_source changes the metric by approximately

    m(a_source) - m(a_target) ≈ (a_source - a_target) · ∂m/∂a |_(target run)

so two forwards (source and target, caching the activations) and one backward (gradients at every
site of the target run) estimate the whole sweep that ``ik.patch`` computes exactly. The estimate
is returned in the same units and layout as ``ik.patch`` (the metric after patching, target value
plus the linear change), so the two Results can be compared entry by entry. The approximation is
poor where attention saturates or the patch is large (Kramár et al. 2024); every result carries
its correlation with exact patching on a seeded sample of components (``extras["check"]``,
see ``honesty.py``).

The helpers here (``NodeRun``, ``setup``, ``linear_estimate``, ``finish``) are shared by the other
node methods (``atp_star.py``, ``ig.py``), so all of them read the same plan and return the same
Result layout.

    >>> atp = ik.attribution.atp(model, task, site="head_out")      # doctest: +SKIP
    >>> exact = ik.patch(model, task, site="head_out")              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.attribution._errors import AttributionError as AttributionError
from interpkit.attribution._errors import no_gradient as no_gradient
from interpkit.attribution.honesty import DEFAULT_SAMPLE, check_size, exact_on_suffix, node_check
from interpkit.attribution.honesty import spearman as spearman
from interpkit.metrics import get as get_metric
from interpkit.results import Result, make_provenance
from interpkit.runtime import Plan, baseline, check_mode, make_plan, patch_mask, str_tokens, suffix_hooks

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.tasks import Task


def grad_rows(model: Model, n_pos: int) -> int:
    """Rows per forward+backward: a quarter of the inference budget (autograd keeps every layer)."""
    from interpkit.runtime import grad_rows as rows

    return rows(model, n_pos)


def target_gradients(
    model: Model, task: Task, tokens: torch.Tensor, names: Sequence[str], metric: str, clean_logprobs: torch.Tensor
) -> tuple[dict, torch.Tensor]:
    """Gradient of the summed per-example metric w.r.t. each hook's activation on ``tokens``.

    Rows go in chunks sized from free memory (halved on out-of-memory); only the answer position is
    unembedded, and only the gradients asked for are computed (``torch.autograd.grad``: none of the
    weights' gradients a ``backward()`` would accumulate).
    """
    import torch

    from interpkit.runtime import Batcher, forward_final

    fn = get_metric(metric)
    canonical = [model.resolve_hook(n) for n in names]

    def run(a: int, b: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        kept: dict[str, torch.Tensor] = {}

        def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
            if not act.requires_grad:  # frozen weights: the first site becomes a leaf, the rest follow from it
                act = act.detach().requires_grad_(True)
            kept[hook.name] = act
            return act

        with torch.enable_grad():
            final = forward_final(model, tokens[a:b], None, task.answer_pos[a:b], [(n, keep) for n in canonical])
            values = fn(final, task.answer[a:b], task.wrong[a:b], clean_logprobs[a:b])
            if not values.requires_grad:
                raise no_gradient(metric)
            missing = [n for n in canonical if n not in kept or not kept[n].requires_grad]
            if missing:
                raise AttributionError(f"no gradient reached {missing[:3]}: the metric does not depend on them")
            found = torch.autograd.grad(values.sum(), [kept[n] for n in canonical], allow_unused=True)
        if any(g is None for g in found):
            raise AttributionError("no gradient reached some sites: the metric does not depend on them")
        return [g.detach() for g in found], values.detach()

    parts = Batcher(grad_rows(model, task.n_pos)).run(0, len(task), run)
    grads = {n: torch.cat([p[0][i] for p in parts]) for i, n in enumerate(canonical)}
    for name, canon in zip(names, canonical, strict=True):
        grads[name] = grads[canon]
    return grads, torch.cat([p[1] for p in parts])


@dataclasses.dataclass
class NodeRun:
    """What every node method needs: the plan, hook names per layer, both runs' activations."""

    task: Task
    plan: Plan
    layers: list[int]
    names: list[str]
    metric: str
    direction: str
    base: dict[str, Any]
    target: torch.Tensor
    source: torch.Tensor
    target_acts: dict[str, torch.Tensor]
    source_acts: dict[str, torch.Tensor]
    options: dict[str, Any]


def setup(
    model: Model,
    task: Task,
    site: str,
    per_position: bool,
    direction: str,
    layers: Sequence[int] | None,
    positions: Sequence[int] | None,
    metric: str | None,
    extra_hooks: Sequence[str] = (),
    check: Any = 0,
    latents: Sequence[int] | None = None,
    target_hooks: Sequence[str] = (),
) -> NodeRun:
    """Plan the sweep ``ik.patch`` would run and cache the site on both runs (``check`` is validated first);
    ``extra_hooks`` on both runs too (AtP*'s queries and keys), ``target_hooks`` on the target run only."""
    check_size(check)
    check_mode(direction, None)
    metric = metric or task.metric
    get_metric(metric)
    task = task.to(model.device)
    model.check_tokens(task.clean)
    plan = make_plan(model, site, task.n_pos, per_position, layers, positions, False, str_tokens(model, task), latents)
    needed = sorted(set(plan.layer))
    names = [model.resolve_hook(plan.hook(lay)) for lay in needed]
    hooks = [*names, *extra_hooks]
    denoise = direction == "denoise"
    # the check's exact patches start from the target run's residual streams: captured on the way too
    for_check = suffix_hooks(model) if check_size(check)[0] and exact_on_suffix(model, plan) else []
    on_target = [*hooks, *for_check, *target_hooks]
    clean_hooks, corrupt_hooks = (hooks, on_target) if denoise else (on_target, hooks)
    base = baseline(model, task, metric, clean_hooks, corrupt_hooks)  # the two runs, the site captured on the way
    target, source = (task.corrupt, task.clean) if denoise else (task.clean, task.corrupt)
    source_acts, target_acts = (
        (base["clean_acts"], base["corrupt_acts"]) if denoise else (base["corrupt_acts"], base["clean_acts"])
    )
    options = {"site": site, "per_position": per_position, "layers": layers, "positions": positions, "latents": latents}
    return NodeRun(
        task, plan, needed, names, metric, direction, base, target, source, target_acts, source_acts, options
    )


def linear_estimate(model: Model, run: NodeRun, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """``Σ (a_source - a_target) · grad`` over each plan entry's mask: ``(len(plan), batch)``."""
    import torch

    n = len(run.task)
    out = torch.empty(len(run.plan), n, device=model.device)
    with torch.no_grad():
        for lay, name in zip(run.layers, run.names, strict=True):
            ids = [i for i, pl in enumerate(run.plan.layer) if pl == lay]
            delta = (run.source_acts[name] - run.target_acts[name]).float()
            prod = (delta * grads[name].float()).reshape(n, -1)
            shape = run.target_acts[name].shape
            mask = patch_mask(run.plan, ids, torch.Size((len(ids), *shape[1:])), prod.device)  # the layer's device
            mask = mask.expand(len(ids), *shape[1:]).reshape(len(ids), -1).float()
            out[ids] = (mask @ prod.T).to(out.device)
    return out


def finish(
    model: Model,
    run: NodeRun,
    estimate: torch.Tensor,
    method: str,
    check: int | str,
    seed: int,
    meta: dict[str, Any] | None = None,
    extras: dict[str, Any] | None = None,
) -> Result:
    """The Result of a node estimate ``(len(plan), batch)`` in ``ik.patch`` units, with its check."""
    plan = run.plan
    per_example = estimate.reshape(*plan.shape, len(run.task)).cpu()
    result = Result(
        scores=per_example.mean(-1),
        dims=plan.dims,
        labels=plan.labels,
        metric=run.metric,
        clean_value=float(run.base["clean"].mean()),
        corrupt_value=float(run.base["corrupt"].mean()),
        kind=method.replace("*", "_star"),
        meta={
            "site": run.options["site"],
            "per_position": run.options["per_position"],
            "direction": run.direction,
            "method": method,
            "level": "node",
            **(meta or {}),
        },
        extras={"per_example": per_example, **(extras or {})},
        provenance=make_provenance(model, run.task, seed),
    )
    if check_size(check)[0]:
        target = run.base["corrupt"] if run.direction == "denoise" else run.base["clean"]
        result.extras["check"] = node_check(
            model, run.task, plan, estimate, run.direction, run.metric, run.base["clean_logprobs"], check, seed,
            target, run.source_acts, run.target_acts,
        )  # fmt: skip
    return result


def atp(
    model: Model,
    task: Task,
    site: str = "head_out",
    per_position: bool = False,
    direction: str = "denoise",
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    latents: Sequence[int] | None = None,
    metric: str | None = None,
    check: int | str = DEFAULT_SAMPLE,
    seed: int = 0,
) -> Result:
    """AtP estimate of ``ik.patch(model, task, site, per_position, direction)`` for every patch.

    ``check``: size of the seeded sample of components also patched exactly; the correlations
    land in ``extras["check"]`` (0 turns the check off).
    """
    run = setup(model, task, site, per_position, direction, layers, positions, metric, check=check, latents=latents)
    grads, target_values = target_gradients(
        model, run.task, run.target, run.names, run.metric, run.base["clean_logprobs"]
    )
    estimate = linear_estimate(model, run, grads) + target_values[None]
    return finish(model, run, estimate, "atp", check, seed)
