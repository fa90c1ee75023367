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

Cost: one batched forward/backward of ``m x batch`` rows per sender group (one group per hook: 2L + 1 with the default graph, each
starting at its own layer from the target run's cached residual stream), so about
``(2L+1) m / 2`` forward/backward units against the ``inputs`` variant's m.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=4)
    >>> ik.attribution.eap_ig_act(model, task, ig_steps=2, check=0).meta["variant"]
    'activations'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.attribution._edges import finish_edges, setup_edges
from interpkit.attribution._errors import AttributionError, no_gradient
from interpkit.attribution.honesty import DEFAULT_SAMPLE
from interpkit.graph import mode_context, receiver_mode
from interpkit.metrics import get as get_metric
from interpkit.runtime import forward_final, grad_rows, run_chunked

if TYPE_CHECKING:
    import torch

    from interpkit.attribution._edges import EdgeRun
    from interpkit.graph import Graph, Group
    from interpkit.models import Model
    from interpkit.results import Result
    from interpkit.tasks import Task


def eap_ig_act(
    model: Model,
    task: Task,
    direction: str = "denoise",
    *,
    ig_steps: int = 5,
    metric: str | None = None,
    check: int | str = DEFAULT_SAMPLE,
    seed: int = 0,
    graph: Graph | None = None,
) -> Result:
    """EAP-IG scores of every edge with each sender group's activations interpolated (see the module docstring)."""
    from interpkit.attribution.eap_ig import check_steps

    check_steps(ig_steps)
    resid = [f"blocks.{lay}.hook_resid_pre" for lay in range(model.cfg.n_layers)]
    run = setup_edges(model, task, direction, metric, graph, check=check, seed=seed, extra_hooks=resid)
    matrix, per_example = activation_ig_matrix(model, run, ig_steps)
    meta = {"variant": "activations", "ig_steps": ig_steps, "ig_rule": "right (alpha = k/m)"}
    return finish_edges(model, run, matrix, "eap-ig", per_example, seed=seed, meta=meta)


def activation_ig_matrix(model: Model, run: EdgeRun, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(senders x receivers) EAP-IG scores with each sender group's activations interpolated.

    Also returns the per-example scores ``(len(run.examples), senders, receivers)`` on the check's
    examples (what the honesty check compares with exact patching).
    """
    import torch

    task, graph, delta = run.task, run.graph, run.delta
    assert delta is not None
    n, n_pos = len(task), task.n_pos
    mode = receiver_mode(model, AttributionError)
    matrix = torch.zeros(len(graph.senders), len(graph.receivers), dtype=torch.float64, device=model.device)
    alphas = torch.arange(1, steps + 1, device=model.device, dtype=torch.float32) / steps
    example = torch.arange(n, device=model.device).repeat(steps)
    alpha = alphas.repeat_interleave(n)
    ex_check = torch.tensor(list(run.examples), dtype=torch.long, device=model.device)
    per_example = torch.zeros(len(ex_check), len(graph.senders), len(graph.receivers), device=model.device)
    for group in graph.sender_groups:
        total = torch.zeros(n, n_pos, len(graph.receivers), delta.shape[-1], device=model.device)
        step = _group_step(model, run, group, mode, total, example, alpha)
        with mode_context(model, mode):
            run_chunked(steps * n, grad_rows(model, n_pos), step)
        senders = list(range(group.lo, group.hi))
        d = delta[:, :, senders].double()  # (b, p, |G|, d_model)
        matrix[senders] = torch.einsum("bpsd,bprd->sr", d, total.double()) / (n * steps)
        per = torch.einsum("bpsd,bprd->bsr", delta[ex_check][:, :, senders].double(), total[ex_check].double())
        per_example[:, senders] = (per / steps).float()
    return matrix.float(), per_example


def _group_step(
    model: Model,
    run: EdgeRun,
    group: Group,
    mode: str,
    total: torch.Tensor,
    example: torch.Tensor,
    alpha: torch.Tensor,
) -> Any:
    """``step(lo, hi)``: rows ``[lo, hi)`` of (step, example) with ``group``'s output at its point on the path,
    the receivers' input gradients added into ``total`` ``(batch, pos, n_receivers, d_model)``."""
    import torch

    task, graph = run.task, run.graph
    fn = get_metric(run.metric)
    hook = model.resolve_hook(group.kind.hook(group.layer))
    t, s = run.target_acts[hook], run.source_acts[hook]
    layer = max(group.layer, 0)
    start = run.target_acts[model.resolve_hook(f"blocks.{layer}.hook_resid_pre")]
    names = [g.kind.hook(model, g.layer, mode) for g in graph.receiver_groups]
    unique = list(dict.fromkeys(names))

    def step(lo: int, hi: int) -> torch.Tensor:
        ex, a = example[lo:hi], alpha[lo:hi].view(-1, *[1] * (t.ndim - 1)).to(t.device, t.dtype)
        ex_t = ex.to(t.device)  # the group's activations stay on its layer's device
        point = (t[ex_t] + a * (s[ex_t] - t[ex_t])).detach().requires_grad_(True)
        kept: dict[str, torch.Tensor] = {}

        def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
            kept[hook.name] = act
            return act

        fwd = [(hook, lambda act, hook: point.to(act.device)), *[(name, keep) for name in unique]]
        with torch.enable_grad():
            final = forward_final(model, start[ex.to(start.device)], layer, task.answer_pos[ex], fwd)
            values = fn(final, task.answer[ex], task.wrong[ex], run.base["clean_logprobs"][ex])
            if not values.requires_grad:
                raise no_gradient(run.metric)
            present = [n for n in unique if model.resolve_hook(n) in kept and kept[model.resolve_hook(n)].requires_grad]
            grads = torch.autograd.grad(
                values.sum(), [kept[model.resolve_hook(name)] for name in present], allow_unused=True
            )
        found = {name: g for name, g in zip(present, grads, strict=True) if g is not None}
        for g, name in zip(graph.receiver_groups, names, strict=True):
            if name in found:
                grad = g.kind.gradient(model, g.layer, found[name].detach(), mode).float()
                total[:, :, g.lo : g.hi].index_add_(0, ex, grad.to(total.device))
        return values.detach()

    return step


__all__ = ["activation_ig_matrix", "eap_ig_act"]
