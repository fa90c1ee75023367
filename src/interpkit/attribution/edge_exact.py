"""Exact edge patching, any set of edges in batched passes.

Patching edge u -> v means: the receiver v reads ``x_v + Δ_u`` (its own copy of the residual
stream plus the change of u's output between the runs, ``Δz_u @ W_O`` for a head) while every
other input of every other component is the target run's, and everything downstream of v is
recomputed. It is path patching with one sender and one receiver (Wang et al. 2022, section
3.1; ``patching._path``), and the quantity EAP linearises (Syed et al. 2023).

Here each (edge, example) is one row of a batched forward that starts at the receiver's layer
from the target run's cached ``resid_pre`` and adds its ``Δ_u`` at its receiver's split input
(``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` at the head, ``hook_mlp_in``, or the
final residual for ``logits``). Rows are chunked from free memory. :func:`exact_edges` serves
``edge_scores(method="exact")`` and the sampled honesty check of EAP / EAP-IG; the slow,
receiver-by-receiver reference built on ``path_patch`` is ``eap.exact_edge_matrix``.

    >>> change = exact_edges(model, task, graph, [(4, 17)], "noise", "logit_diff", clean_lp)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.attribution._endpoints import _sender_names, sender_outputs, split_inputs
from interpkit.attribution.eap import AttributionError, _projected_receivers
from interpkit.metrics import get as get_metric
from interpkit.patching._engine import auto_rows, capture, forward_final, run_chunked

if TYPE_CHECKING:
    import torch

    from interpkit.attribution.graph import Graph, Node
    from interpkit.models import Model
    from interpkit.tasks import Task


def _receiver_hook(model: Model, node: Node, projected: bool = False) -> tuple[str, int | None, int]:
    """(hook name, index along the head axis or None, layer to start from) of a receiver.

    ``projected``: the bridge has no per-head input hooks, so a head's input change is added after
    its projection, at ``attn.hook_q/k/v`` (exact for attention-only models without norms).
    """
    c = model.cfg
    if node.kind == "logits":
        return f"blocks.{c.n_layers - 1}.hook_resid_post", None, c.n_layers - 1
    if node.kind == "mlp":
        return f"blocks.{node.layer}.hook_mlp_in", None, node.layer
    if projected:
        return f"blocks.{node.layer}.attn.hook_{node.kind}", node.index, node.layer
    return f"blocks.{node.layer}.hook_{node.kind}_input", node.index, node.layer


def _dead_hooks(model: Model, names: Sequence[str], tokens: torch.Tensor) -> list[str]:
    """The hooks among ``names`` that a change does not reach the output from, checked once per
    model and kind of hook (at the first layer it is used) on one example."""
    import torch

    from interpkit.hooks import hooks

    def layer_and_kind(name: str) -> tuple[int, str]:  # "blocks.3.hook_mlp_in" -> (3, "hook_mlp_in")
        parts = name.split(".", 2)
        return (int(parts[1]), parts[2]) if parts[0] == "blocks" and len(parts) == 3 else (-1, name)

    known: dict[str, bool] = model.__dict__.setdefault("_interpkit_live_hooks", {})
    first: dict[str, str] = {}
    for name in sorted(names, key=layer_and_kind):
        first.setdefault(layer_and_kind(name)[1], name)
    todo = [kind for kind in first if kind not in known]
    if todo:
        ref = model(tokens)
        for kind in todo:
            with hooks(model, fwd=[(first[kind], lambda act, hook: act + act.std() + 1.0)]):
                known[kind] = not torch.equal(model(tokens), ref)
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
) -> torch.Tensor:
    """Metric change of patching each edge ``(sender, receiver)`` alone: ``(len(pairs), len(examples))``."""
    import torch

    fn = get_metric(metric)
    target, source = (task.clean, task.corrupt) if direction == "noise" else (task.corrupt, task.clean)
    sel = torch.arange(len(task), device=model.device) if examples is None else torch.tensor(examples)
    sel = sel.to(model.device)
    target, source, clean_logprobs = target[sel], source[sel], clean_logprobs[sel]
    answer, wrong, answer_pos = task.answer[sel], task.wrong[sel], task.answer_pos[sel]
    n = len(sel)
    c = model.cfg
    resid = [f"blocks.{lay}.hook_resid_pre" for lay in range(c.n_layers)]
    target_acts, target_logits = capture(model, target, [*_sender_names(model), *resid])
    source_acts, _ = capture(model, source, _sender_names(model))
    with torch.inference_mode():
        delta = sender_outputs(model, source_acts) - sender_outputs(model, target_acts)  # (b, p, S, d)
        rows0 = torch.arange(n, device=model.device)
        base = fn(target_logits[rows0, answer_pos], answer, wrong, clean_logprobs)
    out = torch.full((len(pairs), n), float("nan"), device=model.device)
    projected = _projected_receivers(model)
    by_layer: dict[int, list[int]] = {}
    for i, (_, r) in enumerate(pairs):
        by_layer.setdefault(_receiver_hook(model, graph.receivers[r])[2], []).append(i)
    batch_rows = auto_rows(model, task.n_pos)
    with contextlib.nullcontext() if projected else split_inputs(model), torch.inference_mode():
        used = {_receiver_hook(model, graph.receivers[r], projected)[0] for _, r in pairs}
        dead = _dead_hooks(model, sorted(used), target[:1])
        if dead:
            raise AttributionError(
                f"exact edge patching cannot reach the receiver inputs {dead} of {model.name}: this architecture's "
                "bridge does not read them (a change there leaves the output unchanged). "
                "ik.patching.path_patch reaches every receiver through the residual stream instead"
            )
        for layer, ids in sorted(by_layer.items()):
            start = target_acts[model.resolve_hook(f"blocks.{layer}.hook_resid_pre")]
            row_edge = [i for i in ids for _ in range(n)]
            row_example = [b for _ in ids for b in range(n)]

            def run(
                lo: int,
                hi: int,
                layer: int = layer,
                start: Any = start,
                row_edge: list = row_edge,
                row_example: list = row_example,
            ):
                edges, ex = row_edge[lo:hi], torch.tensor(row_example[lo:hi], device=model.device)
                adds: dict[str, list[tuple[int, int | None, int]]] = {}
                for j, e in enumerate(edges):
                    s, r = pairs[e]
                    name, index, _ = _receiver_hook(model, graph.receivers[r], projected)
                    adds.setdefault(model.resolve_hook(name), []).append((j, index, s))

                def make(items: list[tuple[int, int | None, int]], name: str) -> Any:
                    js = torch.tensor([j for j, _, _ in items], device=model.device)
                    ss = torch.tensor([s for _, _, s in items], device=model.device)
                    heads = None if items[0][1] is None else torch.tensor([i for _, i, _ in items], device=model.device)

                    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
                        add = torch.zeros_like(act)
                        d = delta[ex[js], :, ss].to(act.device, act.dtype)  # (k, pos, d_model)
                        if projected and heads is not None:  # the change after W_Q/W_K/W_V: (k, pos, d_head)
                            w = getattr(model.bridge.blocks[int(name.split(".")[1])].attn, f"W_{name[-1].upper()}")
                            d = torch.einsum("kpd,kde->kpe", d, w[heads.to(w.device)].to(act.device, act.dtype))
                        rows = js.to(act.device)
                        if heads is None:
                            add[rows] = d
                        else:
                            add[rows, :, heads.to(act.device)] = d
                        return act + add

                    return hook

                fwd = [(name, make(items, name)) for name, items in adds.items()]
                final = forward_final(model, start[ex.to(start.device)], layer, answer_pos[ex], fwd)
                vals = fn(final, answer[ex], wrong[ex], clean_logprobs[ex])
                out[torch.tensor(edges, device=model.device), ex] = (vals - base[ex]).to(out.dtype)
                return vals

            run_chunked(len(row_edge), batch_rows, run)
    return out
