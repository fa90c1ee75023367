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
from interpkit.errors import PatchingError
from interpkit.metrics import get as get_metric
from interpkit.results import Result, make_provenance
from interpkit.runtime import (
    PATCH_SITES,
    Rows,
    ablation_source,
    auto_rows,
    baseline,
    check_batch_size,
    check_mode,
    component_mask,
    default_ablation,
    grid_rows,
    latent_point,
    make_plan,
    masked_patch_hook,
    metric_rows,
    patch_mask,
    str_tokens,
    suffix_applies,
    suffix_hooks,
    suffix_values,
)
from interpkit.sites import Site, sweep_of, validate

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.runtime import Plan
    from interpkit.tasks import Task

_str_tokens = str_tokens  # the name other modules and tests used


def _check_nan(values: torch.Tensor, labels: list[str], rows_patch: list[int], rows_example: list[int]) -> None:
    import torch

    bad = torch.isnan(values).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise PatchingError(
            f"the metric is NaN for patch {labels[rows_patch[i]]} on example {rows_example[i]}; "
            "stopping (check the task's answers and the model's dtype)"
        )


def _layer_segment(plan: Plan, layer: int, hook_name: str, source: torch.Tensor, resid: torch.Tensor, n: int) -> Rows:
    """Every (patch, example) row of the patches at ``layer``: from ``resid`` (entering ``layer``), the patch a mask."""
    ids = [i for i, pl in enumerate(plan.layer) if pl == layer]

    def hooks(a: int, b: int, ex: torch.Tensor) -> list[tuple[str, Any]]:
        chunk = segment.items[a:b]
        src = source if source.shape[0] == 1 else source[ex.to(source.device)]  # on its layer's device
        return [(hook_name, masked_patch_hook(lambda shape, device: patch_mask(plan, chunk, shape, device), src))]

    segment = grid_rows(layer, ids, n, resid, hooks)
    return segment


def patch(
    model: Model,
    task: Task,
    site: str = "resid_pre",
    per_position: bool = False,
    direction: str = "denoise",
    ablation: str | None = None,
    *,
    batch_size: int | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    pattern_positions: bool = False,
    latents: Sequence[int] | None = None,
    metric: str | None = None,
    seed: int = 0,
    distributed: bool | None = None,
) -> Result:
    """Patch every component of ``site`` (per layer, head and optionally position); one Result.

    ``site``: resid_pre, resid_mid, resid_post, attn_out, mlp_out, head_out, head_q, head_k,
    head_v, head_pattern; or labels naming the kind and layers, as elsewhere (``"L3.resid_post"``,
    ``"L*.mlp"``, ``"L[0-5]H*"``: whole layers of heads); or, inside ``ik.dictionaries.spliced``,
    a dictionary's latents (``"L12.mlp.latents"``: one patch per latent, ``latents=`` picks them,
    dims ``(latent,)`` or ``(pos, latent)``). ``direction``: "denoise" (clean into corrupt) or "noise" (corrupt into
    clean). ``ablation`` (zero, mean, resample, counterfactual) replaces the activation in the
    clean run instead. Scores are the task metric (``Result.normalised()``: clean 1, corrupt 0).
    ``batch_size``: rows (patch x example) per forward; default from free memory, halved on
    out-of-memory. ``distributed``: under ``torchrun`` (``None`` detects it) each rank runs a
    share of the patched forwards and every rank returns the same Result as one process would.
    """
    import torch

    check_batch_size(batch_size)
    check_mode(direction, ablation)
    metric = metric or task.metric
    get_metric(metric)
    task = task.to(model.device)
    model.check_tokens(task.clean)
    if site not in PATCH_SITES and latent_point(model, site) is None:
        site, layers = sweep_of(model, site, layers)  # a label or wildcard (L3.resid_post, L*.mlp, L3H*)
    plan = make_plan(
        model, site, task.n_pos, per_position, layers, positions, pattern_positions, _str_tokens(model, task), latents
    )
    n_examples = len(task)
    group = join(model, distributed, error=PatchingError)
    try:
        # prefix reuse: a sweep recomputes only layers after the patched site (per position: positions >= p)
        use_suffix = suffix_applies(model, plan)
        base, target_acts, sources = _runs(model, task, plan, metric, direction, ablation, seed, use_suffix)
        values = torch.full((len(plan), n_examples), 0.0 if group.active else float("nan"), device=model.device)
        batcher = _sweep(model, task, plan, metric, base, target_acts, sources, values, batch_size, group, use_suffix)
        values = combine(group, values)
    finally:
        group.close()
    meta = {
        "site": site,
        "kind": plan.kind,
        "per_position": per_position,
        "direction": direction if ablation is None else f"ablate ({ablation})",
        "ablation": ablation,
        "batch_rows": batcher.initial,
        "engine": "suffix" if use_suffix else "hooks",
        **({"note": plan.note} if plan.note else {}),
    }
    per_example = values.reshape(*plan.shape, n_examples).cpu()
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


