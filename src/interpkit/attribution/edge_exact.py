"""Exact edge patching, any set of edges in batched passes.

Patching edge u -> v means: the receiver v reads ``x_v + Δ_u`` (its own copy of the residual
stream plus the change of u's output between the runs, ``Δz_u @ W_O`` for a head) while every
other input of every other component is the target run's, and everything downstream of v is
recomputed. It is path patching with one sender and one receiver (Wang et al. 2022, section
3.1; ``interpkit.patching.path_patch``), and the quantity EAP linearises (Syed et al. 2023).

Here each (edge, example) is one row of a batched forward that starts at the receiver's layer
from the target run's cached ``resid_pre`` (the layers below are not computed) and adds its
``Δ_u`` at its receiver's input hook (:meth:`interpkit.graph.ReceiverKind.add`). Rows are
chunked from free memory (:func:`interpkit.runtime.metric_rows`). :func:`exact_edges` serves
``method="exact"`` and the sampled honesty check of EAP / EAP-IG; the slow, receiver-by-receiver
reference built on ``path_patch`` is :func:`exact_edge_matrix`.

Before patching, every receiver hook used is checked to be *live*: the bridge must read it, which
is decided structurally (does the output depend on the hook's value at all, by autograd), so no
invariance of the model (softmax's to a shift of every key, LayerNorm's to a constant, saturated
attention) can make a read hook look unread; Phi's ``hook_mlp_in``, which its bridge never reads,
is refused.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=4)
    >>> ik.attribution.exact_edge_scores(model, task, check=0).dims
    ('edge',)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.attribution._edges import finish_edges, setup_edges
from interpkit.attribution._errors import AttributionError
from interpkit.graph import build_graph, mode_context, receiver_mode, sender_hooks, sender_outputs
from interpkit.runtime import Rows, capture, metric_rows

if TYPE_CHECKING:
    import torch

    from interpkit.graph import Graph
    from interpkit.models import Model
    from interpkit.results import Result
    from interpkit.tasks import Task

_LAYERED = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _hook_kind(name: str) -> tuple[int, str]:
    """``"blocks.3.hook_mlp_in"`` -> ``(3, "hook_mlp_in")``; other names -> ``(-1, name)``."""
    m = _LAYERED.match(name)
    return (int(m.group(1)), m.group(2)) if m else (-1, name)


def dead_hooks(model: Model, names: Sequence[str], tokens: torch.Tensor) -> list[str]:
    """The hooks among ``names`` whose value the model's output does not depend on at all.

    Checked once per model and kind of hook (at the first layer it is used) on one example: a zero
    leaf tensor is added to the hook's activation and the logits differentiated; a hook the bridge
    never reads leaves the leaf off the autograd graph. Zero gradients (saturated
    attention, a norm's invariance) still count as read. Call inside the receiver mode's context.
    """
    import torch

    from interpkit.hooks import hooks

    known: dict[str, bool] = model.anatomy.verdicts.setdefault("live_hooks", {})
    first: dict[str, str] = {}
    for name in sorted(names, key=_hook_kind):
        first.setdefault(_hook_kind(name)[1], name)
    todo = [kind for kind in first if kind not in known]
    if todo:
        leaves: dict[str, torch.Tensor] = {}

        def leaf(act: torch.Tensor, hook: Any, kind: str) -> torch.Tensor:
            # act + a zero leaf: the value is unchanged and later hooks' leaves stay connected through it
            leaves[kind] = torch.zeros_like(act, requires_grad=True)
            return act + leaves[kind]

        fwd = [(first[kind], lambda act, hook, kind=kind: leaf(act, hook, kind)) for kind in todo]
        with torch.inference_mode(False), torch.enable_grad(), hooks(model, fwd=fwd):
            out = model.bridge(tokens.clone()).float().sum()
            found = [k for k in todo if k in leaves]
            grads = torch.autograd.grad(out, [leaves[k] for k in found], allow_unused=True) if found else []
        for kind in todo:
            known[kind] = kind in found and grads[found.index(kind)] is not None
    return [first[kind] for kind in first if not known[kind]]


def exact_edges(
    model: Model,
    task: Task,
    graph: Graph,
    pairs: Sequence[tuple[int, int]],
    direction: str,
    metric: str,
    clean_logprobs: torch.Tensor,
    examples: Sequence[int] | None = None,
    *,
    batch_size: int | None = None,
    delta: torch.Tensor | None = None,
    target_run: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Metric change of patching each edge ``(sender, receiver)`` alone: ``(len(pairs), len(examples))``.

    ``delta`` ``(len(examples), pos, n_senders, d_model)``: each sender's change between the runs on
    those examples, when the caller has it (then only the target run's layer inputs are needed).
    ``target_run``: the caller's target run for every example of ``task``, its activations (with
    every layer's ``resid_pre``) and its metric per example; else the target run is captured here.
    """
    import torch

    from interpkit.metrics import get as get_metric

    sel = list(range(len(task))) if examples is None else list(examples)
    sub = task.subset(sel) if sel != list(range(len(task))) else task
    sub = sub.to(model.device)
    target, source = (sub.clean, sub.corrupt) if direction == "noise" else (sub.corrupt, sub.clean)
    logprobs = clean_logprobs[torch.tensor(sel, device=clean_logprobs.device)]
    c = model.cfg
    resid = [model.resolve_hook(f"blocks.{lay}.hook_resid_pre") for lay in range(c.n_layers)]
    reuse = delta is not None and target_run is not None and set(resid) <= set(target_run[0])
    if reuse:
        acts, values = target_run
        index = torch.tensor(sel, device=values.device)
        target_acts = {h: acts[h][index.to(acts[h].device), : sub.n_pos] for h in resid}
        base = values[index].to(model.device)
    else:
        if delta is None:
            target_acts, target_logits = capture(model, target, [*sender_hooks(graph), *resid])
            source_acts, _ = capture(model, source, sender_hooks(graph))
            with torch.inference_mode():
                delta = sender_outputs(model, graph, source_acts) - sender_outputs(
                    model, graph, target_acts
                )  # (b, p, S, d)
        else:
            target_acts, target_logits = capture(model, target, resid)
        with torch.inference_mode():
            rows0 = torch.arange(len(sel), device=model.device)
            fn_base = target_logits[rows0, sub.answer_pos]
        base = get_metric(metric)(fn_base, sub.answer, sub.wrong, logprobs)
    delta = delta[:, : sub.n_pos].to(model.device)
    out = torch.full((len(pairs), len(sel)), float("nan"), device=model.device)
    mode = receiver_mode(model, AttributionError)
    group_of = {r: g for g in graph.receiver_groups for r in range(g.lo, g.hi)}
    by_layer: dict[int, list[int]] = {}
    for i, (_, r) in enumerate(pairs):
        g = group_of[r]
        by_layer.setdefault(g.kind.start_layer(c, g.layer), []).append(i)
    with mode_context(model, mode), torch.inference_mode():
        used = sorted({group_of[r].kind.hook(model, group_of[r].layer, mode) for _, r in pairs})
        dead = dead_hooks(model, used, target[:1])
        if dead:
            raise AttributionError(
                f"exact edge patching cannot reach the receiver inputs {dead} of {model.name}: this architecture's "
                "bridge does not read them (its output does not depend on them). "
                "ik.patching.path_patch reaches every receiver through the residual stream instead"
            )
        segments = [
            _edge_rows(model, graph, pairs, ids, layer, len(sel), target_acts, delta, mode)
            for layer, ids in sorted(by_layer.items())
        ]
        metric_rows(
            model, sub, segments, out, metric=metric, clean_logprobs=logprobs, relative_to=base, batch_size=batch_size
        )
    return out


def _edge_rows(
    model: Model,
    graph: Graph,
    pairs: Sequence[tuple[int, int]],
    ids: list[int],
    layer: int,
    n: int,
    target_acts: dict[str, torch.Tensor],
    delta: torch.Tensor,
    mode: str,
) -> Rows:
    """Every (edge, example) row of the edges ``ids`` whose forwards start at ``layer``."""
    import torch

    start = target_acts[model.resolve_hook(f"blocks.{layer}.hook_resid_pre")]
    group_of = {r: g for g in graph.receiver_groups for r in range(g.lo, g.hi)}
    segment = Rows(layer, [i for i in ids for _ in range(n)], list(range(n)) * len(ids), start, lambda a, b, ex: [])

    def hooks(a: int, b: int, ex: torch.Tensor) -> list[tuple[str, Any]]:
        edges = segment.items[a:b]
        by_group: dict[Any, list[tuple[int, int]]] = {}  # receiver group -> (row in chunk, edge)
        for j, e in enumerate(edges):
            by_group.setdefault(group_of[pairs[e][1]], []).append((j, e))
        out = []
        for g, items in by_group.items():
            js = torch.tensor([j for j, _ in items], device=delta.device)
            ss = torch.tensor([pairs[e][0] for _, e in items], device=delta.device)
            local = torch.tensor([pairs[e][1] - g.lo for _, e in items], device=delta.device)

            def hook(act: torch.Tensor, hook: Any, g: Any = g, js: Any = js, ss: Any = ss, local: Any = local) -> Any:
                change = torch.zeros(act.shape[0], delta.shape[1], len(g), delta.shape[-1], dtype=delta.dtype,
                                     device=delta.device)  # fmt: skip
                change[js, :, local] = delta[ex[js], :, ss]  # each row: its sender's change at its receiver
                return g.kind.add(model, g.layer, act, change, mode)

            out.append((g.kind.hook(model, g.layer, mode), hook))
        return out

    segment.hooks = hooks
    return segment


def exact_edge_scores(
    model: Model,
    task: Task,
    direction: str = "denoise",
    *,
    metric: str | None = None,
    check: int = 0,
    seed: int = 0,
    graph: Graph | None = None,
    batch_size: int | None = None,
) -> Result:
    """Exact patching of every edge of ``graph``, each alone: the metric change, averaged over examples.

    ``check`` is accepted for a uniform signature with the estimating methods and ignored (this
    is what they are checked against).
    """
    import torch

    run = setup_edges(model, task, direction, metric, graph, check=0, seed=seed, capture=False)
    g = run.graph
    matrix = torch.zeros(len(g.senders), len(g.receivers), device=model.device)
    change = exact_edges(
        model, run.task, g, run.pairs, direction, run.metric, run.base["clean_logprobs"], batch_size=batch_size
    ).mean(-1)
    matrix[g.mask] = change.to(matrix.dtype)
    return finish_edges(model, run, matrix, "exact", None, seed=seed)


def exact_edge_matrix(model: Model, task: Task, graph: Graph | None, direction: str, metric: str) -> torch.Tensor:
    """(senders x receivers) metric change of patching each edge alone (0 where no edge).

    The slow reference (one ``path_patch`` per receiver, default graph); :func:`exact_edges` is the fast path.
    """
    import torch

    from interpkit.patching import path_patch

    graph = graph or build_graph(model)
    matrix = torch.zeros(len(graph.senders), len(graph.receivers))
    base_key = "clean_value" if direction == "noise" else "corrupt_value"
    for r, receiver in enumerate(graph.receivers):
        senders = [i for i in range(len(graph.senders)) if graph.mask[i, r]]
        if not senders:
            continue
        res = path_patch(
            model,
            task,
            [receiver.label],
            senders=[graph.senders[i].label for i in senders],
            direction=direction,
            metric=metric,
        )
        matrix[senders, r] = res.scores - getattr(res, base_key)
    return matrix
