"""Gradients of the metric with respect to every receiver's own input: what EAP and EAP-IG multiply by.

Each receiver kind of the graph names the hook where its gradient is read and maps it back to
its residual-stream input (:meth:`interpkit.graph.ReceiverKind.gradient`). The mode decides
how heads get their own input: "split" reads the gradient at per-head input copies (every head
its own copy of the residual stream and norm: slow), "normed" reads it at ``attn.hook_q/k/v`` of
one ordinary forward and maps it back through ``W_Q/W_K/W_V`` and the norm's Jacobian at that
row's input (exact, since both are per-row functions), "projected" is "normed" for models with
no norm there. :func:`gradient_mode` picks the fastest mode that agrees with "split" on the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.attribution._errors import AttributionError, no_gradient
from interpkit.graph import build_graph, mode_context, receiver_mode
from interpkit.metrics import get as get_metric
from interpkit.runtime import forward_final

if TYPE_CHECKING:
    import torch

    from interpkit.graph import Graph
    from interpkit.models import Model
    from interpkit.tasks import Task


def receiver_gradients(
    model: Model,
    task: Task,
    tokens: torch.Tensor,
    metric: str,
    clean_logprobs: torch.Tensor,
    embed_path: torch.Tensor | None = None,
    mode: str | None = None,
    graph: Graph | None = None,
) -> torch.Tensor:
    """∂(mean metric)/∂(each receiver's input), ``(batch, pos, n_receivers, d_model)``, graph order.

    ``embed_path`` (steps, batch, pos, d_model): run these embeddings instead of ``tokens``'
    (EAP-IG), all steps as one batch, and average the gradients over the steps. ``mode``:
    default :func:`gradient_mode`.
    """
    import torch

    fn = get_metric(metric)
    graph = graph or build_graph(model)
    mode = mode or gradient_mode(model)
    groups = graph.receiver_groups
    names = [g.kind.hook(model, g.layer, mode) for g in groups]
    kept: dict[str, torch.Tensor] = {}
    inputs: dict[int, torch.Tensor] = {}  # "normed": each layer's norm input, (rows, pos, d_model)

    def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
        kept[hook.name] = act  # returned, so it stays on the autograd path
        return act

    def keep_input(act: torch.Tensor, hook: Any, layer: int) -> None:
        inputs[layer] = act.detach()

    steps = 1 if embed_path is None else embed_path.shape[0]
    n = len(task)
    fwd: list[tuple[str, Any]] = []
    if embed_path is not None:
        flat = embed_path.reshape(steps * n, *embed_path.shape[2:])
        # A fresh leaf that requires grad, so gradients reach the layer-0 inputs.
        fwd = [
            ("blocks.0.hook_resid_pre", lambda act, hook: flat.to(act.device, act.dtype).clone().requires_grad_(True))
        ]
    if mode == "normed":
        fwd += [
            (f"blocks.{lay}.hook_resid_pre", lambda act, hook, lay=lay: keep_input(act, hook, lay))
            for lay in range(model.cfg.n_layers)
        ]
    batch = tokens.repeat(steps, 1)
    idx = torch.arange(n, device=tokens.device).repeat(steps)
    with mode_context(model, mode), torch.enable_grad():
        unique = list(dict.fromkeys(names))
        final = forward_final(model, batch, None, task.answer_pos[idx], [*fwd, *[(name, keep) for name in unique]])
        values = fn(final, task.answer[idx], task.wrong[idx], clean_logprobs[idx])
        if not values.requires_grad:
            raise no_gradient(metric)
        present = [name for name in unique if model.resolve_hook(name) in kept]
        found = torch.autograd.grad(
            values.sum() / (n * steps), [kept[model.resolve_hook(name)] for name in present], allow_unused=True
        )
    grads = {model.resolve_hook(name): g.detach() for name, g in zip(present, found, strict=True) if g is not None}
    missing = [name for name in unique if model.resolve_hook(name) not in grads]
    if missing:
        raise AttributionError(
            f"no gradient reached the receiver inputs {missing[:3]} of {model.name}: this architecture's bridge "
            "computes them without using these hooks, so edge attribution cannot separate the receivers. "
            "Node-level attribution (ik.attribution.atp) and exact path patching still work."
        )
    parts = []
    for g, name in zip(groups, names, strict=True):
        grad = g.kind.gradient(model, g.layer, grads[model.resolve_hook(name)], mode, inputs.get(g.layer))
        parts.append(grad.reshape(steps, n, *grad.shape[1:]).sum(0))
    return torch.cat([p.to(model.device) for p in parts], dim=2)  # each layer's part gathered on model.device


def gradient_mode(model: Model) -> str:
    """How :func:`receiver_gradients` reaches each receiver's input on ``model`` (checked once, cached).

    "projected" for bridges without per-head input hooks (attention-only, no norm: the toys); else
    "normed" where it reproduces the "split" gradients on a random batch (to 1e-4), else "split".
    """
    return model.anatomy.verdict("gradient_mode", lambda: _check_gradient_mode(model))


def _check_gradient_mode(model: Model) -> str:
    import torch

    if receiver_mode(model, AttributionError) == "projected":
        return "projected"
    from interpkit.tasks import from_token_lists

    g = torch.Generator().manual_seed(0)
    v, n_pos = model.cfg.d_vocab, min(6, model.cfg.n_ctx)
    ids = torch.randint(0, v, (4, 2, n_pos), generator=g).tolist()
    answers = torch.randint(0, v, (2, 2), generator=g).tolist()
    probe = from_token_lists("gradient-mode check", model, ids[0], ids[1], answers[0], answers[1]).to(model.device)
    lp = torch.zeros(2, v, device=model.device)
    try:
        fast = receiver_gradients(model, probe, probe.clean, "logit_diff", lp, mode="normed")
        slow = receiver_gradients(model, probe, probe.clean, "logit_diff", lp, mode="split")
        ok = bool(torch.allclose(fast, slow, atol=1e-4 * float(slow.abs().max()) + 1e-7, rtol=1e-3))
    except Exception:  # an adapter without these hooks: the per-head copies are the way
        ok = False
    return "normed" if ok else "split"
