"""Honesty checks: how far a gradient estimate can be trusted, measured on a sample.

Every gradient-based attribution (AtP, AtP*, IG, EAP, EAP-IG) is a linearisation of activation
patching, and it fails in known places: saturated attention, cancelling paths, large patches
(Kramár et al. 2024, "AtP*", section 3; Hanna et al. 2024, "Have Faith in Faithfulness").
So each Result carries ``extras["check"]``: exact patching of a sample of its components (or
edges), run in one batched sweep, and the Spearman and Pearson correlations of the estimate
with it on that sample. The sample is half the components with the largest estimated effect
and half a seeded random draw from the rest (a uniform sample of a large graph is almost all
near-zero edges, whose ranks are noise), and the exact patches run on a seeded subset of
``CHECK_EXAMPLES`` (2) examples, compared with the estimate's own per-example values on the same
examples. The check reuses what the method already ran (both runs' activations, each sender's
change) and starts every row after its patch: a whole-sequence node patch runs on the suffix
forward (from the block after the patched site, every sampled layer's rows batched into one
staggered run, two answer logits per row), anything else from the patched layer on the hooked
model. By default (``check=20``: 40 rows of partial forwards) it costs 0.3 (AtP) to 0.7 (EAP) of
one forward+backward of an 8-prompt task (``benchmarks/bench_peers.py --jobs honesty``); ``check=0``
turns it off, ``check="thorough"`` patches 128 components on 8 examples, and ``check=k`` any k.

    >>> res = ik.attribute(model, task, method="atp", level="node")     # doctest: +SKIP
    >>> res.extras["check"]["spearman"], res.extras["check"]["n"]       # doctest: +SKIP
    (0.93, 20)
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

DEFAULT_SAMPLE = 20
CHECK_EXAMPLES = 2  # examples the sampled exact patches run on (seeded subset of the task)
THOROUGH = (128, 8)  # check="thorough": components and examples


def check_size(check: Any) -> tuple[int, int]:
    """``(components, examples)`` of a ``check`` option: an int (0: off) or ``"thorough"``.

    >>> check_size(20), check_size("thorough"), check_size(0)
    ((20, 2), (128, 8), (0, 2))
    """
    from interpkit.attribution._errors import AttributionError

    if check == "thorough":
        return THOROUGH
    if isinstance(check, bool) or not isinstance(check, int) or check < 0:
        raise AttributionError(f"check must be a number of components >= 0 (0: off) or 'thorough', got {check!r}")
    return check, CHECK_EXAMPLES


def pick_sample(effect: torch.Tensor, k: int, seed: int) -> list[int]:
    """``k`` indices of ``effect`` (sorted): the ``ceil(k/2)`` largest ``|effect|`` and a seeded random draw from the rest.

    >>> import torch
    >>> {1, 3} <= set(pick_sample(torch.tensor([0.0, 5.0, 0.1, -9.0, 0.2]), 3, seed=0))   # -9 and 5, and one more
    True
    """
    import torch

    n = effect.numel()
    if k >= n:
        return list(range(n))
    order = torch.argsort(effect.detach().abs().flatten().cpu(), descending=True, stable=True)
    top = order[: (k + 1) // 2].tolist()
    rest = order[(k + 1) // 2 :]
    g = torch.Generator().manual_seed(seed)
    drawn = rest[torch.randperm(len(rest), generator=g)[: k - len(top)]].tolist()
    return sorted(top + drawn)


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
        "what": "exact patching of a sample (half the largest estimates, half a seeded random draw) on the listed "
        "examples, correlated with the estimate",
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
        latent=pick(plan.latent),
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
    source_acts: dict[str, torch.Tensor] | None = None,
    target_acts: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Exact patching of the plan entries ``idx``: metric after patching, ``(len(idx), len(examples))``.

    The same batched rows as ``ik.patch`` (each row one (patch, example), starting after the
    patched site on the suffix forward where :func:`exact_on_suffix`, else from the target run's
    ``resid_pre`` of the patch's layer), restricted to the sample. ``source_acts``/``target_acts``:
    the source/target run's activations for every example, when the caller has them (the
    target's are used when they hold every hook the rows start from).
    """
    import torch

    from interpkit.metrics import get as get_metric
    from interpkit.runtime import auto_rows, capture, metric_rows, suffix_hooks, suffix_values

    sub = subplan(plan, idx)
    examples = list(range(len(task))) if examples is None else list(examples)
    sel = torch.tensor(examples, device=task.clean.device)
    part = task.subset(sel.cpu()).to(model.device)  # only the checked examples
    layers = sorted(set(sub.layer))
    hook_names = {lay: model.resolve_hook(sub.hook(lay)) for lay in layers}
    resid_names = {lay: model.resolve_hook(f"blocks.{lay}.hook_resid_pre") for lay in layers}
    use_suffix = exact_on_suffix(model, sub)
    target, source = (part.corrupt, part.clean) if direction == "denoise" else (part.clean, part.corrupt)
    w = part.n_pos

    def rows_of(acts: dict[str, torch.Tensor], names: Sequence[str], pattern: bool = False) -> dict[str, torch.Tensor]:
        """The checked examples' activations at ``names``, at the subset's (trimmed) width."""
        trim = (slice(None), slice(None), slice(0, w), slice(0, w)) if pattern else (slice(None), slice(0, w))
        return {h: acts[h][sel.to(acts[h].device)][trim] for h in names}

    starts = suffix_hooks(model) if use_suffix else list(resid_names.values())
    if target_acts is not None and set(starts) <= set(target_acts):
        target_acts = rows_of(target_acts, starts)
    else:
        target_acts, _ = capture(model, target, starts)
    if source_acts is None:
        source_acts, _ = capture(model, source, list(hook_names.values()))
    else:  # the method's own source run
        source_acts = rows_of(source_acts, list(hook_names.values()), sub.kind == "pattern")
    values = torch.full((len(sub), len(examples)), float("nan"), device=model.device)
    logprobs = clean_logprobs[sel.to(clean_logprobs.device)]
    if use_suffix:
        with torch.inference_mode():
            suffix_values(
                model, sub, part, target_acts, {lay: source_acts[hook_names[lay]] for lay in layers},
                get_metric(metric), metric, logprobs, values, auto_rows(model, part.n_pos), lambda *_: None,
            )  # fmt: skip
        return values

    segments = _hook_rows(model, sub, len(examples), hook_names, source_acts, target_acts)
    metric_rows(model, part, segments, values, metric=metric, clean_logprobs=logprobs)
    return values


