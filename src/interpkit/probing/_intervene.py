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
    batch_size: int = 32,
    metric: str | None = None,
    read: SiteSpec | None = None,
    read_positions: Sequence[Sequence[int]] | None = None,
    grad: bool = False,
    targets: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Metric per item ``(item,)`` for items ``(example, config)``, and the ``read`` site's vectors.

    ``read`` vectors come back ``(rows, d)``: for each item in order, one row per read position.
    ``targets = (answer, wrong)`` (one token each per item) replace the task's answer and wrong
    tokens. With ``grad`` the passes keep the autograd graph (the caller backpropagates).
    """
    import contextlib

    import torch

    from interpkit.hooks import hooks
    from interpkit.metrics import final_logits, get

    fn_metric = get(metric or task.metric)
    unembed = _unembedding(model)
    values, reads = [], []
    for lo in range(0, len(items), batch_size):
        chunk = list(items[lo : lo + batch_size])
        ex = torch.tensor([e for e, _ in chunk], device=task.clean.device)
        width = int(task.attention_mask[ex].sum(1).max())
        tokens, mask = task.clean[ex, :width], task.attention_mask[ex, :width]
        fwd = _edit_hooks(chunk, edits, positions, lo)
        kept: dict[str, torch.Tensor] = {}
        if read is not None:
            rp = read_positions or positions
            b = torch.tensor([j for j, (e, _) in enumerate(chunk) for _ in rp[e]], device=tokens.device)
            p = torch.tensor([q for e, _ in chunk for q in rp[e]], device=tokens.device)

            def reader(
                act: torch.Tensor, hook: Any, b: torch.Tensor = b, p: torch.Tensor = p, kept: dict = kept
            ) -> None:
                kept["x"] = read.read(act)[b.to(act.device), p.to(act.device)].float().to(b.device)

            fwd.append((read.hook, reader))
        answer_pos = task.answer_pos[ex]

        def final_in(act: torch.Tensor, hook: Any, kept: dict = kept, answer_pos: torch.Tensor = answer_pos) -> None:
            kept["final"] = act[torch.arange(act.shape[0], device=act.device), answer_pos.to(act.device)]
            raise _Done  # the unembedding of every position is not needed: only the answer position's

        if unembed is not None:
            fwd.append(("unembed.hook_in", final_in))
        ctx = contextlib.nullcontext() if grad else torch.inference_mode()
        with ctx, hooks(model, fwd=fwd):
            if unembed is None:
                final = final_logits(model(tokens, attention_mask=mask), answer_pos)
            else:
                with contextlib.suppress(_Done):
                    model(tokens, attention_mask=mask)
                final = (kept["final"] @ unembed[0] + unembed[1]).to(tokens.device)
            if targets is None:
                values.append(fn_metric(final, task.answer[ex], task.wrong[ex], None))
            else:
                values.append(
                    fn_metric(final, targets[0][lo : lo + len(chunk)], targets[1][lo : lo + len(chunk)], None)
                )
        if read is not None:
            reads.append(kept["x"])
    return torch.cat(values), (torch.cat(reads) if read is not None else None)


class _Done(Exception):
    """Ends a forward pass at the unembedding's input; never escapes this module."""


_UNEMBED_OK: dict[int, bool] = {}


def _unembedding(model: Model) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(W_U, b_U)`` when the model's logits are exactly ``unembed.hook_in @ W_U + b_U`` (checked once
    per model on a short input), so that only the answer position need be unembedded; else None."""
    import torch

    from interpkit.hooks import hooks

    try:
        model.resolve_hook("unembed.hook_in")
        w_u = model.bridge.W_U.detach()
        b_u = getattr(model.bridge, "b_U", None)
        b_u = torch.zeros(w_u.shape[-1], device=w_u.device, dtype=w_u.dtype) if b_u is None else b_u.detach()
    except Exception:  # no such hook or weights on this architecture: use the full forward
        return None
    key = id(model.bridge)
    if key not in _UNEMBED_OK:
        seen: dict[str, torch.Tensor] = {}

        def keep(act: torch.Tensor, hook: Any) -> None:
            seen["x"] = act

        tokens = torch.arange(4, device=model.device)[None] % model.cfg.d_vocab
        with torch.inference_mode(), hooks(model, fwd=[("unembed.hook_in", keep)]):
            logits = model(tokens)
        mine = seen["x"] @ w_u + b_u
        _UNEMBED_OK[key] = bool(torch.allclose(mine, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max())))
    return (w_u, b_u) if _UNEMBED_OK[key] else None


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
