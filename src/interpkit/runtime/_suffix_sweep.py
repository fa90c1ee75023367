"""Sweeps through the suffix-only forward: the prefix-reuse fast path of ``ik.patch`` and the checks.

A patch at layer l leaves layers < l untouched, and a patch at position p leaves positions < p
untouched too, so :mod:`interpkit.runtime._suffix` recomputes only layers l.. (and, per
position, only positions p.., keys and values of the earlier positions coming from the base
run). For a sweep over every position this does about half the work of the hook engine's
layer-start forwards, and much less for late layers, whose patches reach the answer position
through few blocks. A whole-sequence patch (``per_position=False``) starts after the patched
site: a head's patch re-runs neither its own layer's attention nor anything below it.

:func:`suffix_values` fills the same ``(patch, example)`` table as the hook engine; ``ik.patch``
and the honesty checks use it for sweeps of ``resid_pre``, ``resid_mid``, ``resid_post``,
``attn_out``, ``mlp_out`` and ``head_out`` when :meth:`SuffixRunner.check` says the suffix
forward reproduces the model (else the hook engine runs). Both are tested against the literal
one-forward-per-patch reference (``tests/patching_reference.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from interpkit.batching import Batcher, sweep
from interpkit.runtime._suffix import SUFFIX_SITES, BaseRun, SuffixRunner, SuffixUnsupported, base_hooks

if TYPE_CHECKING:
    import torch

    from interpkit.distributed import Group
    from interpkit.models import Model
    from interpkit.runtime import Plan
    from interpkit.tasks import Task

_SITE_OF_KIND = {"z": "head_out", **{s: s for s in SUFFIX_SITES if s != "head_out"}}


def suffix_site(kind: str) -> str | None:
    """The suffix forward's name for a plan's site ``kind`` (``"z"`` -> ``"head_out"``); None where it has none."""
    return _SITE_OF_KIND.get(kind)


def suffix_applies(model: Model, plan: Plan) -> bool:
    """Whether a sweep of ``plan`` can run on the suffix forward (a supported site and model)."""
    return plan.kind in _SITE_OF_KIND and plan.dest is None and SuffixRunner.check(model)


def answer_columns(metric_name: str, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor | None:
    """``(batch, 2)`` token ids whose logits alone the metric needs (``logit_diff``), else None (whole vocabulary).

    Two logits per row instead of the vocabulary: the unembedding is the largest matmul of a small model.
    """
    import torch

    return torch.stack([answer, wrong], dim=1) if metric_name == "logit_diff" else None


def metric_of(
    metric: Callable[..., torch.Tensor],
    logits: torch.Tensor,
    on_columns: bool,
    answer: torch.Tensor,
    wrong: torch.Tensor,
    clean_logprobs: torch.Tensor,
) -> torch.Tensor:
    """The metric per row of ``logits``: the whole vocabulary, or the two :func:`answer_columns`."""
    import torch

    if not on_columns:
        return metric(logits, answer, wrong, clean_logprobs)
    first = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return metric(logits, first, first + 1, None)


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
    ``target_acts`` the run patched into, captured at :func:`suffix_hooks`. Examples go in chunks of
    about ``batch_rows`` rows: per position, a chunk is one layer's heads at every position; whole-sequence,
    every layer's patches in one staggered run (halved on out-of-memory, finished chunks kept); under a ``group`` the chunks are
    shared between ranks like the hook engine's (each rank fills its rows; the caller combines).
    Returns the Batcher used.
    """
    import torch

    runner = SuffixRunner(model)
    site = _SITE_OF_KIND[plan.kind]
    dev = model.device
    base = runner.capture(None, task.answer_pos, target_acts)
    n_examples = len(task)
    answer, wrong = task.answer.to(dev), task.wrong.to(dev)
    columns = answer_columns(metric_name, answer, wrong)
    by_layer: dict[int, list[int]] = {}
    for i, layer in enumerate(plan.layer):
        by_layer.setdefault(layer, []).append(i)
    by_layer_list = list(by_layer.items())

    def write(ids: list[int], logits: torch.Tensor, a: int, b: int) -> None:
        """The metric of ``logits`` (patch x example, k), rows ``ids`` x examples a..b, into ``values``."""
        ex = torch.arange(a, b, device=dev).repeat(len(ids))
        vals = metric_of(metric, logits, columns is not None, answer[ex], wrong[ex], clean_logprobs[ex])
        check_nan(vals, [i for i in ids for _ in range(b - a)], ex.tolist())
        rows = torch.tensor(ids, device=dev)[:, None]
        values[rows, torch.arange(a, b, device=dev)[None]] = vals.reshape(len(ids), b - a).to(values.dtype)

    def sliced(layer: int, a: int, b: int) -> torch.Tensor:
        src = sources[layer]
        return src if src.shape[0] == 1 else src[a:b]

    if plan.pos is None:  # whole-sequence patches: every layer's rows in one staggered run per chunk
        heads = {lay: sorted({plan.head[i] for i in ids}) if site == "head_out" else [0] for lay, ids in by_layer_list}

        def run_whole(segment: int, a: int, b: int) -> None:
            cols = None if columns is None else columns[a:b]
            out = suffix_whole(
                runner, _slice(base, a, b), site, {lay: sliced(lay, a, b) for lay in by_layer}, cols, heads
            )
            for lay, ids in by_layer_list:
                row_of = [heads[lay].index(plan.head[i] if site == "head_out" else 0) for i in ids]
                write(ids, out[lay][torch.tensor(row_of, device=dev)].flatten(0, 1), a, b)

        per_example = sum(len(h) for h in heads.values())
        return sweep([n_examples], run_whole, batch_size=max(1, batch_rows // per_example), group=group)

    positions = sorted(set(plan.pos))
    pos_index = {p: i for i, p in enumerate(positions)}

    def run(segment: int, a: int, b: int) -> None:
        layer, ids = by_layer_list[segment]
        p_idx = torch.tensor([pos_index[plan.pos[i]] for i in ids], device=dev)
        h_idx = torch.tensor([plan.head[i] if plan.head is not None else 0 for i in ids], device=dev)
        cols = None if columns is None else columns[a:b]
        logits = suffix_sweep(runner, _slice(base, a, b), site, layer, sliced(layer, a, b), positions, cols)
        write(ids, logits[p_idx, h_idx].flatten(0, 1), a, b)  # (P, H, B, k) -> (patch x example, k)

    # a chunk is a block of examples: every patch of one layer, all positions, for those examples
    n_heads = model.cfg.n_heads if site == "head_out" else 1
    return sweep([n_examples] * len(by_layer_list), run, batch_size=max(1, batch_rows // n_heads), group=group)


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
    own = (head[:, None] == torch.arange(heads, device=dev)[None])[..., None]  # (rows, head, 1)
    start = first_block(site, layer)
    out: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        unpatched = runner.unembed(base.resid_pre[-1][ex, base.answer_pos[ex]], cols)
        patched = {}  # position -> the patched stream entering block `start` at that position, (rows, d_model)
        for p in positions:
            if p >= n:  # after every answer position: nothing it can change
                out[p] = unpatched
                continue
            src = source[ex, p]
            if site == "head_out":  # row (h, b) takes head h of z from the source
                src = torch.where(own, src, base.z[layer][ex, p])
            patched[p] = entering(runner, site, layer, src, base.resid_pre[layer][ex, p], base.resid_mid[layer][ex, p])
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


def first_block(site: str, layer: int) -> int:
    """The first block a stream patched at ``site`` of ``layer`` enters (the block itself for ``resid_pre``)."""
    return layer if site == "resid_pre" else layer + 1


def entering(
    runner: SuffixRunner, site: str, layer: int, value: torch.Tensor, pre: torch.Tensor, mid: torch.Tensor
) -> torch.Tensor:
    """The residual stream entering block :func:`first_block` when ``site`` of ``layer`` holds ``value``.

    ``pre``/``mid``: the base run's ``resid_pre``/``resid_mid`` of ``layer`` at the same rows and
    positions as ``value`` (any leading shape; ``value`` is ``z`` (..., head, d_head) for ``head_out``).
    """
    lay = runner.layers[layer]
    writes = runner.model.anatomy.hook_writes  # is hook_attn_out / hook_mlp_out the residual write itself?
    if site in ("resid_pre", "resid_post"):
        return value
    if site == "mlp_out":
        return mid + (value if writes["mlp_out"] else runner.mlp_write(lay, value))
    if site == "resid_mid":
        # The bridge's hook_resid_mid is ln2.hook_in: a patch there feeds the MLP only,
        # the residual connection keeps the base value (as a hooked run does).
        return mid + runner.mlp_out(layer, value)
    if site == "attn_out":
        after = pre + (value if writes["attn_out"] else runner.attn_write(lay, value))
    else:  # head_out
        after = pre + runner.attn_write(lay, runner.attn_out(lay, value))
    return after + runner.mlp_out(layer, after)


def suffix_whole(
    runner: SuffixRunner,
    base: BaseRun,
    site: str,
    sources: dict[int, torch.Tensor],
    columns: torch.Tensor | None = None,
    heads: dict[int, list[int]] | None = None,
) -> dict[int, torch.Tensor]:
    """Logits ``{layer: (head, batch, k)}`` of patching ``site`` of each layer at every position at once.

    ``sources[layer]`` as ``source`` of :func:`suffix_sweep` (positions past the base run's last
    answer position are ignored: they change nothing the metric reads). For ``head_out`` row i
    of a layer's head axis patches head ``heads[layer][i]`` alone (default: every head); other
    sites have a head axis of length 1. All layers' rows share one staggered run: each enters at
    the block after its patch and is batched with the rows already running.
    """
    import torch

    if site not in SUFFIX_SITES:
        raise SuffixUnsupported(f"suffix sweeps cover {SUFFIX_SITES}, not {site!r}")
    n, batch, dev = base.n_pos, base.resid_pre[0].shape[0], base.resid_pre[0].device
    entries = []  # (first block, stream, example of each row), in block order
    with torch.inference_mode():
        for layer in sorted(sources, key=lambda lay: first_block(site, lay)):
            chosen = (heads or {}).get(layer) or list(range(runner.n_heads)) if site == "head_out" else [0]
            ex = torch.arange(batch, device=dev).repeat(len(chosen))  # rows are (head, example)
            source = sources[layer]
            value = source.to(dev).expand(batch, *source.shape[1:])[ex, :n]
            if site == "head_out":
                head = torch.tensor(chosen, device=dev).repeat_interleave(batch)
                own = head[:, None] == torch.arange(runner.n_heads, device=dev)[None]
                value = torch.where(own[:, None, :, None], value, base.z[layer][ex])  # (rows, pos, head, d_head)
            stream = entering(runner, site, layer, value, base.resid_pre[layer][ex], base.resid_mid[layer][ex])
            entries.append((first_block(site, layer), stream, ex, layer, len(chosen)))
        ex_all = torch.cat([e[2] for e in entries])
        cols = None if columns is None else columns.to(dev)[ex_all]
        first, *rest = entries
        logits = runner.run(base, first[0], "pre", first[1], 0, first[2], cols, joins=[e[:3] for e in rest])
    out, at = {}, 0
    for _, _, ex, layer, n_rows in entries:
        out[layer] = logits[at : at + len(ex)].unflatten(0, (n_rows, batch))
        at += len(ex)
    return out


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