def _sweep(
    model: Model,
    task: Task,
    plan: Plan,
    metric: str,
    base: dict[str, Any],
    target_acts: dict[str, torch.Tensor],
    sources: dict[int, tuple[str, torch.Tensor]],
    values: torch.Tensor,
    batch_size: int | None,
    group: Any,
    use_suffix: bool,
) -> Any:
    """Fill ``values`` (patch, example) on the suffix engine or as rows of layer-start forwards; the Batcher used."""
    import torch

    labels = plan.component_labels()

    def check(vals: torch.Tensor, rows_patch: list[int], rows_example: list[int]) -> None:
        _check_nan(vals, labels, rows_patch, rows_example)

    if use_suffix:
        with torch.inference_mode():
            return suffix_values(
                model, plan, task, target_acts, {lay: src for lay, (_, src) in sources.items()}, get_metric(metric),
                metric, base["clean_logprobs"], values, batch_size or auto_rows(model, task.n_pos), check, group,
            )  # fmt: skip
    n = len(task)
    segments = [
        _layer_segment(plan, lay, h, src, target_acts[model.resolve_hook(f"blocks.{lay}.hook_resid_pre")], n)
        for lay, (h, src) in sources.items()
    ]
    return metric_rows(
        model, task, segments, values, metric=metric, clean_logprobs=base["clean_logprobs"], check=check,
        batch_size=batch_size, group=group,
    )  # fmt: skip


