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

from interpkit.distributed import combine, join
from interpkit.metrics import get as get_metric
from interpkit.patching._engine import (
    Batcher,
    PatchingError,
    auto_rows,
    capture,
    capture_final,
    forward_final,
    masked_patch_hook,
    sweep,
)
from interpkit.patching._plan import make_plan, patch_mask
from interpkit.patching._sources import ablation_source, check_mode
from interpkit.patching._suffix_patch import suffix_applies, suffix_hooks, suffix_values
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


def baseline(
    model: Model, task: Task, metric: str, clean_hooks: Sequence[str] = (), corrupt_hooks: Sequence[str] = ()
) -> dict[str, Any]:
    """Clean and corrupt runs: metric values, the clean log-probs KL needs, and any activations asked for.

    One forward per run: ``clean_hooks`` / ``corrupt_hooks`` are captured on the way
    (``"clean_acts"``, ``"corrupt_acts"``: {resolved hook name: activation}). The runs go in
    batches sized from free memory (halved on out-of-memory) and keep only the answer position's
    logits, never the full ``(batch, pos, d_vocab)`` tensor.
    """
    fn = get_metric(metric)
    batcher = Batcher(auto_rows(model, task.n_pos))
    clean_acts, clean_final = capture_final(model, task.clean, clean_hooks, task.answer_pos, batcher)
    corrupt_acts, corrupt_final = capture_final(model, task.corrupt, corrupt_hooks, task.answer_pos, batcher)
    clean_lp = clean_final.float().log_softmax(-1)
    answer, wrong = task.answer.to(clean_final.device), task.wrong.to(clean_final.device)
    return {
        "clean": fn(clean_final, answer, wrong, clean_lp),
        "corrupt": fn(corrupt_final, answer, wrong, clean_lp),
        "clean_logprobs": clean_lp,
        "clean_acts": clean_acts,
        "corrupt_acts": corrupt_acts,
    }


def _str_tokens(model: Model, task: Task) -> list[str]:
    return model.to_str_tokens(task.clean[0]) if model.tokenizer is not None else [str(i) for i in range(task.n_pos)]


def _layer_rows(
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
    check: Any,
) -> tuple[int, Any]:
    """Row count and ``run(start, stop)`` for every (patch, example) row of the patches at ``layer``."""
    import torch

    n_examples = len(task)
    patch_ids = [i for i, pl in enumerate(plan.layer) if pl == layer]
    rows_patch = [p for p in patch_ids for _ in range(n_examples)]
    rows_example = [b for _ in patch_ids for b in range(n_examples)]

    def run(start: int, stop: int) -> torch.Tensor:
        ex = torch.tensor(rows_example[start:stop], device=model.device)
        # captured activations stay on their layer's device; the row indices go to them
        src = source if source.shape[0] == 1 else source[ex.to(source.device)]
        chunk = rows_patch[start:stop]
        hook = masked_patch_hook(lambda shape, device: patch_mask(plan, chunk, shape, device), src)
        final = forward_final(model, resid[ex.to(resid.device)], layer, task.answer_pos[ex], [(hook_name, hook)])
        vals = fn(final, task.answer[ex], task.wrong[ex], clean_logprobs[ex])
        check(vals, chunk, rows_example[start:stop])
        values[torch.tensor(chunk, device=model.device), ex] = vals.to(values.dtype)
        return vals

    return len(rows_patch), run


