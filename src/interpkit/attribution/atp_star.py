"""AtP*: attribution patching with the attention softmax recomputed and GradDrop.

Kramár, Lieberum, Shah and Nanda 2024, "AtP*: An efficient and scalable method for localizing
LLM behaviour to components" (arXiv:2403.00745), section 3.1. Two fixes to AtP (``atp.py``):

**QK fix** (section 3.1.1). A query or key patch moves the attention logits, and the softmax
turns that into a pattern change; AtP linearises straight through the softmax and misses the
effect where attention saturates (its gradient there is ~0). AtP* computes the new pattern
*exactly* and linearises only from the pattern on:

    ĉ(q_s)   = Σ_t  (softmax(q'_s K^T)_t - A_st) ∂m/∂A_st                 (one query row)
    ĉ(k_t)   = Σ_s Σ_u (A'(t)_su - A_su) ∂m/∂A_su                          (column t, every query)

With one key logit moved by Δ_st, the new row is ``A'_su = A_su e^{-c}`` (u ≠ t) and
``A'_st = A_st e^{Δ-c}`` with ``c = log(1 - A_st + A_st e^Δ)``, so every key position of every
head costs O(pos²) in one batched tensor expression (the paper's fast key fix), computed here
in log space and float64. Sites ``head_q`` and ``head_k`` use it (per position or the whole head;
grouped-query KV heads sum over the query heads they serve). Logits are recomputed from the
cached (rotary-applied) queries and keys and checked against the model's own pattern, so an
attention variant this code does not model fails loudly. ``head_out`` (``hook_z``) lies after
the softmax: AtP there already uses the exact ``Δz`` of the head's own pattern, so the QK fix
does not apply and AtP* is AtP plus GradDrop; likewise ``head_v``, ``head_pattern``, MLP and
residual sites.

**GradDrop** (section 3.1.2). Cancelling paths make AtP's single gradient near zero while the
true effect is not. For each layer l the gradient is recomputed with the backward pass blocked
through layer l's writes to the residual stream (``hook_attn_out``, ``hook_mlp_out`` detached),
giving ``ĉ_l``; the GradDrop score is ``1/(L-1) Σ_l |ĉ_l|``. For a head or MLP in layer k,
dropping layers below k changes nothing and dropping k itself gives 0, so without cancellation
the score is ``|ĉ|``. All L drops run as one batched forward/backward (rows = drop x example,
chunked). GradDrop scores are magnitudes (``extras["graddrop"]``, metric units, no sign); the
signed QK-fixed estimate is ``scores``, in ``ik.patch`` units.

    >>> res = ik.attribution.atp_star(model, task, site="head_k", per_position=True)  # doctest: +SKIP
    >>> res.extras["graddrop"].shape == res.scores.shape                             # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.attribution.atp import (
    AttributionError,
    NodeRun,
    finish,
    grad_rows,
    linear_estimate,
    no_gradient,
    setup,
)
from interpkit.attribution.honesty import DEFAULT_SAMPLE, spearman
from interpkit.metrics import get as get_metric
from interpkit.runtime import forward_final

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.results import Result
    from interpkit.tasks import Task

QK_KINDS = ("q", "kv_k")


def _qk_names(model: Model, layer: int) -> tuple[str, str, str]:
    """Hook names of the (rotary-applied where the model has rotary) queries, keys and pattern."""
    rot = f"blocks.{layer}.attn.hook_rot_q" in model.bridge.hook_dict
    q = f"blocks.{layer}.attn.hook_rot_q" if rot else f"blocks.{layer}.attn.hook_q"
    k = f"blocks.{layer}.attn.hook_rot_k" if rot else f"blocks.{layer}.attn.hook_k"
    return model.resolve_hook(q), model.resolve_hook(k), model.resolve_hook(f"blocks.{layer}.attn.hook_pattern")


def drop_gradients(
    model: Model, run: NodeRun, names: Sequence[str], drops: Sequence[int | None]
) -> dict[str, torch.Tensor]:
    """Gradients of the summed metric at ``names`` on the target run, one copy per entry of ``drops``.

    ``drops[d]`` is a layer whose residual writes are detached in copy d (None: the plain
    gradient). Returns ``{name: (len(drops), batch, ...)}``; all copies share batched forwards.
    """
    import torch

    task, n = run.task, len(run.task)
    fn = get_metric(run.metric)
    c = model.cfg
    per_chunk = max(1, grad_rows(model, task.n_pos) // n)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for start in range(0, len(drops), per_chunk):
        chunk = list(drops[start : start + per_chunk])
        kept: dict[str, torch.Tensor] = {}
        keep = _keeper(kept)
        fwd: list[tuple[str, Any]] = []
        for layer in sorted({d for d in chunk if d is not None}):
            block = torch.tensor([d == layer for d in chunk], device=model.device).repeat_interleave(n)

            def cut(act: torch.Tensor, hook: Any, block: torch.Tensor = block) -> torch.Tensor:
                return torch.where(block.to(act.device).view(-1, *[1] * (act.ndim - 1)), act.detach(), act)

            fwd.append((f"blocks.{layer}.hook_attn_out", cut))
            if not c.attn_only:
                fwd.append((f"blocks.{layer}.hook_mlp_out", cut))
        idx = torch.arange(n, device=model.device).repeat(len(chunk))
        fwd_all = [*fwd, *[(name, keep) for name in names]]
        with torch.enable_grad():
            final = forward_final(model, run.target.repeat(len(chunk), 1), None, task.answer_pos[idx], fwd_all)
            values = fn(final, task.answer[idx], task.wrong[idx], run.base["clean_logprobs"][idx])
            if not values.requires_grad:
                raise no_gradient(run.metric)
            grads = torch.autograd.grad(values.sum(), [kept[name] for name in names], allow_unused=True)
        for name, g in zip(names, grads, strict=True):
            g = torch.zeros_like(kept[name]) if g is None else g.detach()
            out[name].append(g.reshape(len(chunk), n, *g.shape[1:]))
    return {name: torch.cat(parts) for name, parts in out.items()}


def _keeper(store: dict[str, torch.Tensor]) -> Any:
    """A forward hook that keeps each activation (on the autograd path) and passes it on."""

    def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
        store[hook.name] = act
        return act

    return keep


def _logits(q: torch.Tensor, k: torch.Tensor, group: int, scale: float) -> torch.Tensor:
    """Masked attention logits ``(batch, head, q_pos, k_pos)`` from ``(batch, pos, head|kv, d_head)``."""
    import torch

    k = k.repeat_interleave(group, dim=2)
    scores = torch.einsum("bshd,bthd->bhst", q, k) * scale
    n_pos = q.shape[1]
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~causal, float("-inf"))


def qk_fixed(model: Model, run: NodeRun, layer: int, grad_pattern: torch.Tensor) -> torch.Tensor:
    """Exact-softmax contributions of the site's queries or keys of ``layer``.

    ``grad_pattern``: ``(drops, batch, head, q_pos, k_pos)``. Returns ``(drops, batch, head|kv, pos)``
    for per-position plans (query position for q, key position for k) or ``(drops, batch, head|kv, 1)``
    for whole-head patches.
    """
    import torch

    c = model.cfg
    q_name, k_name, p_name = _qk_names(model, layer)
    qt, qs = run.target_acts[q_name].double(), run.source_acts[q_name].double()
    kt, ks = run.target_acts[k_name].double(), run.source_acts[k_name].double()
    pattern = run.target_acts[p_name].double()
    group = qt.shape[2] // kt.shape[2]
    scale = 1.0 / math.sqrt(qt.shape[-1])
    base = _logits(qt, kt, group, scale)
    if not torch.allclose(base.softmax(-1), pattern, atol=1e-4):
        raise AttributionError(
            f"atp*: the QK fix cannot reproduce layer {layer}'s attention pattern of {model.name} from its queries "
            "and keys (scaled dot product, causal mask); this attention variant is not supported. Use atp."
        )
    g = grad_pattern.double()
    per_position = run.plan.pos is not None
    if run.plan.kind == "q":
        new = _logits(qs, kt, group, scale).softmax(-1)
        rows = ((new - pattern)[None] * g).sum(-1)  # (drops, b, head, q_pos)
        return rows if per_position else rows.sum(-1, keepdim=True)
    if not per_position:  # every key of the KV head at once
        new = _logits(qt, ks, group, scale).softmax(-1)
        heads = ((new - pattern)[None] * g).sum((-1, -2))  # (drops, b, head)
        return heads.reshape(*heads.shape[:2], c.n_kv_heads, group).sum(-1)[..., None]
    log_a = base.log_softmax(-1)
    delta = _logits(qt, ks - kt, group, scale).nan_to_num(neginf=0.0)  # logit change of key t at query s
    lse = torch.logaddexp(torch.log1p(-pattern.clamp(max=1.0)), log_a + delta)  # log of the new normaliser
    row = (pattern[None] * g).sum(-1, keepdim=True)  # (drops, b, head, q_pos, 1)
    change = (torch.exp(-lse) - 1)[None] * row + (torch.exp(log_a + delta - lse) - pattern * torch.exp(-lse))[None] * g
    keys = change.sum(-2)  # sum over queries: (drops, b, head, k_pos)
    return keys.reshape(keys.shape[0], keys.shape[1], c.n_kv_heads, group, -1).sum(3)


def _estimates(model: Model, run: NodeRun, grads: dict[str, torch.Tensor], n_drops: int) -> torch.Tensor:
    """Estimated metric change per drop, plan entry and example: ``(drops, len(plan), batch)``."""
    import torch

    plan, n = run.plan, len(run.task)
    if plan.kind not in QK_KINDS:
        return torch.stack(
            [linear_estimate(model, run, {name: grads[name][d] for name in run.names}) for d in range(n_drops)]
        )
    out = torch.empty(n_drops, len(plan), n, device=model.device)
    for layer in run.layers:
        ids = [i for i, pl in enumerate(plan.layer) if pl == layer]
        contrib = qk_fixed(model, run, layer, grads[_qk_names(model, layer)[2]])  # on the layer's device
        heads = torch.tensor([plan.head[i] for i in ids], device=contrib.device)
        pos = torch.tensor(
            [plan.pos[i] for i in ids] if plan.pos is not None else [0] * len(ids), device=contrib.device
        )
        out[:, ids] = contrib[:, :, heads, pos].transpose(1, 2).to(out.device, out.dtype)
    return out


def atp_star(
    model: Model,
    task: Task,
    site: str = "head_out",
    per_position: bool = False,
    direction: str = "denoise",
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    latents: Sequence[int] | None = None,
    metric: str | None = None,
    graddrop: bool = True,
    check: int | str = DEFAULT_SAMPLE,
    seed: int = 0,
) -> Result:
    """AtP* estimate of ``ik.patch(model, task, site, per_position, direction)``.

    ``scores``: AtP with the QK fix (sites ``head_q``, ``head_k``), in ``ik.patch`` units.
    ``graddrop``: also compute the GradDrop magnitudes ``extras["graddrop"]`` (L extra gradient
    copies in batched passes). ``check``: sample size of the exact-patching check (0: off).
    """
    import torch

    c = model.cfg
    extra: list[str] = []
    if site in ("head_q", "head_k"):  # bad layers are reported by the plan, so only valid ones here
        site_layers = [lay for lay in (range(c.n_layers) if layers is None else layers) if 0 <= lay < c.n_layers]
        extra = [name for lay in site_layers for name in _qk_names(model, lay)]
    run = setup(
        model, task, site, per_position, direction, layers, positions, metric, extra, check=check, latents=latents
    )
    names = [_qk_names(model, lay)[2] for lay in run.layers] if run.plan.kind in QK_KINDS else run.names
    drops: list[int | None] = [None]
    if graddrop:
        drops += list(range(c.n_layers))
    grads = drop_gradients(model, run, names, drops)
    with torch.no_grad():
        changes = _estimates(model, run, grads, len(drops))
    target_values = _target_values(model, run)
    estimate = changes[0] + target_values[None]
    extras: dict[str, Any] = {}
    meta: dict[str, Any] = {"qk_fix": run.plan.kind in QK_KINDS, "graddrop": graddrop}
    if graddrop:
        magnitude = changes[1:].abs().sum(0) / max(c.n_layers - 1, 1)  # (len(plan), batch)
        per_example = magnitude.reshape(*run.plan.shape, len(run.task)).cpu()
        extras = {"graddrop": per_example.mean(-1), "graddrop_per_example": per_example}
        meta["graddrop_normaliser"] = f"1/(L-1) = 1/{max(c.n_layers - 1, 1)}"
    result = finish(model, run, estimate, "atp*", check, seed, meta, extras)
    if graddrop and "check" in result.extras:
        chk = result.extras["check"]
        idx = [run.plan.component_labels().index(label) for label in chk["labels"]]
        examples = chk["examples"]
        per_example = result.extras["graddrop_per_example"].reshape(len(run.plan), -1)
        magnitude = per_example[idx][:, examples].mean(-1)
        exact_change = chk["exact"] - float(target_values[examples].mean())
        chk["spearman_graddrop_vs_abs_exact"] = spearman(magnitude, exact_change.abs())
    return result


def _target_values(model: Model, run: NodeRun) -> torch.Tensor:
    """Per-example metric of the target run (the value every estimate starts from)."""
    return run.base["corrupt" if run.direction == "denoise" else "clean"].to(model.device).float()
