"""Integrated gradients over activations: AtP with the gradient averaged along the patch.

Sundararajan, Taly and Yan 2017 ("Axiomatic Attribution for Deep Networks") applied to
activation patching as in Marks et al. 2024 ("Sparse Feature Circuits", section 2) and Hanna
et al. 2024 (EAP-IG). For the activations ``a`` of one layer's site, the straight path from the
target run to the source run is ``a(α) = a_t + α (a_s - a_t)``; each component's attribution is

    (a_s - a_t) · (1/m) Σ_k ∂m/∂a |_(a(α_k)),   α_k = (k - 1/2) / m   (midpoint rule)

with the rest of the network recomputed from the layer on (the run starts from the target
run's ``resid_pre`` of that layer). The midpoint rule's error falls as 1/m²; with m = 1 it is
the gradient at the halfway activation (not AtP's gradient at the target end). All components
of the site in one layer move together (the per-layer path of Marks et al.), so their
attributions sum to the effect of patching the whole layer's site as m grows; for a site with
one component per layer (``resid_pre``, ``mlp_out``, ``attn_out``) each attribution tends to
the exact patch. The ``m`` steps of every layer are rows of batched forward/backward passes:
``layers x m x batch`` rows in chunks sized from free memory. Units and layout are those of
``ik.patch`` (the metric after patching).

    >>> res = ik.attribution.ig(model, task, site="mlp_out", ig_steps=8)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.attribution.atp import AttributionError, finish, grad_rows, linear_estimate, no_gradient, setup
from interpkit.attribution.honesty import DEFAULT_SAMPLE
from interpkit.metrics import get as get_metric
from interpkit.runtime import SuffixRunner, forward_final, patch_mask, run_chunked, suffix_hooks

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.results import Result
    from interpkit.tasks import Task


def ig(
    model: Model,
    task: Task,
    site: str = "head_out",
    per_position: bool = False,
    direction: str = "denoise",
    *,
    ig_steps: int = 5,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    latents: Sequence[int] | None = None,
    metric: str | None = None,
    check: int | str = DEFAULT_SAMPLE,
    seed: int = 0,
) -> Result:
    """Integrated-gradients estimate of ``ik.patch(model, task, site, per_position, direction)``.

    ``ig_steps``: points on the path (midpoint rule; the same name as EAP-IG's). ``check``: exact-patching sample size (0: off).
    """
    import torch

    if ig_steps < 1:
        raise AttributionError(f"ig_steps must be >= 1, got {ig_steps}")
    steps = ig_steps
    c = model.cfg
    resid = [f"blocks.{lay}.hook_resid_pre" for lay in (range(c.n_layers) if layers is None else layers)]
    resid = [r for r in resid if r in model.bridge.hook_dict]
    # the rows start from the target run alone: its layer inputs (and, for the suffix forward, its
    # base run's every layer input) are captured on the way
    starts = suffix_hooks(model) if SuffixRunner.check(model) else []
    run = setup(
        model, task, site, per_position, direction, layers, positions, metric, check=check, latents=latents,
        target_hooks=[*resid, *starts],
    )  # fmt: skip
    suffix = _suffix(model, run)
    grads: dict[str, torch.Tensor] = {}
    for lay, name in zip(run.layers, run.names, strict=True):
        ids = [i for i, pl in enumerate(run.plan.layer) if pl == lay]
        t, s = run.target_acts[name], run.source_acts[name]
        mask = patch_mask(run.plan, ids, torch.Size((len(ids), *t.shape[1:])), t.device).any(0, keepdim=True)
        path = _Path(t, s, mask, steps, len(run.task))
        grads[name] = (
            _hook_grads(model, run, lay, name, path) if suffix is None else _suffix_grads(run, lay, path, *suffix)
        )
    estimate = linear_estimate(model, run, grads) + _target(run)[None]
    meta = {"steps": steps, "rule": "midpoint", "engine": "hooks" if suffix is None else "suffix"}
    return finish(model, run, estimate, "ig", check, seed, meta)


@dataclasses.dataclass
class _Path:
    """One layer's straight path: target ``t``, source ``s``, the ``mask`` of what moves, and the
    ``steps x n`` rows (example, alpha) that walk it, midpoint rule."""

    t: torch.Tensor
    s: torch.Tensor
    mask: torch.Tensor
    steps: int
    n: int

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        alphas = (torch.arange(self.steps, dtype=torch.float32) + 0.5) / self.steps
        return torch.arange(self.n).repeat(self.steps), alphas.repeat_interleave(self.n)

    def point(self, ex: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The activations at ``alpha`` along the path for examples ``ex`` (detached: the caller's leaf)."""
        import torch

        t, s = self.t[ex.to(self.t.device)], self.s[ex.to(self.s.device)]
        a = alpha.view(-1, *[1] * (t.ndim - 1)).to(t.device, t.dtype)
        return torch.where(self.mask, t + a * (s - t), t).detach()


def _suffix(model: Model, run: Any) -> tuple[Any, Any] | None:
    """The suffix forward and the target's base run, where it implements the site and the model; else None."""
    from interpkit.runtime import suffix_applies

    if not suffix_applies(model, run.plan):
        return None
    runner = SuffixRunner(model)
    return runner, runner.capture(None, run.task.answer_pos, run.target_acts)  # captured by setup (ig's starts)


def _suffix_grads(run: Any, lay: int, path: _Path, runner: Any, base: Any) -> torch.Tensor:
    """Mean gradient along ``path`` at layer ``lay``'s site, the rows run on the suffix forward
    from just after the site (positions after the last answer position are not computed)."""
    import torch

    from interpkit.runtime import answer_columns, entering, first_block, metric_of, suffix_site

    model = runner.model
    fn, task, site = get_metric(run.metric), run.task, suffix_site(run.plan.kind)
    columns = answer_columns(run.metric, task.answer, task.wrong)
    width = base.n_pos
    total = torch.zeros_like(path.t, dtype=torch.float32)
    example, alpha = path.rows()

    def chunk(lo: int, hi: int) -> torch.Tensor:
        ex = example[lo:hi].to(model.device)
        point = path.point(ex, alpha[lo:hi])[:, :width].requires_grad_(True)
        with torch.enable_grad():
            x = entering(runner, site, lay, point, base.resid_pre[lay][ex], base.resid_mid[lay][ex])
            cols = None if columns is None else columns[ex]
            logits = runner.run(base, first_block(site, lay), "pre", x, 0, ex, cols, grad=True)
            values = metric_of(fn, logits, cols is not None, task.answer[ex], task.wrong[ex],
                               run.base["clean_logprobs"][ex])  # fmt: skip
            if not values.requires_grad:
                raise no_gradient(run.metric)
            (g,) = torch.autograd.grad(values.sum(), [point])
        total[:, :width].index_add_(0, ex.to(total.device), g.float())
        return values.detach()

    run_chunked(len(example), grad_rows(model, width), chunk)
    return total / path.steps


def _hook_grads(model: Model, run: Any, lay: int, name: str, path: _Path) -> torch.Tensor:
    """Mean gradient along ``path`` at ``name``, the rows run through the hooked model from ``lay``'s ``resid_pre``."""
    import torch

    fn, task = get_metric(run.metric), run.task
    start = run.target_acts[model.resolve_hook(f"blocks.{lay}.hook_resid_pre")]
    total = torch.zeros_like(path.t, dtype=torch.float32)
    example, alpha = path.rows()

    def chunk(lo: int, hi: int) -> torch.Tensor:
        ex = example[lo:hi].to(model.device)
        point = path.point(ex, alpha[lo:hi]).requires_grad_(True)
        with torch.enable_grad():
            patch = [(name, lambda act, hook: point.to(act.device))]
            final = forward_final(model, start[ex.to(start.device)], lay, task.answer_pos[ex], patch)
            values = fn(final, task.answer[ex], task.wrong[ex], run.base["clean_logprobs"][ex])
            if not values.requires_grad:
                raise no_gradient(run.metric)
            (g,) = torch.autograd.grad(values.sum(), [point])
        total.index_add_(0, ex.to(total.device), g.float())  # total lives on the layer's device
        return values.detach()

    run_chunked(len(example), grad_rows(model, task.n_pos), chunk)
    return total / path.steps


def _target(run: Any) -> torch.Tensor:
    return run.base["corrupt" if run.direction == "denoise" else "clean"].float()