def _hook_sweep(
    model: Model,
    plan: Any,
    task: Task,
    needed_layers: list[int],
    hook_names: list[str],
    resid_names: list[str],
    source_acts: dict[str, torch.Tensor],
    target_acts: dict[str, torch.Tensor],
    fn: Any,
    base: dict[str, Any],
    values: torch.Tensor,
    check: Any,
    batch_size: int | None,
    group: Any,
) -> Batcher:
    """The hook engine: every (patch, example) a row of forwards that start at the patched layer."""
    import torch

    runs = [
        _layer_rows(
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
            check,
        )
        for lay, hook_name, resid_name in zip(needed_layers, hook_names, resid_names, strict=True)
    ]
    with torch.inference_mode():
        return sweep(
            [n for n, _ in runs],
            lambda seg, start, stop: runs[seg][1](start, stop),
            model=model,
            n_pos=task.n_pos,
            batch_size=batch_size,
            group=group,
        )


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
    distributed: bool | None = None,
) -> Result:
    """Patch every component of ``site`` (per layer, head and optionally position); one Result.

    ``site``: resid_pre, resid_mid, resid_post, attn_out, mlp_out, head_out, head_q, head_k,
    head_v, head_pattern. ``direction``: "denoise" (clean into corrupt) or "noise" (corrupt into
    clean). ``ablation`` (zero, mean, resample, counterfactual) replaces the activation in the
    clean run instead. Scores are the task metric (``Result.normalised()``: clean 1, corrupt 0).
    ``batch_size``: rows (patch x example) per forward; default from free memory, halved on
    out-of-memory. ``distributed``: under ``torchrun`` (``None`` detects it) each rank runs a
    share of the patched forwards and every rank returns the same Result as one process would.
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
    n_examples = len(task)
    use_clean_target = ablation is not None or direction == "noise"
    group = join(model, distributed, error=PatchingError)
    try:
        # prefix reuse: a per-position sweep recomputes only positions >= p of layers >= l
        use_suffix = suffix_applies(model, plan)
        target_hooks = [*hook_names, *(suffix_hooks(model) if use_suffix else resid_names)]
        clean_hooks, corrupt_hooks = (target_hooks, hook_names) if use_clean_target else (hook_names, target_hooks)
        base = baseline(model, task, metric, clean_hooks, corrupt_hooks)  # the two runs, captured on the way
        target_acts, other_acts = (
            (base["clean_acts"], base["corrupt_acts"])
            if use_clean_target
            else (base["corrupt_acts"], base["clean_acts"])
        )
        if ablation is None:
            source_acts = other_acts
        else:
            pattern = plan.kind == "pattern"
            source_acts = {
                h: ablation_source(ablation, target_acts[h], base["corrupt_acts"][h], task, seed, pattern=pattern)
                for h in hook_names
            }
        values = torch.full((len(plan), n_examples), 0.0 if group.active else float("nan"), device=model.device)
        labels = plan.component_labels()

        def check(vals: torch.Tensor, rows_patch: list[int], rows_example: list[int]) -> None:
            _check_nan(vals, labels, rows_patch, rows_example)

        if use_suffix:
            with torch.inference_mode():
                batcher = suffix_values(
                    model,
                    plan,
                    task,
                    target_acts,
                    {lay: source_acts[h] for lay, h in zip(needed_layers, hook_names, strict=True)},
                    fn,
                    metric,
                    base["clean_logprobs"],
                    values,
                    batch_size or auto_rows(model, task.n_pos),
                    check,
                    group,
                )
        else:
            batcher = _hook_sweep(
                model, plan, task, needed_layers, hook_names, resid_names, source_acts, target_acts, fn, base,
                values, check, batch_size, group,
            )  # fmt: skip
        values = combine(group, values)
    finally:
        group.close()
    batch_rows = batcher.initial
    per_example = values.reshape(*plan.shape, n_examples).cpu()
    meta = {
        "site": site,
        "kind": plan.kind,
        "per_position": per_position,
        "direction": direction if ablation is None else f"ablate ({ablation})",
        "ablation": ablation,
        "batch_rows": batch_rows,
        "engine": "suffix" if use_suffix else "hooks",
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
    batch_size: int | None = None,
    distributed: bool | None = None,
) -> torch.Tensor:
    """Per-example metric ``(batch,)`` of the clean run with every listed component ablated at once.

    Examples run in batches of ``batch_size`` (default from free memory, halved on
    out-of-memory); under ``torchrun`` the batches are shared between ranks (see ``ik.patch``).

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
    masks, sources = {}, {}
    for hook_name, members in by_hook.items():
        act = clean_acts[hook_name]  # on the device its hook fires on, like the mask built here
        mask = torch.zeros((1,) * act.ndim, dtype=torch.bool, device=act.device)
        for s in members:
            mask = mask | _component_mask(s, act.shape, model.cfg.group_size, act.device)
        masks[hook_name] = mask
        sources[hook_name] = ablation_source(
            ablation, act, corrupt_acts[hook_name], task, seed, pattern=members[0].kind == "pattern"
        )
    group = join(model, distributed, error=PatchingError)
    values = torch.zeros(len(task), device=model.device)

    def run(_: int, start: int, stop: int) -> None:
        patches = [
            (h, masked_patch_hook(lambda shape, device, m=masks[h]: m, src if src.shape[0] == 1 else src[start:stop]))
            for h, src in sources.items()
        ]
        final = forward_final(model, task.clean[start:stop], None, task.answer_pos[start:stop], patches)
        vals = fn(final, task.answer[start:stop], task.wrong[start:stop], base["clean_logprobs"][start:stop])
        values[start:stop] = vals.to(values.dtype)

    try:
        with torch.inference_mode():
            sweep(len(task), run, model=model, n_pos=task.n_pos, batch_size=batch_size, group=group)
            values = combine(group, values)
    finally:
        group.close()
    return values.cpu()
