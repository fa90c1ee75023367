"""Edge attribution: EAP, EAP-IG and exact edge patching over the graph of ``graph.py``.

EAP (Syed et al. 2023; Hanna et al. 2024): the change of the metric when edge u -> v is patched
is estimated as ``Σ_(batch, pos) Δ_u · ∂m/∂x_v``, where ``Δ_u`` is the change of u's output
between the runs (for a head, ``Δz @ W_O``) and ``x_v`` is v's own copy of the residual stream
(each head's q/k/v input, each MLP's input, the final residual for logits). Every edge comes
from one forward per run and one backward: the scores are a (senders x receivers) matrix
product. Grouped-query models keep their KV heads: key and value inputs are per KV head.

EAP-IG (Hanna et al. 2024, "inputs" variant): the same with the gradient averaged over ``m``
points on the straight line between the two runs' embeddings, all ``m`` in one batched
forward/backward; it tracks exact patching much better where the metric saturates.

``exact``: each edge patched for real, one receiver at a time, batched over its senders, with
everything else frozen (it is path patching with a single receiver, see ``patching._path``).

All scores are the metric change caused by patching the edge (target -> source), averaged over
examples. ``direction="noise"`` (the default): target clean, source corrupt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from interpkit.attribution.atp import AttributionError
from interpkit.attribution.graph import Graph, build_graph
from interpkit.hooks import hooks
from interpkit.metrics import get as get_metric
from interpkit.patching._api import baseline
from interpkit.patching._engine import capture
from interpkit.patching._sources import check_mode
from interpkit.results import Result, make_provenance

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.tasks import Task


@contextlib.contextmanager
def split_inputs(model: Model) -> Iterator[None]:
    """Give every head its own copy of its q/k/v input and every MLP its own input, then restore."""
    bridge = model.bridge
    before = (
        bool(getattr(bridge.cfg, "use_split_qkv_input", False)),
        bool(getattr(bridge.cfg, "use_hook_mlp_in", False)),
    )
    bridge.set_use_split_qkv_input(True)
    bridge.set_use_hook_mlp_in(True)
    model.refresh_hooks()  # some adapters (GPT-2's fused qkv) create hook points when the flag is set
    try:
        yield
    finally:
        bridge.set_use_split_qkv_input(before[0])
        bridge.set_use_hook_mlp_in(before[1])
        model.refresh_hooks()


def _sender_names(model: Model) -> list[str]:
    c = model.cfg
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(c.n_layers):
        names.append(f"blocks.{layer}.attn.hook_z")
        if not c.attn_only:
            names.append(f"blocks.{layer}.hook_mlp_out")
    return names


def sender_outputs(model: Model, acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each sender's output in the residual stream, ``(batch, pos, n_senders, d_model)``, graph order."""
    import torch

    c = model.cfg
    parts = [acts["blocks.0.hook_resid_pre"][:, :, None]]  # embed (+ positions where learned)
    for layer in range(c.n_layers):
        w_o = model.bridge.blocks[layer].attn.W_O  # (head, d_head, d_model)
        z = acts[f"blocks.{layer}.attn.hook_z"]
        parts.append(torch.einsum("bphd,hdm->bphm", z.to(w_o.dtype), w_o))
        if not c.attn_only:
            parts.append(acts[f"blocks.{layer}.hook_mlp_out"][:, :, None])
    return torch.cat(parts, dim=2)


def _receiver_names(model: Model) -> list[str]:
    c = model.cfg
    names = []
    for layer in range(c.n_layers):
        names += [f"blocks.{layer}.hook_q_input", f"blocks.{layer}.hook_k_input", f"blocks.{layer}.hook_v_input"]
        if not c.attn_only:
            names.append(f"blocks.{layer}.hook_mlp_in")
    return [*names, f"blocks.{c.n_layers - 1}.hook_resid_post"]