def _ablation_masks(
    model: Model,
    task: Task,
    by_hook: dict[str, list[Site]],
    clean_acts: dict[str, torch.Tensor],
    corrupt_acts: dict[str, torch.Tensor],
    ablation: str,
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per hook: which entries the listed components cover, and their ablated values."""
    import torch

    masks, sources = {}, {}
    for hook_name, members in by_hook.items():
        act = clean_acts[hook_name]  # on the device its hook fires on, like the mask built here
        mask = torch.zeros((1,) * act.ndim, dtype=torch.bool, device=act.device)
        for s in members:
            mask = mask | component_mask(s, act.shape, model.cfg.group_size, act.device)
        masks[hook_name] = mask
        sources[hook_name] = ablation_source(
            ablation, act, corrupt_acts[hook_name], task, seed, pattern=members[0].kind == "pattern"
        )
    return masks, sources


def _runs(
    model: Model,
    task: Task,
    plan: Plan,
    metric: str,
    direction: str,
    ablation: str | None,
    seed: int,
    use_suffix: bool,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[int, tuple[str, torch.Tensor]]]:
    """The two runs, with what the sweep needs captured on the way: the baseline, the target run's
    activations, and per layer the patched hook and its source values (the other run or an ablation)."""
    needed = sorted(set(plan.layer))
    hook_names = [model.resolve_hook(plan.hook(lay)) for lay in needed]
    resid_names = [model.resolve_hook(f"blocks.{lay}.hook_resid_pre") for lay in needed]
    use_clean_target = ablation is not None or direction == "noise"
    target_hooks = [*hook_names, *(suffix_hooks(model) if use_suffix else resid_names)]
    clean_hooks, corrupt_hooks = (target_hooks, hook_names) if use_clean_target else (hook_names, target_hooks)
    base = baseline(model, task, metric, clean_hooks, corrupt_hooks)
    target_acts, other_acts = (
        (base["clean_acts"], base["corrupt_acts"]) if use_clean_target else (base["corrupt_acts"], base["clean_acts"])
    )
    sources = {}
    for lay, h in zip(needed, hook_names, strict=True):
        if ablation is None:
            sources[lay] = (h, other_acts[h])
        else:
            src = ablation_source(ablation, target_acts[h], base["corrupt_acts"][h], task, seed, plan.kind == "pattern")
            sources[lay] = (h, src)
    return base, target_acts, sources


def ablate(
    model: Model,
    task: Task,
    components: str | Site | Sequence[str | Site],
    ablation: str | None = None,
    *,
    metric: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    distributed: bool | None = None,
) -> Result:
    """The clean run with every listed component ablated at once: a Result of the per-example metric ``(example,)``.

    ``components``: site labels (``["L1H0", "L3.mlp"]``), or one label alone (``"L1H0"``).

    Examples run in batches of ``batch_size`` (default from free memory, halved on
    out-of-memory); under ``torchrun`` the batches are shared between ranks (see ``ik.patch``).

    >>> ik.patching.ablate(model, task, ["L1H0", "L1H2"], ablation="zero").scores.mean()   # doctest: +SKIP
    """
    import torch

    if isinstance(components, (str, Site)):
        components = [components]  # one component: ablate(model, task, "L0H0")
    elif not isinstance(components, Sequence):
        raise PatchingError(f"components must be a site label or a list of them, got {components!r:.60}")
    ablation = default_ablation(ablation, "ablate", was="mean")
    check_mode("denoise", ablation)
    metric = metric or task.metric
    get_metric(metric)
    task = task.to(model.device)
    sites = [validate(c, model) for c in components]
    by_hook: dict[str, list[Site]] = {}
    for s in sites:
        by_hook.setdefault(model.resolve_hook(s.hook), []).append(s)
    # the ablated rows start at the first ablated layer, from the clean run's residual stream there
    layers = [s.layer for s in sites]
    first = min(layers) if layers and all(isinstance(lay, int) and lay >= 0 for lay in layers) else None
    start_name = None if first is None else model.resolve_hook(f"blocks.{first}.hook_resid_pre")
    clean_hooks = [*by_hook, *([start_name] if start_name else [])]
    corrupt_hooks = list(by_hook) if ablation in ("mean", "counterfactual") else []
    base = baseline(model, task, metric, clean_hooks, corrupt_hooks)
    clean_acts, corrupt_acts = base["clean_acts"], base["corrupt_acts"] or base["clean_acts"]
    masks, sources = _ablation_masks(model, task, by_hook, clean_acts, corrupt_acts, ablation, seed)

    def hooks(a: int, b: int, ex: torch.Tensor) -> list[tuple[str, Any]]:
        return [
            (h, masked_patch_hook(lambda shape, device, m=masks[h]: m, src if src.shape[0] == 1 else src[a:b]))
            for h, src in sources.items()
        ]

    start = task.clean if start_name is None else clean_acts[start_name]
    group = join(model, distributed, error=PatchingError)
    values = torch.zeros(1, len(task), device=model.device)
    try:
        rows = Rows(first, [0] * len(task), range(len(task)), start, hooks)
        metric_rows(model, task, [rows], values, metric=metric, clean_logprobs=base["clean_logprobs"],
                    batch_size=batch_size, group=group)  # fmt: skip
        values = combine(group, values)
    finally:
        group.close()
    return Result(
        scores=values[0].cpu(),
        dims=("example",),
        labels={"example": [str(i) for i in range(len(task))]},
        metric=metric,
        clean_value=float(base["clean"].mean()),
        corrupt_value=float(base["corrupt"].mean()),
        kind="ablate",
        meta={"components": [s.label for s in sites], "ablation": ablation},
        provenance=make_provenance(model, task, seed),
    )
