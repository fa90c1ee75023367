"""Edge attribution: EAP, EAP-IG and exact edge patching over the graph of ``graph.py``.

EAP (Syed et al. 2023; Hanna et al. 2024): the change of the metric when edge u -> v is patched
is estimated as ``Σ_(batch, pos) Δ_u · ∂m/∂x_v``, where ``Δ_u`` is the change of u's output
between the runs (for a head, ``Δz @ W_O``) and ``x_v`` is v's own copy of the residual stream
(each head's q/k/v input, each MLP's input, the final residual for logits). Every edge comes
from one forward per run and one backward: the scores are a (senders x receivers) matrix
product. Grouped-query models keep their KV heads: key and value inputs are per KV head.

EAP-IG (Hanna et al. 2024, "inputs" variant): the same with the gradient averaged over ``m``
points on the straight line between the two runs' embeddings (right Riemann rule, ``α = k/m``),
all ``m`` in one batched forward/backward; it tracks exact patching much better where the metric
saturates. The "activations" variant (``eap_act.py``) interpolates each sender group's output
instead.

``exact``: each edge patched for real (``edge_exact.py``: every (edge, example) a row of batched
forwards). Gradient methods carry ``extras["check"]``: exact patching of a seeded sample of
edges and its correlation with the estimate (``honesty.py``).

All scores are the metric change caused by patching the edge (target -> source), averaged over
examples. ``direction="noise"`` (the default): target clean, source corrupt.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from interpkit.attribution._endpoints import _sender_names, sender_outputs, split_inputs, supports_split_inputs
from interpkit.attribution._norm import mlp_inputs, norm_backward
from interpkit.attribution.atp import AttributionError
from interpkit.attribution.graph import Graph, build_graph
from interpkit.metrics import get as get_metric
from interpkit.patching._api import baseline
from interpkit.patching._sources import check_mode
from interpkit.results import Result, make_provenance

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.tasks import Task


def _projected_receivers(model: Model) -> bool:
    """Whether head inputs must be reached through ``hook_q/k/v`` (no per-head input hooks).

    That is exact only for attention-only models with no norm before attention (the shipped toys),
    where the q/k/v change is the projected input change; anything else is refused.
    """
    if supports_split_inputs(model):
        return False
    if model.cfg.normalization is not None or not model.cfg.attn_only:
        raise AttributionError(
            f"{model.name}'s bridge has no per-head q/k/v input hooks (set_use_split_qkv_input is unsupported for "
            "its attention class), so edge gradients into single heads exist only for attention-only models without "
            "a norm before attention. Node-level attribution (ik.attribution.atp) and exact path patching still work."
        )
    return True


def input_gradient(model: Model, name: str, grad: torch.Tensor) -> torch.Tensor:
    """The gradient at receiver hook ``name`` as a gradient of the receivers' inputs.

    At a per-head input hook it already is; at ``attn.hook_q/k/v`` (``_projected_receivers``),
    ``q = x W_Q + b`` with no norm before it, so dm/dx for head h is ``dm/dq_h W_Q[h]^T``.
    """
    import torch

    if ".attn.hook_" not in name:
        return grad
    w = getattr(model.bridge.blocks[int(name.split(".")[1])].attn, f"W_{name[-1].upper()}")  # (head, d_model, d_head)
    return torch.einsum("bphe,hde->bphd", grad.to(w.device, w.dtype), w.detach())


def _receiver_names(model: Model, projected: bool = False) -> list[str]:
    c = model.cfg
    names = []
    for layer in range(c.n_layers):
        if projected:
            names += [f"blocks.{layer}.attn.hook_{kind}" for kind in "qkv"]
        else:
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
    mode: str | None = None,
) -> torch.Tensor:
    """∂(mean metric)/∂(each receiver's input), ``(batch, pos, n_receivers, d_model)``, graph order.

    ``embed_path`` (steps, batch, pos, d_model): run these embeddings instead of ``tokens``'
    (EAP-IG), all steps as one batch, and average the gradients over the steps.

    ``mode`` (default: the fastest one :func:`gradient_mode` found exact for this model):
    "split" reads the gradient at per-head input hooks (every head its own copy of the residual
    stream and norm: slow); "normed" reads it at ``attn.hook_q/k/v`` of one ordinary forward and
    maps it back through ``W_Q/W_K/W_V`` and the norm's own Jacobian at that row's input (exact,
    since both are per-row functions); "projected" is "normed" for models with no norm there.
    """
    import torch

    from interpkit.patching._engine import forward_final

    fn = get_metric(metric)
    mode = mode or gradient_mode(model)
    names = _receiver_names(model, mode != "split")
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
    context = {"split": split_inputs, "normed": mlp_inputs}.get(mode, lambda m: contextlib.nullcontext())
    with context(model), torch.enable_grad():
        final = forward_final(model, batch, None, task.answer_pos[idx], [*fwd, *[(name, keep) for name in names]])
        values = fn(final, task.answer[idx], task.wrong[idx], clean_logprobs[idx])
        if not values.requires_grad:
            raise AttributionError(
                f"metric {metric!r} has no gradient path to the activations; use logit_diff, logprob, prob or kl"
            )
        present = [name for name in names if model.resolve_hook(name) in kept]
        found = torch.autograd.grad(
            values.sum() / (n * steps), [kept[model.resolve_hook(name)] for name in present], allow_unused=True
        )
    grads = {model.resolve_hook(name): g.detach() for name, g in zip(present, found, strict=True) if g is not None}
    missing = [n for n in names if model.resolve_hook(n) not in grads]
    if missing:
        raise AttributionError(
            f"no gradient reached the per-head inputs {missing[:3]} of {model.name}: this architecture's bridge "
            "computes q/k/v without using its split-input hooks, so edge attribution cannot separate the receivers. "
            "Node-level attribution (ik.attribution.atp) and exact path patching still work."
        )
    parts = []
    for name in names:
        g = input_gradient(model, name, grads[model.resolve_hook(name)])  # (rows, pos, [head,] d_model)
        if mode == "normed" and ".attn.hook_" in name:
            layer = int(name.split(".")[1])
            g = norm_backward(model.bridge.blocks[layer].ln1, model.cfg.normalization, inputs[layer], g)
        g = g.reshape(steps, n, *g.shape[1:]).sum(0)
        parts.append(g if g.ndim == 4 else g[:, :, None])
    return torch.cat([p.to(model.device) for p in parts], dim=2)  # each layer's part gathered on model.device


def gradient_mode(model: Model) -> str:
    """How :func:`receiver_gradients` reaches each receiver's input on ``model`` (checked once, cached).

    "projected" for bridges without per-head input hooks (attention-only, no norm: the toys); else
    "normed" where it reproduces the "split" gradients on a random batch (to 1e-4), else "split".
    """
    import torch

    cached = getattr(model, "_interpkit_gradient_mode", None)
    if cached is not None:
        return cached
    if _projected_receivers(model):
        mode = "projected"
    elif model.cfg.normalization not in (None, "LN", "RMS"):
        mode = "split"
    else:
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
        mode = "normed" if ok else "split"
    model._interpkit_gradient_mode = mode
    return mode


EDGE_METHODS = ("eap", "eap-ig", "eap-ig-act", "exact")


def edge_scores(
    model: Model,
    task: Task,
    method: str = "eap",
    direction: str = "noise",
    *,
    ig_steps: int = 5,
    variant: str = "inputs",
    metric: str | None = None,
    check: int = 32,
    seed: int = 0,
) -> Result:
    """Score every edge of ``build_graph(model)``; ``method`` is "eap", "eap-ig", "eap-ig-act" or "exact".

    ``variant`` (EAP-IG): "inputs" interpolates the input embeddings, "activations" each sender
    group's outputs (``eap_act.py``); ``"eap-ig-act"`` is ``"eap-ig"`` with ``variant="activations"``.
    ``check``: for the gradient methods, exact patching of a seeded sample of that many edges,
    correlated with the estimate in ``extras["check"]`` (0: off).
    """
    import torch

    from interpkit.attribution.edge_exact import exact_edges
    from interpkit.attribution.honesty import CHECK_EXAMPLES, sample_indices, summary
    from interpkit.errors import unknown

    check_mode(direction, None)
    if method not in EDGE_METHODS:
        raise unknown("edge method", method, EDGE_METHODS, AttributionError)
    if method == "eap-ig-act":
        method, variant = "eap-ig", "activations"
    if variant not in ("inputs", "activations"):
        raise unknown("EAP-IG variant", variant, ("inputs", "activations"), AttributionError)
    if method == "eap-ig" and ig_steps < 1:
        raise AttributionError(f"ig_steps must be >= 1, got {ig_steps}")
    metric = metric or task.metric
    get_metric(metric)
    task = task.to(model.device)
    graph = build_graph(model)
    names = _sender_names(model)
    resid = [f"blocks.{lay}.hook_resid_pre" for lay in range(model.cfg.n_layers)]
    extra = resid if variant == "activations" and method == "eap-ig" else []
    hooks = [] if method == "exact" else [*names, *extra]
    base = baseline(model, task, metric, hooks, hooks)  # the two runs, senders captured on the way
    noise = direction == "noise"
    target = task.clean if noise else task.corrupt
    target_acts, source_acts = (
        (base["clean_acts"], base["corrupt_acts"]) if noise else (base["corrupt_acts"], base["clean_acts"])
    )
    pairs = [tuple(p) for p in graph.mask.nonzero().tolist()]
    sample = sample_indices(len(pairs), check, seed) if check else []
    examples = sample_indices(len(task), CHECK_EXAMPLES, seed)
    if method == "exact":
        matrix = torch.zeros(len(graph.senders), len(graph.receivers), device=model.device)
        change = exact_edges(model, task, graph, pairs, direction, metric, base["clean_logprobs"]).mean(-1)
        matrix[graph.mask] = change.to(matrix.dtype)
    else:
        with torch.no_grad():
            delta = sender_outputs(model, source_acts) - sender_outputs(model, target_acts)  # (b, p, S, d)
        if method == "eap-ig" and variant == "activations":
            from interpkit.attribution.eap_act import activation_ig_matrix

            matrix, checked = activation_ig_matrix(
                model, task, graph, target_acts, source_acts, delta, metric, base["clean_logprobs"], ig_steps,
                [pairs[i] for i in sample], examples,
            )  # fmt: skip
        else:
            path = None
            if method == "eap-ig":
                alphas = torch.arange(1, ig_steps + 1, device=model.device, dtype=torch.float32) / ig_steps
                e_t, e_s = target_acts["blocks.0.hook_resid_pre"], source_acts["blocks.0.hook_resid_pre"]
                path = e_t[None] + alphas[:, None, None, None].to(e_t.device, e_t.dtype) * (e_s - e_t)[None]
            grads = receiver_gradients(model, task, target, metric, base["clean_logprobs"], path)  # (b, p, R, d)
            with torch.no_grad():
                # one (senders x receivers) GEMM over batch, position and d_model, in the model's float
                # precision (float32 sums over ~1e5 products agree with float64 to ~1e-6 relative)
                dt = torch.promote_types(delta.dtype, torch.float32)
                matrix = torch.einsum("bpsd,bprd->sr", delta.to(dt), grads.to(dt)).float()
                ex = torch.tensor(examples, dtype=torch.long, device=model.device)
                ss = torch.tensor([pairs[i][0] for i in sample], dtype=torch.long, device=model.device)
                rs = torch.tensor([pairs[i][1] for i in sample], dtype=torch.long, device=model.device)
                # per-example estimates of the sampled edges (grads carry the 1/n of the mean)
                per = (delta[ex][:, :, ss].double() * grads[ex][:, :, rs].double()).sum((1, 3)) * len(task)
                checked = per.T.float()  # (edges, examples)
    scores = matrix[graph.mask]
    labels = graph.edge_labels()
    extras: dict = {"matrix": matrix.cpu()}
    if check and method != "exact":
        exact = exact_edges(
            model, task, graph, [pairs[i] for i in sample], direction, metric, base["clean_logprobs"], examples
        )
        extras["check"] = summary(checked.mean(-1), exact.mean(-1), [labels[i] for i in sample], seed, examples)
    return Result(
        scores=scores.cpu(),
        dims=("edge",),
        labels={"edge": labels},
        metric=metric,
        clean_value=float(base["clean"].mean()),
        corrupt_value=float(base["corrupt"].mean()),
        kind="edge_attribution",
        meta={
            "method": method,
            "variant": variant if method == "eap-ig" else None,
            "direction": direction,
            "level": "edge",
            "ig_steps": ig_steps if method == "eap-ig" else None,
            "ig_rule": "right (alpha = k/m)" if method == "eap-ig" else None,
            "n_senders": len(graph.senders),
            "n_receivers": len(graph.receivers),
        },
        extras=extras,
        provenance=make_provenance(model, task, seed),
    )


def exact_edge_matrix(model: Model, task: Task, graph: Graph, direction: str, metric: str) -> torch.Tensor:
    """(senders x receivers) metric change of patching each edge alone (0 where no edge).

    The slow reference (one ``path_patch`` per receiver); ``edge_exact.exact_edges`` is the fast path.
    """
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
