"""Path patching: the effect of sender components on receiver inputs alone (Wang et al. 2022, §3).

For a sender s and receivers R, path patching asks how the metric changes when s's output
changes (base run -> source run) *only along the direct paths s -> R*: every other component is
frozen to its base-run value, so the change reaches each receiver through the residual stream
alone, and reaches the metric only through the receivers.

Because the residual stream is a sum of component outputs, freezing everything but s means the
receiver's input residual is the base residual plus the sender's output difference
``Δ_s = out_s(source) - out_s(base)`` (for a head, ``(z_source - z_base) @ W_O``). The engine
therefore:

1. computes ``Δ_s`` for a chunk of (sender, example) rows;
2. for each receiver layer, reruns that one layer from ``resid_pre + Δ_s`` (``resid_mid + Δ_s``
   for an MLP receiver) and keeps the receiver's q, k, v (or MLP output);
3. reruns the base input with only the receivers' values replaced, and reads the metric.

Receiver ``"logits"`` measures the direct path sender -> unembedding. A sender reaches a head's
input from an earlier layer only, and an MLP's input also from its own layer's attention (which
writes ``resid_mid`` before the MLP reads it), except in a model with parallel attention and MLP
(``model.cfg.parallel_attn_mlp``: GPT-NeoX, GPT-J), whose MLP reads the block's input. Senders
with no path to any receiver score the base value. Directions follow ``ik.patch``: "noise" =
base clean, source corrupt; "denoise" (the default) = base corrupt, source clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.distributed import combine, join
from interpkit.errors import PatchingError, SiteError
from interpkit.metrics import get as get_metric
from interpkit.models.anatomy import tail
from interpkit.results import Result, make_provenance
from interpkit.runtime import (
    baseline,
    capture_from,
    check_mode,
    component_mask,
    default_direction,
    final_hook,
    forward_final,
    masked_patch_hook,
    sweep,
)
from interpkit.sites import Site, all_sites, validate

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.tasks import Task

SENDER_KINDS = ("z", "attn_out", "mlp_out", "embed")
RECEIVER_KINDS = ("q", "k", "v", "kv_k", "kv_v", "mlp_out")


def _senders(
    model: Model, senders: str | Sequence[str]
) -> tuple[list[Site], tuple[str, ...], dict[str, list[str]], tuple[int, ...]]:
    c = model.cfg
    if senders == "heads":
        sites = all_sites(model, "z")
        return (
            sites,
            ("layer", "head"),
            {"layer": [f"L{i}" for i in range(c.n_layers)], "head": [f"H{h}" for h in range(c.n_heads)]},
            (c.n_layers, c.n_heads),
        )
    if senders == "mlps":
        sites = all_sites(model, "mlp_out")
        return sites, ("layer",), {"layer": [f"L{s.layer}" for s in sites]}, (len(sites),)
    if isinstance(senders, str):
        senders = [senders]
    sites = [validate(s, model) for s in senders]
    bad = [s.label for s in sites if s.kind not in SENDER_KINDS]
    if bad:
        raise SiteError(f"senders {bad} are not component outputs; senders are heads (L3H5), L3.attn, L3.mlp or embed")
    return sites, ("sender",), {"sender": [s.label for s in sites]}, (len(sites),)


def _receivers(model: Model, receivers: Sequence[str]) -> list[Site]:
    if isinstance(receivers, str):
        receivers = [receivers]
    if not receivers:
        raise SiteError("path patching needs at least one receiver (e.g. 'L9H6.q', 'L10.mlp' or 'logits')")
    if list(receivers) == ["logits"]:
        return [Site("logits")]
    sites = [validate(r, model) for r in receivers]
    bad = [s.label for s in sites if s.kind not in RECEIVER_KINDS]
    if bad:
        raise SiteError(
            f"receivers {bad} are not component inputs; use head inputs (L9H6.q, .k, .v, L9KV1.k) or MLPs (L9.mlp), or 'logits' alone"
        )
    return sites


def _sender_deltas(
    model: Model,
    senders: list[Site],
    sender_of_row: list[int],
    base: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    ex: torch.Tensor,
) -> torch.Tensor:
    """Output difference ``(rows, pos, d_model)`` each row's sender writes to the residual stream.

    One batched op per sender hook point (a head's ``(z_source - z_base) @ W_O``), not per row.
    """
    import torch

    by_hook: dict[str, list[int]] = {}
    for j, i in enumerate(sender_of_row):
        by_hook.setdefault(model.resolve_hook(senders[i].hook), []).append(j)
    out: torch.Tensor | None = None
    for name, rows in by_hook.items():
        idx = torch.tensor(rows, device=ex.device)
        at = ex[idx].to(source[name].device)  # each sender's activations stay on its layer's device
        diff = source[name][at] - base[name][at]
        first = senders[sender_of_row[rows[0]]]
        if first.kind == "z":
            w_o = model.bridge.blocks[first.layer].attn.W_O
            heads = torch.tensor([senders[sender_of_row[j]].head for j in rows], device=w_o.device)
            z = diff[torch.arange(len(rows), device=diff.device), :, heads.to(diff.device)]  # (rows, pos, d_head)
            diff = torch.bmm(z.to(w_o.device, w_o.dtype), w_o[heads])  # w_o[heads]: (rows, d_head, d_model)
        if out is None:  # gathered on the examples' device (model.device)
            out = torch.zeros((len(sender_of_row), *diff.shape[1:]), dtype=diff.dtype, device=ex.device)
        out[idx] = diff.to(out.device, out.dtype)
    assert out is not None
    return out


def path_patch(
    model: Model,
    task: Task,
    receivers: Sequence[str],
    senders: str | Sequence[str] = "heads",
    direction: str | None = None,
    *,
    batch_size: int | None = None,
    metric: str | None = None,
    seed: int = 0,
    distributed: bool | None = None,
) -> Result:
    """Metric when each sender's change reaches only ``receivers`` (everything else frozen).

    ``batch_size``: (sender, example) rows per forward, default from free memory, halved on
    out-of-memory; under ``torchrun`` the rows are shared between ranks (see ``ik.patch``).

    >>> res = ik.patching.path_patch(model, task, receivers=["L1H0.k", "L1H0.v"], senders="heads")  # doctest: +SKIP
    """
    import torch

    direction = default_direction(direction, "path_patch", was="noise")
    check_mode(direction, None)
    _check_additive(model)
    metric = metric or task.metric
    fn = get_metric(metric)
    task = task.to(model.device)
    sender_sites, dims, labels, shape = _senders(model, senders)
    receiver_sites = _receivers(model, receivers)
    to_logits = receiver_sites[0].kind == "logits"
    recv_layers = sorted({r.layer for r in receiver_sites}) if not to_logits else [model.cfg.n_layers]

    ref, base_acts, source_acts = _runs(model, task, metric, direction, sender_sites, receiver_sites, recv_layers)
    base_value = ref["clean"] if direction == "noise" else ref["corrupt"]
    n_ex = len(task)
    values = base_value[None].repeat(len(sender_sites), 1).to(model.device)
    live = [i for i, s in enumerate(sender_sites) if any(_reaches(model, s, r) for r in receiver_sites)]
    rows = [(i, b) for i in live for b in range(n_ex)]

    def run(start: int, stop: int) -> torch.Tensor:
        chunk = rows[start:stop]
        ex = torch.tensor([b for _, b in chunk], device=model.device)
        deltas = _sender_deltas(model, sender_sites, [i for i, _ in chunk], base_acts, source_acts, ex)
        if to_logits:
            last = base_acts[model.resolve_hook(final_hook(model))]  # on the last block's device
            pos = task.answer_pos[ex]
            delta = deltas[torch.arange(len(chunk), device=deltas.device), pos]
            final = tail(model.bridge, last[ex.to(last.device), pos.to(last.device)] + delta.to(last.device))
        else:
            senders = [sender_sites[i] for i, _ in chunk]
            patches = _receiver_values(model, receiver_sites, base_acts, deltas, senders, ex)
            resid0 = base_acts[model.resolve_hook(f"blocks.{recv_layers[0]}.hook_resid_pre")]
            final = forward_final(model, resid0[ex.to(resid0.device)], recv_layers[0], task.answer_pos[ex], patches)
        vals = fn(final.to(model.device), task.answer[ex], task.wrong[ex], ref["clean_logprobs"][ex])
        out[torch.tensor([i for i, _ in chunk], device=model.device), ex] = vals.to(out.dtype)
        return vals

    group = join(model, distributed, error=PatchingError)
    try:
        out = torch.zeros_like(values) if group.active else values
        with torch.inference_mode():
            sweep(
                len(rows), lambda _, a, b: run(a, b), model=model, n_pos=task.n_pos, batch_size=batch_size, group=group
            )
            if group.active:
                live_rows = torch.tensor(live, dtype=torch.long, device=model.device)
                values[live_rows] = combine(group, out)[live_rows]
    finally:
        group.close()
    per_example = values.reshape(*shape, n_ex).cpu()
    meta = {
        "receivers": [r.label for r in receiver_sites],
        "direction": direction,
        "senders": [s.label for s in sender_sites],
    }
    return Result(
        per_example.mean(-1), dims, labels, metric, float(ref["clean"].mean()), float(ref["corrupt"].mean()),
        "path_patch", meta, {"per_example": per_example}, make_provenance(model, task, seed),
    )  # fmt: skip


def _check_additive(model: Model) -> None:
    if model.anatomy.post_norms:
        raise PatchingError(
            f"path patching adds each sender's output change to its receivers' inputs, but {model.name} normalises "
            "attention and MLP outputs before adding them to the residual stream (Gemma 2, OLMo2), so a sender's "
            "change there is not its own output change; use ik.patch (activation patching) instead"
        )


def _runs(
    model: Model,
    task: Task,
    metric: str,
    direction: str,
    senders: list[Site],
    receivers: list[Site],
    recv_layers: list[int],
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The baseline, with what path patching needs captured on the way: in the base run the senders,
    the receivers' layer inputs (and ``resid_mid`` for MLP receivers) and the final residual; in the
    source run the senders."""
    sender_hooks = {model.resolve_hook(s.hook) for s in senders}
    names = set(sender_hooks) | {
        model.resolve_hook(f"blocks.{lay}.hook_resid_pre") for lay in recv_layers if lay < model.cfg.n_layers
    }
    if not model.cfg.parallel_attn_mlp:
        names |= {model.resolve_hook(f"blocks.{r.layer}.hook_resid_mid") for r in receivers if r.kind == "mlp_out"}
    names.add(model.resolve_hook(final_hook(model)))
    noise = direction == "noise"
    base_hooks, source_hooks = sorted(names), sorted(sender_hooks)
    ref = baseline(model, task, metric, *((base_hooks, source_hooks) if noise else (source_hooks, base_hooks)))
    base_acts, source_acts = (
        (ref["clean_acts"], ref["corrupt_acts"]) if noise else (ref["corrupt_acts"], ref["clean_acts"])
    )
    return ref, base_acts, source_acts


def _receiver_values(
    model: Model,
    receivers: list[Site],
    base_acts: dict[str, torch.Tensor],
    deltas: torch.Tensor,
    senders: list[Site],
    ex: torch.Tensor,
) -> list[tuple[str, Any]]:
    """Hooks that write each receiver's input-patched value (step 2 of the module docstring); ``senders`` per row."""
    import torch

    sender_layer = torch.tensor([s.layer if s.kind != "embed" else -1 for s in senders], device=deltas.device)
    attention = torch.tensor([s.kind in ("z", "attn_out") for s in senders], device=deltas.device)
    parallel = model.cfg.parallel_attn_mlp
    patches: list[tuple[str, Any]] = []
    for layer in sorted({r.layer for r in receivers}):
        group = [r for r in receivers if r.layer == layer]
        # Senders strictly before this layer reach its attention (and a parallel block's MLP) ...
        delta = deltas * (sender_layer < layer).to(deltas.dtype)[:, None, None]
        # ... and this layer's attention also reaches a sequential block's MLP, through resid_mid.
        to_mlp = (sender_layer < layer) | ((sender_layer == layer) & attention)
        mid_delta = deltas * to_mlp.to(deltas.dtype)[:, None, None]
        wanted = sorted({model.resolve_hook(r.hook) for r in group})
        fwd: list[tuple[str, Any]] = []
        pre = base_acts[model.resolve_hook(f"blocks.{layer}.hook_resid_pre")]
        start = pre[ex.to(pre.device)]
        if any(r.kind == "mlp_out" for r in group) and not parallel:
            mid_name = model.resolve_hook(f"blocks.{layer}.hook_resid_mid")
            mid = base_acts[mid_name]
            frozen_mid = mid[ex.to(mid.device)] + mid_delta.to(mid.device)
            fwd.append((mid_name, lambda act, hook, v=frozen_mid: v.to(act.device)))
        if parallel or any(r.kind != "mlp_out" for r in group):
            start = start + delta.to(start.device)
        kept = capture_from(model, start, layer, wanted, fwd)
        for r in group:
            name = model.resolve_hook(r.hook)
            value = kept[name]
            mask = component_mask(r, value.shape, model.cfg.group_size, value.device)
            patches.append((name, masked_patch_hook(lambda s, d, m=mask: m, value)))
    return _merge_same_hook(patches)


def _reaches(model: Model, sender: Site, receiver: Site) -> bool:
    """Whether ``sender``'s output reaches ``receiver``'s input through the residual stream."""
    if receiver.kind == "logits":
        return True
    layer = sender.layer if sender.kind != "embed" else -1
    if layer < receiver.layer:
        return True
    same_block_mlp = receiver.kind == "mlp_out" and not model.cfg.parallel_attn_mlp
    return same_block_mlp and layer == receiver.layer and sender.kind in ("z", "attn_out")


def _merge_same_hook(patches: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    # Two receivers on one hook point (L9H6.q and L9H9.q) become one hook applying both in turn.
    merged: dict[str, list[Any]] = {}
    for name, fn in patches:
        merged.setdefault(name, []).append(fn)

    def chain(fns: list[Any]) -> Any:
        def hook(act: Any, hook: Any) -> Any:
            for f in fns:
                act = f(act, hook)
            return act

        return hook

    return [(name, chain(fns)) for name, fns in merged.items()]
