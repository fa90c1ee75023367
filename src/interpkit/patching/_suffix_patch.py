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

from interpkit.patching._engine import Batcher, sweep
from interpkit.patching._suffix import SUFFIX_SITES, BaseRun, SuffixRunner, base_hooks, suffix_sweep

if TYPE_CHECKING:
    import torch

    from interpkit.distributed import Group
    from interpkit.models import Model
    from interpkit.patching._plan import Plan
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
