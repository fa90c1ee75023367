"""Per-position sweeps through the suffix-only forward: the prefix-reuse fast path of ``ik.patch``.

A patch at layer l and position p leaves positions < p and layers < l untouched, so
:mod:`interpkit.patching._suffix` recomputes only positions p.. of layers l.. (keys and values of
the earlier positions come from the base run). For a sweep over every position this does about
half the work of the hook engine's layer-start forwards, and much less for late layers, whose
patches reach the answer position through few blocks.

:func:`suffix_values` fills the same ``(patch, example)`` table as the hook engine; ``ik.patch``
uses it for per-position sweeps of ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``,
``mlp_out`` and ``head_out`` when :meth:`SuffixRunner.check` says the suffix forward reproduces
the model (else the hook engine runs). Both are tested against the literal one-forward-per-patch
reference (``tests/patching_reference.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from interpkit.patching._suffix import SUFFIX_SITES, BaseRun, SuffixRunner, SuffixUnsupported, base_hooks
from interpkit.runtime import Batcher, sweep

if TYPE_CHECKING:
    import torch

    from interpkit.distributed import Group
    from interpkit.models import Model
    from interpkit.runtime import Plan
    from interpkit.tasks import Task

_SITE_OF_KIND = {"z": "head_out", **{s: s for s in SUFFIX_SITES if s != "head_out"}}


def suffix_applies(model: Model, plan: Plan) -> bool:
    """Whether a sweep of ``plan`` can run on the suffix forward (per position, supported site and model)."""
    return plan.pos is not None and plan.kind in _SITE_OF_KIND and SuffixRunner.check(model)


def suffix_hooks(model: Model) -> list[str]:
    """What :func:`suffix_values` needs captured from the target run (resolved hook names)."""
    return [model.resolve_hook(name) for name in base_hooks(model)]


def _slice(base: BaseRun, a: int, b: int) -> BaseRun:
    lists = {f: [t[a:b] for t in getattr(base, f)] for f in ("resid_pre", "resid_mid", "z", "k", "v")}
    return dataclasses.replace(base, **lists, answer_pos=base.answer_pos[a:b])


def suffix_values(
    model: Model,
    plan: Plan,
    task: Task,
    target_acts: dict[str, torch.Tensor],
    sources: dict[int, torch.Tensor],
    metric: Callable[..., torch.Tensor],
    metric_name: str,
    clean_logprobs: torch.Tensor,
    values: torch.Tensor,
    batch_rows: int,
    check_nan: Callable[[torch.Tensor, list[int], list[int]], None],
    group: Group | None = None,
) -> Batcher:
    """Write the metric of every (patch, example) of ``plan`` into ``values`` ``(patch, example)``.

    ``sources[layer]`` is the source activation at the plan's hook of that layer (batch or 1 rows);
    ``target_acts`` the run patched into, captured at :func:`suffix_hooks`. Examples go in chunks of ``batch_rows // heads`` rows
    per position (halved on out-of-memory, finished chunks kept); under a ``group`` the chunks are
    shared between ranks like the hook engine's (each rank fills its rows; the caller combines).
    Returns the Batcher used.
    """
    import torch

    runner = SuffixRunner(model)
    site = _SITE_OF_KIND[plan.kind]
    dev = model.device
    base = runner.capture(None, task.answer_pos, target_acts)
    positions = sorted(set(plan.pos))
    pos_index = {p: i for i, p in enumerate(positions)}
    heads = model.cfg.n_heads if site == "head_out" else 1
    n_examples = len(task)
    answer, wrong = task.answer.to(dev), task.wrong.to(dev)
    # logit_diff needs two logits per row, not the whole vocabulary (the largest matmul of a small model)
    columns = torch.stack([answer, wrong], dim=1) if metric_name == "logit_diff" else None
    by_layer: dict[int, list[int]] = {}
    for i, layer in enumerate(plan.layer):
        by_layer.setdefault(layer, []).append(i)
    by_layer_list = list(by_layer.items())

    def run(segment: int, a: int, b: int) -> None:
        layer, ids = by_layer_list[segment]
        p_idx = torch.tensor([pos_index[plan.pos[i]] for i in ids], device=dev)
        h_idx = torch.tensor([plan.head[i] if plan.head is not None else 0 for i in ids], device=dev)
        src = sources[layer]
        src = src if src.shape[0] == 1 else src[a:b]
        cols = None if columns is None else columns[a:b]
        logits = suffix_sweep(runner, _slice(base, a, b), site, layer, src, positions, cols)  # (P, H, B, k)
        logits = logits[p_idx, h_idx].flatten(0, 1)  # (patch x example, k)
        ex = torch.arange(a, b, device=dev).repeat(len(ids))
        if columns is None:
            vals = metric(logits, answer[ex], wrong[ex], clean_logprobs[ex])
        else:
            first = torch.zeros(len(ex), dtype=torch.long, device=dev)
            vals = metric(logits, first, first + 1, None)
        check_nan(vals, [i for i in ids for _ in range(b - a)], ex.tolist())
        rows = torch.tensor(ids, device=dev)[:, None]
        values[rows, torch.arange(a, b, device=dev)[None]] = vals.reshape(len(ids), b - a).to(values.dtype)

    # a chunk is a block of examples: every patch of one layer, all positions, for those examples
    return sweep([n_examples] * len(by_layer_list), run, batch_size=max(1, batch_rows // heads), group=group)


def suffix_sweep(
    runner: SuffixRunner,
    base: BaseRun,
    site: str,
    layer: int,
    source: torch.Tensor,
    positions: list[int] | None = None,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits ``(position, head, batch, k)`` of every per-position patch of ``site`` at ``layer``.

    ``site`` is one of :data:`SUFFIX_SITES`; ``source`` is the source run's activation at the
    site's hook (``(batch or 1, pos, d_model)``, or ``(batch or 1, pos, head, d_head)`` for
    ``head_out``, i.e. ``hook_z``), written at one position (and head) of the base run per patch.
    The head axis has length ``n_heads`` for ``head_out`` and 1 otherwise; ``k`` is ``d_vocab``,
    or the width of ``columns`` (batch, k): per-example token ids whose logits alone are wanted.

        >>> suffix_sweep(runner, base, "resid_pre", 0, clean_resid_pre).shape   # doctest: +SKIP
        torch.Size([6, 1, 3, 97])
    """
    import torch

    if site not in SUFFIX_SITES:
        raise SuffixUnsupported(f"suffix sweeps cover {SUFFIX_SITES}, not {site!r}")
    if runner.attn_only and site in ("resid_mid", "mlp_out"):
        raise SuffixUnsupported(f"site {site!r} does not exist in an attention-only model")
    n, batch, dev = base.n_pos, base.resid_pre[0].shape[0], base.resid_pre[0].device
    positions = list(range(source.shape[1])) if positions is None else list(positions)
    heads = runner.n_heads if site == "head_out" else 1
    ex = torch.arange(batch, device=dev).repeat(heads)  # rows are (head, example)
    head = torch.arange(heads, device=dev).repeat_interleave(batch)
    cols = None if columns is None else columns.to(dev)[ex]
    source = source.to(dev).expand(batch, *source.shape[1:])
    lay = runner.layers[layer]
    writes = runner.model.anatomy.hook_writes  # is hook_attn_out / hook_mlp_out the residual write itself?
    start = layer if site == "resid_pre" else layer + 1  # the first block the patched stream enters
    out: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        unpatched = runner.unembed(base.resid_pre[-1][ex, base.answer_pos[ex]], cols)
        patched = {}  # position -> the patched stream entering block `start` at that position, (rows, d_model)
        for p in positions:
            if p >= n:  # after every answer position: nothing it can change
                out[p] = unpatched
                continue
            src = source[ex, p]
            if site in ("resid_pre", "resid_post"):
                patched[p] = src
            elif site == "mlp_out":
                write = src if writes["mlp_out"] else runner.mlp_write(lay, src)
                patched[p] = base.resid_mid[layer][ex, p] + write
            elif site == "resid_mid":
                # The bridge's hook_resid_mid is ln2.hook_in: a patch there feeds the MLP only,
                # the residual connection keeps the base value (as a hooked run does).
                patched[p] = base.resid_mid[layer][ex, p] + runner.mlp_out(layer, src)
            else:
                if site == "attn_out":
                    mid = base.resid_pre[layer][ex, p] + (src if writes["attn_out"] else runner.attn_write(lay, src))
                else:  # head_out: row (h, b) takes head h of z from the source
                    own = (head[:, None] == torch.arange(heads, device=dev)[None])[..., None]
                    z = torch.where(own, src, base.z[layer][ex, p])
                    mid = base.resid_pre[layer][ex, p] + runner.attn_write(lay, runner.attn_out(lay, z))
                patched[p] = mid + runner.mlp_out(layer, mid)
        for bucket in _buckets(sorted(patched), n, len(ex), runner.model.cfg.d_model):
            # One suffix run from the bucket's first position p0 for all its patches: row (p, h, b) is
            # the base stream of positions p0.. with position p replaced (positions p0..p-1 are
            # recomputed unchanged, the price of fewer, larger forwards).
            p0, k = bucket[0], len(bucket)
            x = base.resid_pre[start][ex, p0:].repeat(k, 1, 1)  # (k x rows, n - p0, d_model); [n_layers]: final
            for j, p in enumerate(bucket):
                x[j * len(ex) : (j + 1) * len(ex), p - p0] = patched[p]
            ex_k = ex.repeat(k)
            logits = runner.run(base, start, "pre", x, p0, ex_k, None if cols is None else cols.repeat(k, 1))
            for j, p in enumerate(bucket):
                out[p] = logits[j * len(ex) : (j + 1) * len(ex)]
    return torch.stack([out[p] for p in positions]).unflatten(1, (heads, batch))


_WORK_PER_RUN = 2**27  # multiply-adds per block per suffix run below which runs are merged (overhead-bound)


def _buckets(positions: list[int], n: int, rows: int, d_model: int) -> list[list[int]]:
    """Consecutive positions whose patches share one suffix run.

    A bucket starting at p0 recomputes positions p0.. for every patch in it: it grows while a
    run is small (``rows x width x (n - p0) x d_model^2`` under :data:`_WORK_PER_RUN`, where
    per-call overhead dominates) and while the recomputed prefix stays under about a quarter of
    the work (``width <= 1 + 0.4 (n - p0)``). Large models get one position per run.
    """
    out: list[list[int]] = []
    for p in positions:
        if out:
            p0, width = out[-1][0], len(out[-1]) + 1
            remaining = n - p0
            small = rows * width * remaining * d_model * d_model < _WORK_PER_RUN
            if small and width <= 1 + 0.4 * remaining and p == out[-1][-1] + 1:
                out[-1].append(p)
                continue
        out.append([p])
    return out