def receiver_gradients(
    model: Model,
    task: Task,
    tokens: torch.Tensor,
    metric: str,
    clean_logprobs: torch.Tensor,
    embed_path: torch.Tensor | None = None,
) -> torch.Tensor:
    """∂(mean metric)/∂(each receiver's input), ``(batch, pos, n_receivers, d_model)``, graph order.

    ``embed_path`` (steps, batch, pos, d_model): run these embeddings instead of ``tokens``'
    (EAP-IG), all steps as one batch, and average the gradients over the steps.
    """
    import torch

    fn = get_metric(metric)
    names = _receiver_names(model)
    grads: dict[str, torch.Tensor] = {}

    def keep(grad: torch.Tensor, name: str) -> None:
        grads[name] = grad.detach()

    steps = 1 if embed_path is None else embed_path.shape[0]
    n = len(task)
    fwd = []
    if embed_path is not None:
        flat = embed_path.reshape(steps * n, *embed_path.shape[2:])
        # A fresh leaf that requires grad, so gradients reach the layer-0 inputs.
        fwd = [("blocks.0.hook_resid_pre", lambda act, hook: flat.to(act.dtype).clone().requires_grad_(True))]
    batch = tokens.repeat(steps, 1)
    idx = torch.arange(n, device=tokens.device).repeat(steps)
    with split_inputs(model), torch.enable_grad(), hooks(model, fwd=fwd, grad=[(name, keep) for name in names]):
        logits = model.bridge(batch)
        rows = torch.arange(len(batch), device=logits.device)
        values = fn(logits[rows, task.answer_pos[idx]], task.answer[idx], task.wrong[idx], clean_logprobs[idx])
        if not values.requires_grad:
            raise AttributionError(
                f"metric {metric!r} has no gradient path to the activations; use logit_diff, logprob, prob or kl"
            )
        (values.sum() / (n * steps)).backward()
    model.bridge.zero_grad(set_to_none=True)
    missing = [n for n in names if model.resolve_hook(n) not in grads]
    if missing:
        raise AttributionError(
            f"no gradient reached the per-head inputs {missing[:3]} of {model.name}: this architecture's bridge "
            "computes q/k/v without using its split-input hooks, so edge attribution cannot separate the receivers. "
            "Node-level attribution (ik.attribution.atp) and exact path patching still work."
        )
    parts = []
    for name in names:
        g = grads[model.resolve_hook(name)].reshape(steps, n, *grads[model.resolve_hook(name)].shape[1:]).sum(0)
        parts.append(g if g.ndim == 4 else g[:, :, None])
    return torch.cat(parts, dim=2)


def edge_scores(
    model: Model,
    task: Task,
    method: str = "eap",
    direction: str = "noise",
    *,
    ig_steps: int = 5,
    metric: str | None = None,
    seed: int = 0,
) -> Result:
    """Score every edge of ``build_graph(model)``; ``method`` is "eap", "eap-ig" or "exact"."""
    import torch

    check_mode(direction, None)
    if method not in ("eap", "eap-ig", "exact"):
        from interpkit.errors import unknown

        raise unknown("edge method", method, ("eap", "eap-ig", "exact"), AttributionError)
    metric = metric or task.metric
    task = task.to(model.device)
    graph = build_graph(model)
    base = baseline(model, task, metric)
    target, source = (task.clean, task.corrupt) if direction == "noise" else (task.corrupt, task.clean)
    if method == "exact":
        matrix = exact_edge_matrix(model, task, graph, direction, metric)
    else:
        names = _sender_names(model)
        target_acts, _ = capture(model, target, names)
        source_acts, _ = capture(model, source, names)
        with torch.no_grad():
            delta = sender_outputs(model, source_acts) - sender_outputs(model, target_acts)  # (b, p, S, d)
        path = None
        if method == "eap-ig":
            if ig_steps < 1:
                raise AttributionError(f"ig_steps must be >= 1, got {ig_steps}")
            alphas = torch.arange(1, ig_steps + 1, device=model.device, dtype=torch.float32) / ig_steps
            e_t, e_s = target_acts["blocks.0.hook_resid_pre"], source_acts["blocks.0.hook_resid_pre"]
            path = e_t[None] + alphas[:, None, None, None].to(e_t.dtype) * (e_s - e_t)[None]
        grads = receiver_gradients(model, task, target, metric, base["clean_logprobs"], path)  # (b, p, R, d)
        with torch.no_grad():
            b, p = delta.shape[:2]
            matrix = delta.reshape(b * p, delta.shape[2], -1).transpose(0, 1).reshape(delta.shape[2], -1).double()
            matrix = (
                matrix @ grads.reshape(b * p, grads.shape[2], -1).transpose(0, 1).reshape(grads.shape[2], -1).double().T
            )
            matrix = matrix.float()
    scores = matrix[graph.mask]
    return Result(
        scores=scores.cpu(),
        dims=("edge",),
        labels={"edge": graph.edge_labels()},
        metric=metric,
        clean_value=float(base["clean"].mean()),
        corrupt_value=float(base["corrupt"].mean()),
        kind="edge_attribution",
        meta={
            "method": method,
            "direction": direction,
            "level": "edge",
            "ig_steps": ig_steps if method == "eap-ig" else None,
            "n_senders": len(graph.senders),
            "n_receivers": len(graph.receivers),
        },
        extras={"matrix": matrix.cpu()},
        provenance=make_provenance(model, task, seed),
    )


def exact_edge_matrix(model: Model, task: Task, graph: Graph, direction: str, metric: str) -> torch.Tensor:
    """(senders x receivers) metric change of patching each edge alone (0 where no edge)."""
    import torch

    from interpkit.patching._path import path_patch

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
