"""``ik.patch``: activation patching sweeps; ``ik.patching.ablate``: a set of components at once.

Activation patching (Meng et al. 2022; Wang et al. 2022; Heimersheim and Nanda 2024, "How to
use and interpret activation patching"): run the model on one input and overwrite one
component's activation with its value from another input (or an ablation value), then read the
task metric. Denoising (clean into corrupt) finds components *sufficient* to restore behaviour;
noising (corrupt into clean) finds components *necessary* for it.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=8)
    >>> res = ik.patch(model, task, site="head_out")
    >>> res.dims
    ('layer', 'head')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.metrics import evaluate, final_logits
from interpkit.metrics import get as get_metric
from interpkit.patching._engine import PatchingError, auto_rows, capture, forward_final, masked_patch_hook, run_chunked
from interpkit.patching._plan import make_plan, patch_mask
from interpkit.patching._sources import ablation_source, check_mode
from interpkit.results import Result, make_provenance
from interpkit.sites import Site, validate

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.tasks import Task


def _check_nan(values: torch.Tensor, labels: list[str], rows_patch: list[int], rows_example: list[int]) -> None:
    import torch

    bad = torch.isnan(values).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise PatchingError(
            f"the metric is NaN for patch {labels[rows_patch[i]]} on example {rows_example[i]}; "
            "stopping (check the task's answers and the model's dtype)"
        )


def baseline(model: Model, task: Task, metric: str) -> dict[str, Any]:
    """Clean and corrupt runs: metric values and the clean log-probs KL needs."""
    import torch

    with torch.inference_mode():
        clean_logits = model(task.clean)
        corrupt_logits = model(task.corrupt)
    clean_final = final_logits(clean_logits, task.answer_pos)
    clean_lp = clean_final.float().log_softmax(-1)
    return {
        "clean": evaluate(clean_logits, task, metric, clean_logits),
        "corrupt": evaluate(corrupt_logits, task, metric, clean_logits),
        "clean_logprobs": clean_lp,
    }


def _str_tokens(model: Model, task: Task) -> list[str]:
    return model.to_str_tokens(task.clean[0]) if model.tokenizer is not None else [str(i) for i in range(task.n_pos)]


def _sweep_layer(
    model: Model,
    plan: Any,
    task: Task,
    layer: int,
    hook_name: str,
    source: torch.Tensor,
    resid: torch.Tensor,
    fn: Any,
    clean_logprobs: torch.Tensor,
    values: torch.Tensor,
    batch_rows: int,
    labels: list[str],
) -> None:
    """Run every (patch, example) row of the patches at ``layer``, writing into ``values``."""
    import torch

    n_examples = len(task)
    patch_ids = [i for i, pl in enumerate(plan.layer) if pl == layer]
    rows_patch = [p for p in patch_ids for _ in range(n_examples)]
    rows_example = [b for _ in patch_ids for b in range(n_examples)]

    def run(start: int, stop: int) -> torch.Tensor:
        ex = torch.tensor(rows_example[start:stop], device=model.device)
        src = source if source.shape[0] == 1 else source[ex]
        chunk = rows_patch[start:stop]
        hook = masked_patch_hook(lambda shape: patch_mask(plan, chunk, shape, model.device), src)
        final = forward_final(model, resid[ex], layer, task.answer_pos[ex], [(hook_name, hook)])
        vals = fn(final, task.answer[ex], task.wrong[ex], clean_logprobs[ex])
        _check_nan(vals, labels, chunk, rows_example[start:stop])
        values[torch.tensor(chunk, device=model.device), ex] = vals.to(values.dtype)
        return vals

    run_chunked(len(rows_patch), batch_rows, run)


def patch(
    model: Model,
    task: Task,
    site: str = "resid_pre",
    per_position: bool = False,
    direction: str = "denoise",
    ablation: str | None = None,
    batch_size: int | None = None,
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    pattern_positions: bool = False,
    metric: str | None = None,
    seed: int = 0,
) -> Result:
    """Patch every component of ``site`` (per layer, head and optionally position); one Result.

    ``site``: resid_pre, resid_mid, resid_post, attn_out, mlp_out, head_out, head_q, head_k,
    head_v, head_pattern. ``direction``: "denoise" (clean into corrupt) or "noise" (corrupt into
    clean). ``ablation`` (zero, mean, resample, counterfactual) replaces the activation in the
    clean run instead. Scores are the task metric (``Result.normalised()``: clean 1, corrupt 0).
    """
    import torch

    check_mode(direction, ablation)
    metric = metric or task.metric
    fn = get_metric(metric)
    task = task.to(model.device)
    model.check_tokens(task.clean)
    plan = make_plan(
        model, site, task.n_pos, per_position, layers, positions, pattern_positions, _str_tokens(model, task)
    )
    needed_layers = sorted(set(plan.layer))
    hook_names = [model.resolve_hook(plan.hook(lay)) for lay in needed_layers]
    resid_names = [model.resolve_hook(f"blocks.{lay}.hook_resid_pre") for lay in needed_layers]
    base = baseline(model, task, metric)

    use_clean_target = ablation is not None or direction == "noise"
    target_tokens = task.clean if use_clean_target else task.corrupt
    target_acts, _ = capture(model, target_tokens, [*hook_names, *resid_names])
    if ablation is None:
        source_acts, _ = capture(model, task.corrupt if direction == "noise" else task.clean, hook_names)
    else:
        other, _ = capture(model, task.corrupt, hook_names)
        source_acts = {
            h: ablation_source(ablation, target_acts[h], other[h], task, seed, pattern=plan.kind == "pattern")
            for h in hook_names
        }

    n_examples = len(task)
    values = torch.full((len(plan), n_examples), float("nan"), device=model.device)
    batch_rows = batch_size or auto_rows(model, task.n_pos)
    labels = plan.component_labels()
    with torch.inference_mode():
        for lay, hook_name, resid_name in zip(needed_layers, hook_names, resid_names, strict=True):
            _sweep_layer(
                model,
                plan,
                task,
                lay,
                hook_name,
                source_acts[hook_name],
                target_acts[resid_name],
                fn,
                base["clean_logprobs"],
                values,
                batch_rows,
                labels,
            )

    per_example = values.reshape(*plan.shape, n_examples).cpu()
    meta = {
        "site": site,
        "kind": plan.kind,
        "per_position": per_position,
        "direction": direction if ablation is None else f"ablate ({ablation})",
        "ablation": ablation,
        "batch_rows": batch_rows,
    }
    if plan.note:
        meta["note"] = plan.note
    return Result(
        scores=per_example.mean(-1),
        dims=plan.dims,
        labels=plan.labels,
        metric=metric,
        clean_value=float(base["clean"].mean()),
        corrupt_value=float(base["corrupt"].mean()),
        kind="patch",
        meta=meta,
        extras={"per_example": per_example, "tokens": _str_tokens(model, task)},
        provenance=make_provenance(model, task, seed),
    )


def _component_mask(site: Site, shape: torch.Size, group_size: int, device: Any) -> torch.Tensor:
    import torch

    axis = site.head_axis()
    if axis is None:
        return torch.ones((1,) * len(shape), dtype=torch.bool, device=device)
    mask_shape = [1] * len(shape)
    mask_shape[axis] = shape[axis]
    mask = torch.zeros(mask_shape, dtype=torch.bool, device=device)
    index = [slice(None)] * len(shape)
    index[axis] = site.hook_index(group_size)
    mask[tuple(index)] = True
    return mask


def ablate(
    model: Model,
    task: Task,
    components: Sequence[str | Site],
    ablation: str = "mean",
    *,
    metric: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Per-example metric ``(batch,)`` of the clean run with every listed component ablated at once.

    >>> ik.patching.ablate(model, task, ["L1H0", "L1H2"], ablation="zero").mean()   # doctest: +SKIP
    """
    import torch

    check_mode("denoise", ablation)
    metric = metric or task.metric
    fn = get_metric(metric)
    task = task.to(model.device)
    sites = [validate(c, model) for c in components]
    by_hook: dict[str, list[Site]] = {}
    for s in sites:
        by_hook.setdefault(model.resolve_hook(s.hook), []).append(s)
    base = baseline(model, task, metric)
    clean_acts, _ = capture(model, task.clean, list(by_hook))
    corrupt_acts, _ = (
        capture(model, task.corrupt, list(by_hook)) if ablation in ("mean", "counterfactual") else (clean_acts, None)
    )
    patches = []
    for hook_name, group in by_hook.items():
        act = clean_acts[hook_name]
        mask = torch.zeros((1,) * act.ndim, dtype=torch.bool, device=model.device)
        for s in group:
            mask = mask | _component_mask(s, act.shape, model.cfg.group_size, model.device)
        src = ablation_source(ablation, act, corrupt_acts[hook_name], task, seed, pattern=group[0].kind == "pattern")
        patches.append((hook_name, masked_patch_hook(lambda shape, m=mask: m, src)))
    with torch.inference_mode():
        final = forward_final(model, task.clean, None, task.answer_pos, patches)
        return fn(final, task.answer, task.wrong, base["clean_logprobs"]).cpu()
