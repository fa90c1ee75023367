"""Running a dataset's examples with an edit at one site, many edits batched into each forward pass.

An *item* is one example run under one *config* (an edit: a site and a function of the site's
vectors at the edited positions, or no edit). Items of different configs share forward passes;
each hook edits only its own config's rows, on a copy of the activation. The task metric is read
at each example's answer position; optionally the activation at another site is read too (where
a probe looks downstream of the edit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.probing._errors import ProbeError

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.probing._collect import SiteSpec
    from interpkit.probing._dataset import ProbeDataset
    from interpkit.tasks import Task

# fn(vectors (k, d), item index of each vector (k,)) -> edited vectors (k, d)
EditFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@dataclasses.dataclass
class Edit:
    spec: SiteSpec
    fn: EditFn


def dataset_task(model: Model, ds: ProbeDataset, metric: str = "logit_diff") -> Task:
    """The model's task on the dataset's examples: each example's ``answer`` against its ``wrong`` token."""
    from interpkit.tasks import from_token_lists

    src = ds.source
    if not src.get("answers") or not src.get("wrongs"):
        raise ProbeError(
            "causal checks need the model's behaviour on each example: collect the dataset with "
            "answers= and wrongs= (single tokens), or pass task="
        )
    ids = src["ids"]
    where = [f"example {i}" for i in range(len(ids))]
    answer = [_single(model, a, w) for a, w in zip(src["answers"], where, strict=True)]
    wrong = [_single(model, b, w) for b, w in zip(src["wrongs"], where, strict=True)]
    return from_token_lists("probe-dataset", model, ids, ids, answer, wrong, metric=metric, where=where)


def _single(model: Model, text: Any, where: str) -> int:
    from interpkit.errors import TaskError

    if isinstance(text, int):
        return text
    try:
        return model.to_single_token(text)
    except TaskError as exc:
        raise ProbeError(f"{where}: {exc}") from None


def edit_positions(ds: ProbeDataset, task: Task, positions: str | Sequence[Sequence[int]]) -> list[list[int]]:
    """Per example, where edits apply: ``"probe"`` (the dataset's positions), ``"all"`` or explicit lists."""
    if isinstance(positions, str):
        if positions == "probe":
            return [list(p) for p in ds.source["positions"]]
        if positions == "all":
            return [list(range(int(n))) for n in task.attention_mask.sum(1).tolist()]
        raise ProbeError(f"edit positions {positions!r} are not 'probe', 'all' or one list per example")
    return [list(p) for p in positions]


def run_items(
    model: Model,
    task: Task,
    items: Sequence[tuple[int, int]],
    edits: Sequence[Edit | None],
    positions: Sequence[Sequence[int]],
    batch_size: int | None = None,
    metric: str | None = None,
    read: SiteSpec | None = None,
    read_positions: Sequence[Sequence[int]] | None = None,
    grad: bool = False,
    targets: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Metric per item ``(item,)`` for items ``(example, config)``, and the ``read`` site's vectors.

    ``read`` vectors come back ``(rows, d)``: for each item in order, one row per read position.
    ``targets = (answer, wrong)`` (one token each per item) replace the task's answer and wrong
    tokens. With ``grad`` the passes keep the autograd graph (the caller backpropagates). Items run
    in chunks of ``batch_size`` (default from free memory), halved on out-of-memory; only each
    item's answer position is unembedded (:func:`interpkit.runtime.forward_final`).
    """
    import contextlib

    import torch

    from interpkit.metrics import get
    from interpkit.runtime import Batcher, auto_rows, check_batch_size, forward_final

    fn_metric = get(metric or task.metric)
    rows = check_batch_size(batch_size) or max(1, auto_rows(model, task.n_pos) // (4 if grad else 1))

    def run(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        chunk = list(items[lo:hi])
        ex = torch.tensor([e for e, _ in chunk], device=task.clean.device)
        width = int(task.attention_mask[ex].sum(1).max())
        tokens, mask = task.clean[ex, :width], task.attention_mask[ex, :width]
        fwd = _edit_hooks(chunk, edits, positions, lo)
        kept: dict[str, torch.Tensor] = {}
        if read is not None:
            rp = read_positions or positions
            b = torch.tensor([j for j, (e, _) in enumerate(chunk) for _ in rp[e]], device=tokens.device)
            p = torch.tensor([q for e, _ in chunk for q in rp[e]], device=tokens.device)

            def reader(act: torch.Tensor, hook: Any) -> None:
                kept["x"] = read.read(act)[b.to(act.device), p.to(act.device)].float().to(b.device)

            fwd.append((read.hook, reader))
        with contextlib.nullcontext() if grad else torch.inference_mode():
            final = forward_final(model, tokens, None, task.answer_pos[ex], fwd, attention_mask=mask)
            if targets is None:
                answer, wrong = task.answer[ex], task.wrong[ex]
            else:
                answer, wrong = targets[0][lo:hi], targets[1][lo:hi]
            values = fn_metric(final, answer.to(final.device), wrong.to(final.device), None)
        return values, kept.get("x")

    parts = Batcher(rows).run(0, len(items), run)
    values = torch.cat([v for v, _ in parts])
    return values, (torch.cat([x for _, x in parts]) if read is not None else None)


def _edit_hooks(
    chunk: Sequence[tuple[int, int]], edits: Sequence[Edit | None], positions: Sequence[Sequence[int]], offset: int
) -> list[tuple[str, Any]]:
    import torch

    by_hook: dict[str, list[int]] = {}
    for c in sorted({c for _, c in chunk}):
        if edits[c] is not None:
            by_hook.setdefault(edits[c].spec.hook, []).append(c)
    out = []
    for hook_name, configs in by_hook.items():
        plan = []
        for c in configs:
            rows = [(j, e) for j, (e, cc) in enumerate(chunk) if cc == c]
            b = [j for j, e in rows for _ in positions[e]]
            p = [q for _, e in rows for q in positions[e]]
            item = [offset + j for j, e in rows for _ in positions[e]]
            plan.append((edits[c], b, p, item))

        def hook_fn(act: torch.Tensor, hook: Any, plan: list = plan) -> torch.Tensor:
            out_act = act.clone(memory_format=torch.contiguous_format)
            for edit, b, p, item in plan:
                bt = torch.tensor(b, device=act.device)
                pt = torch.tensor(p, device=act.device)
                view = edit.spec.read(out_act)
                view[bt, pt] = edit.fn(edit.spec.read(act)[bt, pt], torch.tensor(item, device=act.device)).to(act.dtype)
            return out_act

        out.append((hook_name, hook_fn))
    return out


def project_out(basis: torch.Tensor) -> EditFn:
    """Edit removing the span of the orthonormal ``basis (d, r)`` (the probe's readout subspace)."""

    def fn(x: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        u = basis.to(x.device, x.dtype)  # the edited layer's device (a model split by device_map)
        return x - (x @ u) @ u.T

    return fn


def add_vector(vector: torch.Tensor) -> EditFn:
    """Edit adding ``vector (d,)`` (steering)."""

    def fn(x: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return x + vector.to(x.device, x.dtype)

    return fn
