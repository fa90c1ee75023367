"""What a patching sweep patches: one entry per patch, with its layer, head and positions.

A sweep over a site kind (``resid_pre``, ``head_out``, ...) becomes a ``Plan``: flat per-patch
index tensors (layer, head, position, destination/source position) plus the dims and labels the
Result will carry. The engine turns each patch into a boolean mask over the hook's activation,
so every kind of patch is the same vectorised ``torch.where`` in one hook per hook point.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from interpkit.errors import SiteError, unknown

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.sites import Site

# public site name -> (site kind, hook template)
PATCH_SITES = {
    "resid_pre": ("resid_pre", "blocks.{l}.hook_resid_pre"),
    "resid_mid": ("resid_mid", "blocks.{l}.hook_resid_mid"),
    "resid_post": ("resid_post", "blocks.{l}.hook_resid_post"),
    "attn_out": ("attn_out", "blocks.{l}.hook_attn_out"),
    "mlp_out": ("mlp_out", "blocks.{l}.hook_mlp_out"),
    "head_out": ("z", "blocks.{l}.attn.hook_z"),
    "head_q": ("q", "blocks.{l}.attn.hook_q"),
    "head_k": ("kv_k", "blocks.{l}.attn.hook_k"),
    "head_v": ("kv_v", "blocks.{l}.attn.hook_v"),
    "head_pattern": ("pattern", "blocks.{l}.attn.hook_pattern"),
}
HEAD_KINDS = {"z", "q", "kv_k", "kv_v", "pattern"}


@dataclasses.dataclass
class Plan:
    """Flat list of patches of one site kind; ``shape`` folds them back into the result grid."""

    kind: str
    hook_template: str
    layer: list[int]
    head: list[int] | None
    pos: list[int] | None
    dest: list[int] | None
    src: list[int] | None
    dims: tuple[str, ...]
    labels: dict[str, list[str]]
    shape: tuple[int, ...]
    note: str = ""

    def __len__(self) -> int:
        return len(self.layer)

    def hook(self, layer: int) -> str:
        return self.hook_template.format(l=layer)

    def component_labels(self) -> list[str]:
        """One label per patch, e.g. ``L3H5@4`` (head 5 of layer 3 at position 4)."""
        out = []
        for i, layer in enumerate(self.layer):
            head = self.head[i] if self.head is not None else None
            if self.kind in ("kv_k", "kv_v"):
                base = f"L{layer}KV{head}.{self.kind[-1]}"
            elif head is not None:
                base = f"L{layer}H{head}" + {"z": "", "q": ".q", "pattern": ".pattern"}[self.kind]
            else:
                base = f"L{layer}.{ {'attn_out': 'attn', 'mlp_out': 'mlp'}.get(self.kind, self.kind) }"
            if self.pos is not None:
                base += f"@{self.pos[i]}"
            if self.dest is not None:
                base += f"@{self.dest[i]}->{self.src[i]}"
            out.append(base)
        return out


def _check_positions(positions: list[int] | None, n_pos: int) -> list[int]:
    if positions is None:
        return list(range(n_pos))
    bad = [p for p in positions if not -n_pos <= p < n_pos]
    if bad:
        raise SiteError(f"positions {bad} are out of range for prompts of {n_pos} tokens (valid: 0..{n_pos - 1})")
    return [p % n_pos for p in positions]


def make_plan(
    model: Model,
    site: str,
    n_pos: int,
    per_position: bool = False,
    layers: list[int] | None = None,
    positions: list[int] | None = None,
    pattern_positions: bool = False,
    pos_labels: list[str] | None = None,
) -> Plan:
    """The plan for sweeping ``site`` over layers (and heads, and positions if asked)."""
    if site not in PATCH_SITES:
        raise unknown("patch site", site, PATCH_SITES, SiteError)
    kind, template = PATCH_SITES[site]
    c = model.cfg
    if kind == "mlp_out" and c.attn_only:
        raise SiteError(f"site 'mlp_out' is not in {model.name}: the model is attention-only")
    if kind == "resid_mid" and c.attn_only:
        raise SiteError(f"site 'resid_mid' is not in {model.name}: an attention-only model has no resid_mid")
    if kind == "resid_mid" and c.parallel_attn_mlp:
        raise SiteError(
            f"site 'resid_mid' is not in {model.name}: its attention and MLP run in parallel on resid_pre "
            "(patch resid_pre, attn_out or mlp_out instead)"
        )
    layer_list = list(range(c.n_layers)) if layers is None else list(layers)
    bad = [lay for lay in layer_list if not 0 <= lay < c.n_layers]
    if bad:
        raise SiteError(f"layers {bad} are out of range (model has {c.n_layers} layers, 0..{c.n_layers - 1})")
    pos_list = _check_positions(positions, n_pos) if (per_position or pattern_positions) else None
    if pattern_positions and kind != "pattern":
        raise SiteError("pattern_positions=True applies to site 'head_pattern' only")
    if per_position and kind == "pattern":
        raise SiteError("for 'head_pattern' use pattern_positions=True (destination x source) instead of per_position")
    n_heads = c.n_kv_heads if kind in ("kv_k", "kv_v") else c.n_heads
    heads = list(range(n_heads)) if kind in HEAD_KINDS else [None]
    tok = pos_labels or [str(p) for p in range(n_pos)]
    layer_labels = [f"L{lay}" for lay in layer_list]
    head_labels = [f"KV{h}" if kind in ("kv_k", "kv_v") else f"H{h}" for h in heads] if kind in HEAD_KINDS else []

    grid: list[tuple[Any, ...]]
    if kind == "pattern" and pattern_positions:
        pairs = [(q, k) for q in pos_list for k in pos_list if k <= q]
        grid = [(lay, h, None, q, k) for lay, h, (q, k) in itertools.product(layer_list, heads, pairs)]
        dims = ("layer", "head", "dest_src")
        labels = {
            "layer": layer_labels,
            "head": head_labels,
            "dest_src": [f"{tok[q]}({q})->{tok[k]}({k})" for q, k in pairs],
        }
        shape = (len(layer_list), len(heads), len(pairs))
    elif per_position:
        # TransformerLens's order: layer, position, head.
        grid = [(lay, h, p, None, None) for lay, p, h in itertools.product(layer_list, pos_list, heads)]
        dims = ("layer", "pos", "head") if kind in HEAD_KINDS else ("layer", "pos")
        labels = {"layer": layer_labels, "pos": [f"{tok[p]} ({p})" if tok[p] != str(p) else str(p) for p in pos_list]}
        if kind in HEAD_KINDS:
            labels["head"] = head_labels
        shape = (len(layer_list), len(pos_list), len(heads)) if kind in HEAD_KINDS else (len(layer_list), len(pos_list))
    else:
        grid = [(lay, h, None, None, None) for lay, h in itertools.product(layer_list, heads)]
        dims = ("layer", "head") if kind in HEAD_KINDS else ("layer",)
        labels = {"layer": layer_labels, **({"head": head_labels} if kind in HEAD_KINDS else {})}
        shape = (len(layer_list), len(heads)) if kind in HEAD_KINDS else (len(layer_list),)
    note = ""
    if kind in ("kv_k", "kv_v") and c.n_kv_heads < c.n_heads:
        note = (
            f"grouped-query attention: each KV head is shared by {c.group_size} query heads "
            f"(KV{{g}} serves heads {{g*{c.group_size}}}..{{g*{c.group_size}+{c.group_size - 1}}}); "
            "patching it changes all of them"
        )

    def column(i: int) -> list[int] | None:
        values = [g[i] for g in grid]
        return None if values[0] is None else values

    return Plan(
        kind, template, [g[0] for g in grid], column(1), column(2), column(3), column(4), dims, labels, shape, note
    )


def patch_mask(plan: Plan, rows: list[int], act_shape: torch.Size, device: Any) -> torch.Tensor:
    """Boolean mask, broadcastable to ``act_shape`` with batch ``len(rows)``, of what each row patches.

    ``rows[i]`` is the index in the plan of the patch applied to batch row ``i``.
    """
    import torch

    n = len(rows)
    idx = torch.arange(n, device=device)
    r = torch.tensor(rows, device=device)
    if plan.kind == "pattern":  # (batch, head, q, k)
        full = plan.dest is not None
        mask = torch.zeros(
            (n, act_shape[1], act_shape[2] if full else 1, act_shape[3] if full else 1), dtype=torch.bool, device=device
        )
        heads = torch.tensor(plan.head, device=device)[r]
        if full:
            mask[idx, heads, torch.tensor(plan.dest, device=device)[r], torch.tensor(plan.src, device=device)[r]] = True
        else:
            mask[idx, heads] = True
        return mask
    if plan.kind in HEAD_KINDS:  # (batch, pos, head, d_head)
        mask = torch.zeros((n, act_shape[1], act_shape[2], 1), dtype=torch.bool, device=device)
        heads = torch.tensor(plan.head, device=device)[r]
        if plan.pos is None:
            mask[idx, :, heads] = True
        else:
            mask[idx, torch.tensor(plan.pos, device=device)[r], heads] = True
        return mask
    mask = torch.zeros((n, act_shape[1], 1), dtype=torch.bool, device=device)  # (batch, pos, d_model)
    if plan.pos is None:
        mask[:] = True
    else:
        mask[idx, torch.tensor(plan.pos, device=device)[r]] = True
    return mask


def masked_patch_hook(
    mask_fn: Callable[[torch.Size, torch.device], torch.Tensor], source: torch.Tensor
) -> Callable[..., Any]:
    """A hook writing ``source`` where ``mask_fn(act.shape, act.device)`` is True (new tensor, no in-place change).

    Mask and source are used on the activation's device (a no-op on a single-device model).
    """
    import torch

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        mask = mask_fn(act.shape, act.device).to(act.device)
        return torch.where(mask, source.to(act.device, act.dtype), act)

    return hook


def component_mask(site: Site, shape: torch.Size, group_size: int, device: Any) -> torch.Tensor:
    import torch

    axis = site.head_axis()
    if axis is None:
        return torch.ones((1,) * len(shape), dtype=torch.bool, device=device)
    mask_shape = [1] * len(shape)
    mask_shape[axis] = shape[axis]
    mask = torch.zeros(mask_shape, dtype=torch.bool, device=device)
    index = [slice(None)] * len(shape)
    index[axis] = site.hook_index(group_size)
    mask[tuple(index)] = True
    return mask
