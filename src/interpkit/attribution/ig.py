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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.attribution.atp import AttributionError, finish, grad_rows, linear_estimate, no_gradient, setup
from interpkit.attribution.honesty import DEFAULT_SAMPLE
from interpkit.metrics import get as get_metric
from interpkit.runtime import forward_final, patch_mask, run_chunked

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
    run = setup(
        model, task, site, per_position, direction, layers, positions, metric, resid, check=check, latents=latents
    )
    fn = get_metric(run.metric)
    n = len(run.task)
    alphas = (torch.arange(steps, device=model.device, dtype=torch.float32) + 0.5) / steps
    grads: dict[str, torch.Tensor] = {}
    batch_rows = grad_rows(model, run.task.n_pos)
    example = torch.arange(n, device=model.device).repeat(steps)
    alpha = alphas.repeat_interleave(n)
    for lay, name in zip(run.layers, run.names, strict=True):
        ids = [i for i, pl in enumerate(run.plan.layer) if pl == lay]
        t = run.target_acts[name].clone()
        s = run.source_acts[name].clone()
        mask = patch_mask(run.plan, ids, torch.Size((len(ids), *t.shape[1:])), t.device).any(0, keepdim=True)
        start = run.target_acts[model.resolve_hook(f"blocks.{lay}.hook_resid_pre")].clone()
        total = torch.zeros_like(t, dtype=torch.float32)

        def chunk(lo: int, hi: int, t: Any = t, s: Any = s, mask: Any = mask, start: Any = start, lay: int = lay,
                  name: str = name, total: Any = total) -> torch.Tensor:  # fmt: skip
            ex, al = example[lo:hi], alpha[lo:hi]
            ex_t = ex.to(t.device)  # t, s, mask and total live on the layer's device
            a = al.view(-1, *[1] * (t.ndim - 1)).to(t.device, t.dtype)
            point = torch.where(mask, t[ex_t] + a * (s[ex_t] - t[ex_t]), t[ex_t]).detach().requires_grad_(True)
            with torch.enable_grad():
                patch = [(name, lambda act, hook: point.to(act.device))]
                final = forward_final(model, start[ex.to(start.device)], lay, run.task.answer_pos[ex], patch)
                values = fn(final, run.task.answer[ex], run.task.wrong[ex], run.base["clean_logprobs"][ex])
                if not values.requires_grad:
                    raise no_gradient(run.metric)
                (g,) = torch.autograd.grad(values.sum(), [point])
            total.index_add_(0, ex_t, g.float())
            return values.detach()

        run_chunked(steps * n, batch_rows, chunk)
        grads[name] = total / steps
    estimate = linear_estimate(model, run, grads) + _target(run)[None]
    return finish(model, run, estimate, "ig", check, seed, {"steps": steps, "rule": "midpoint"})


def _target(run: Any) -> torch.Tensor:
    return run.base["corrupt" if run.direction == "denoise" else "clean"].float()