def _hook_rows(
    model: Model,
    sub: Plan,
    n_examples: int,
    hook_names: dict[int, str],
    source_acts: dict[str, torch.Tensor],
    target_acts: dict[str, torch.Tensor],
) -> list[Any]:
    """The hook engine's rows of ``sub``: per layer, each (patch, example) from that layer's ``resid_pre``."""
    from interpkit.runtime import grid_rows, masked_patch_hook, patch_mask

    def segment(lay: int) -> Any:
        ids = [i for i, pl in enumerate(sub.layer) if pl == lay]
        src = source_acts[hook_names[lay]]

        def hooks(a: int, b: int, ex: torch.Tensor) -> list[tuple[str, Any]]:
            chunk = rows.items[a:b]
            patch = masked_patch_hook(
                lambda shape, device: patch_mask(sub, chunk, shape, device), src[ex.to(src.device)]
            )
            return [(hook_names[lay], patch)]

        rows = grid_rows(lay, ids, n_examples, target_acts[model.resolve_hook(f"blocks.{lay}.hook_resid_pre")], hooks)
        return rows

    return [segment(lay) for lay in sorted(hook_names)]


def exact_on_suffix(model: Model, plan: Plan) -> bool:
    """Whether a check's exact patches of ``plan`` run on the suffix forward: whole-sequence patches
    of its sites (a per-position sample stays on the hook engine, since a suffix sweep runs every
    head at every sampled position)."""
    from interpkit.runtime import suffix_applies

    return plan.pos is None and suffix_applies(model, plan)


def node_check(
    model: Model,
    task: Task,
    plan: Plan,
    estimate: torch.Tensor,
    direction: str,
    metric: str,
    clean_logprobs: torch.Tensor,
    check: Any = DEFAULT_SAMPLE,
    seed: int = 0,
    target_values: torch.Tensor | None = None,
    source_acts: dict[str, torch.Tensor] | None = None,
    target_acts: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Check a node estimate ``(len(plan), batch)`` (metric after patching) against exact patching.

    ``target_values`` ``(batch,)``: the unpatched target run's metric, so the sample's top half is
    the components of largest estimated effect; ``source_acts``: the method's source run, reused.
    """
    k, n_examples = check_size(check)
    effect = estimate.mean(-1) - (0 if target_values is None else target_values.to(estimate).mean())
    idx = pick_sample(effect, k, seed)
    examples = sample_indices(len(task), n_examples, seed)
    exact = exact_nodes(
        model, task, plan, idx, direction, metric, clean_logprobs, examples, source_acts, target_acts
    ).mean(-1)
    labels = plan.component_labels()
    return summary(estimate[idx][:, examples].mean(-1), exact, [labels[i] for i in idx], seed, examples)
