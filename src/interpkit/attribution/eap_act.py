"""EAP-IG, activations variant: integrated gradients along the senders' own activation path.

Hanna, Pezzelle and Belinkov 2024 ("Have Faith in Faithfulness", EAP-IG) integrate the gradient
along the straight path between the two runs' *input embeddings*; the activations variant
(Marks et al. 2024, "Sparse Feature Circuits", section 2; ``EAP-IG-activations`` in Hanna et al.'s
code) integrates along the path of the *sender activations* instead. For a sender group G (the
embedding, layer l's attention heads, layer l's MLP), G's output is set to
``out_t + α_k (out_s - out_t)`` (right Riemann rule, ``α_k = k/m``, as the ``inputs`` variant
here and the reference code use) while everything downstream is recomputed from the target run,
and the gradient at every receiver input is averaged over the m points. The score of edge
u -> v, u in G, is ``Σ_(batch, pos) Δ_u · mean_k ∂m/∂x_v`` averaged over examples, as EAP.

Cost: one batched forward/backward of ``m x batch`` rows per sender group (2L + 1 groups, each
starting at its own layer from the target run's cached residual stream), so about
``(2L+1) m / 2`` forward/backward units against the ``inputs`` variant's m.

    >>> res = ik.attribution.edge_scores(model, task, "eap-ig", variant="activations")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.attribution._endpoints import split_inputs
from interpkit.attribution.atp import grad_rows, no_gradient
from interpkit.attribution.eap import _projected_receivers, _receiver_names, input_gradient
from interpkit.metrics import get as get_metric
from interpkit.patching._engine import forward_final, run_chunked

if TYPE_CHECKING:
    import torch

    from interpkit.attribution.graph import Graph
    from interpkit.models import Model
    from interpkit.tasks import Task


def sender_groups(model: Model) -> list[tuple[str, int, list[int]]]:
    """(kind, layer, sender indices in graph order) of every group whose output is one hook."""
    c = model.cfg
    groups: list[tuple[str, int, list[int]]] = [("embed", 0, [0])]
    i = 1
    for layer in range(c.n_layers):
        groups.append(("attn", layer, list(range(i, i + c.n_heads))))
        i += c.n_heads
        if not c.attn_only:
            groups.append(("mlp", layer, [i]))
            i += 1
    return groups


def _group_hook(kind: str, layer: int) -> str:
    return {
        "embed": "blocks.0.hook_resid_pre",
        "attn": f"blocks.{layer}.attn.hook_z",
        "mlp": f"blocks.{layer}.hook_mlp_out",
    }[kind]


def activation_ig_matrix(
    model: Model,
    task: Task,
    graph: Graph,
    target_acts: dict[str, torch.Tensor],
    source_acts: dict[str, torch.Tensor],
    delta: torch.Tensor,
    metric: str,
    clean_logprobs: torch.Tensor,
    steps: int,
    pairs: Sequence[tuple[int, int]] = (),
    examples: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(senders x receivers) EAP-IG scores with each sender group's activations interpolated.

    Also returns the per-example scores ``(len(pairs), len(examples))`` of the edges ``pairs`` on
    the examples ``examples`` (what the honesty check compares with exact patching).

    ``target_acts`` / ``source_acts`` hold every group's output hook and every layer's
    ``resid_pre``; ``delta`` is ``sender_outputs(source) - sender_outputs(target)``.
    """
    import torch

    fn = get_metric(metric)
    n, n_pos = len(task), task.n_pos
    projected = _projected_receivers(model)
    names = _receiver_names(model, projected)
    widths = [len(g) for g in _receiver_slices(model, graph, names)]
    matrix = torch.zeros(len(graph.senders), len(graph.receivers), dtype=torch.float64, device=model.device)
    alphas = torch.arange(1, steps + 1, device=model.device, dtype=torch.float32) / steps
    example = torch.arange(n, device=model.device).repeat(steps)
    alpha = alphas.repeat_interleave(n)
    batch_rows = grad_rows(model, n_pos)
    ex_check = torch.tensor(list(examples), dtype=torch.long, device=model.device)
    checked = torch.zeros(len(pairs), len(ex_check), device=model.device)
    for kind, layer, senders in sender_groups(model):
        hook = model.resolve_hook(_group_hook(kind, layer))
        t, s = target_acts[hook].clone(), source_acts[hook].clone()
        start = target_acts[model.resolve_hook(f"blocks.{layer}.hook_resid_pre")].clone()
        total = torch.zeros(n, n_pos, len(graph.receivers), delta.shape[-1], device=model.device)

        def run(lo: int, hi: int, kind: str = kind, layer: int = layer, hook: str = hook, t: Any = t, s: Any = s,
                start: Any = start, total: Any = total) -> torch.Tensor:  # fmt: skip
            ex, a = example[lo:hi], alpha[lo:hi].view(-1, *[1] * (t.ndim - 1)).to(t.device, t.dtype)
            ex_t = ex.to(t.device)  # the group's activations stay on its layer's device
            point = (t[ex_t] + a * (s[ex_t] - t[ex_t])).detach()
            kept: dict[str, torch.Tensor] = {}

            def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
                kept[hook.name] = act
                return act

            fwd = [] if kind == "embed" else [(hook, lambda act, hook: point.to(act.device))]
            fwd += [(name, keep) for name in names]
            with torch.enable_grad():
                first = point.requires_grad_(True) if kind == "embed" else start[ex.to(start.device)]
                final = forward_final(model, first, layer, task.answer_pos[ex], fwd)
                values = fn(final, task.answer[ex], task.wrong[ex], clean_logprobs[ex])
                if not values.requires_grad:
                    raise no_gradient(metric)
                present = [
                    n for n in names if model.resolve_hook(n) in kept and kept[model.resolve_hook(n)].requires_grad
                ]
                grads = torch.autograd.grad(
                    values.sum(), [kept[model.resolve_hook(name)] for name in present], allow_unused=True
                )
            offset = 0
            for name, width in zip(names, widths, strict=True):
                if name in present:
                    g = grads[present.index(name)]
                    if g is not None:
                        g = input_gradient(model, name, g.detach()).float()
                        g = g if g.ndim == 4 else g[:, :, None]
                        total[:, :, offset : offset + width].index_add_(0, ex, g.to(total.device))
                offset += width
            return values.detach()

        with contextlib.nullcontext() if projected else split_inputs(model):
            run_chunked(steps * n, batch_rows, run)
        d = delta[:, :, senders].double()  # (b, p, |G|, d_model)
        matrix[senders] = torch.einsum("bpsd,bprd->sr", d, total.double()) / (n * steps)
        for k, (s_idx, r_idx) in enumerate(pairs):
            if s_idx in senders:
                per = (delta[ex_check, :, s_idx].double() * total[ex_check, :, r_idx].double()).sum((1, 2))
                checked[k] = (per / steps).float()
    return matrix.float(), checked


def _receiver_slices(model: Model, graph: Graph, names: list[str]) -> list[list[int]]:
    """Receiver indices (graph order) each receiver hook covers."""
    c = model.cfg
    out, i = [], 0
    for name in names:
        if name.endswith(("q_input", "attn.hook_q")):
            width = c.n_heads
        elif name.endswith(("k_input", "v_input", "attn.hook_k", "attn.hook_v")):
            width = c.n_kv_heads
        else:
            width = 1
        out.append(list(range(i, i + width)))
        i += width
    if i != len(graph.receivers):
        raise AssertionError(f"receiver layout mismatch: {i} hook columns for {len(graph.receivers)} receivers")
    return out
