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
    latent: list[int] | None = None  # kind "latents": the latent each patch edits
    site_label: str = ""  # kind "latents": the site the dictionary is spliced at (``L12.mlp``)

    def __len__(self) -> int:
        return len(self.layer)

    def hook(self, layer: int) -> str:
        return self.hook_template.format(l=layer)

    def component_labels(self) -> list[str]:
        """One label per patch, e.g. ``L3H5@4`` (head 5 of layer 3 at position 4)."""
        out = []
        for i, layer in enumerate(self.layer):
            head = self.head[i] if self.head is not None else None
            if self.latent is not None:
                base = f"{self.site_label}#{self.latent[i]}"
            elif self.kind in ("kv_k", "kv_v"):
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


def latent_point(model: Model, site: Any) -> tuple[str, Any] | None:
    """(hook name, hook point) of the latents of a dictionary spliced into ``model`` that ``site``
    names (``"L12.mlp.latents"``, ``"blocks.12.hook_mlp_out.latents"``); None for any other site."""
    if not isinstance(site, str) or not site.endswith(".latents"):
        return None
    from interpkit.sites import resolve

    try:
        name = resolve(model, site)
    except SiteError:
        raise SiteError(
            f"{site!r} names a dictionary's latents, but none is spliced there; "
            "run inside `with ik.dictionaries.spliced(model, {site: dictionary}):`"
        ) from None
    point = model.hook_point(name) if isinstance(name, str) else None
    return (name, point) if getattr(point, "width", None) is not None else None


def _latent_plan(
    site: str,
    name: str,
    point: Any,
    n_pos: int,
    per_position: bool,
    positions: list[int] | None,
    latents: Any,
    pos_labels: list[str] | None,
) -> Plan:
    """One patch per latent (and per position): the dictionary's latents as components."""
    width, start = int(point.width), point.start_layer
    if start is None:
        raise SiteError(
            f"the latents at {site!r} are spliced into the embedding without the error term: a patched "
            "forward cannot start after the splice; splice with error=True"
        )
    chosen = list(range(width)) if latents is None else [int(i) for i in latents]
    bad = [i for i in chosen if not 0 <= i < width]
    if bad or not chosen:
        raise SiteError(f"latents {bad or chosen} are out of range: the dictionary at {site!r} has 0..{width - 1}")
    tok = pos_labels or [str(p) for p in range(n_pos)]
    pos_list = _check_positions(positions, n_pos) if per_position else None
    if pos_list is None:
        grid = [(None, i) for i in chosen]
        dims, shape = ("latent",), (len(chosen),)
        labels = {"latent": [str(i) for i in chosen]}
    else:
        grid = [(p, i) for p in pos_list for i in chosen]
        dims, shape = ("pos", "latent"), (len(pos_list), len(chosen))
        labels = {
            "pos": [f"{tok[p]} ({p})" if tok[p] != str(p) else str(p) for p in pos_list],
            "latent": [str(i) for i in chosen],
        }
    pos = None if pos_list is None else [g[0] for g in grid]
    return Plan(
        "latents", name, [start] * len(grid), None, pos, None, None, dims, labels, shape,
        latent=[g[1] for g in grid], site_label=site.removesuffix(".latents"),
    )  # fmt: skip


def _check_kind(model: Model, kind: str, layers: list[int], per_position: bool, pattern_positions: bool) -> None:
    """SiteError where ``model`` has no site of ``kind`` (no MLP, or no resid_mid) or ``layers``,
    or the position options do not fit the kind."""
    c = model.cfg
    bad = [lay for lay in layers if not 0 <= lay < c.n_layers]
    if bad:
        raise SiteError(f"layers {bad} are out of range (model has {c.n_layers} layers, 0..{c.n_layers - 1})")
    if pattern_positions and kind != "pattern":
        raise SiteError("pattern_positions=True applies to site 'head_pattern' only")
    if per_position and kind == "pattern":
        raise SiteError("for 'head_pattern' use pattern_positions=True (destination x source) instead of per_position")
    if kind == "mlp_out" and c.attn_only:
        raise SiteError(f"site 'mlp_out' is not in {model.name}: the model is attention-only")
    if kind == "resid_mid" and c.attn_only:
        raise SiteError(f"site 'resid_mid' is not in {model.name}: an attention-only model has no resid_mid")
    if kind == "resid_mid" and c.parallel_attn_mlp:
        raise SiteError(
            f"site 'resid_mid' is not in {model.name}: its attention and MLP run in parallel on resid_pre "
            "(patch resid_pre, attn_out or mlp_out instead)"
        )


def make_plan(
    model: Model,
    site: str,
    n_pos: int,
    per_position: bool = False,
    layers: list[int] | None = None,
    positions: list[int] | None = None,
    pattern_positions: bool = False,
    pos_labels: list[str] | None = None,
    latents: Any = None,
) -> Plan:
    """The plan for sweeping ``site`` over layers (and heads, and positions if asked).

    ``site`` may name a spliced dictionary's latents (``"L12.mlp.latents"``): one patch per
    latent (``latents``: which, default all), per position if asked; ``layers`` does not apply.
    """
    found = latent_point(model, site)
    if found is not None:
        if layers is not None or pattern_positions:
            raise SiteError(f"layers= and pattern_positions= do not apply to the latents site {site!r}")
        return _latent_plan(site, *found, n_pos, per_position, positions, latents, pos_labels)
    if latents is not None:
        raise SiteError(f"latents= applies to a spliced dictionary's latents site ('L12.mlp.latents'), not {site!r}")
    if site not in PATCH_SITES:
        raise unknown("patch site", site, PATCH_SITES, SiteError)
    kind, template = PATCH_SITES[site]
    c = model.cfg
    layer_list = list(range(c.n_layers)) if layers is None else list(layers)
    _check_kind(model, kind, layer_list, per_position, pattern_positions)
    pos_list = _check_positions(positions, n_pos) if (per_position or pattern_positions) else None
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
    if plan.latent is not None:  # (batch, pos, n_latents)
        mask = torch.zeros((n, act_shape[1], act_shape[2]), dtype=torch.bool, device=device)
        which = torch.tensor(plan.latent, device=device)[r]
        if plan.pos is None:
            mask[idx, :, which] = True
        else:
            mask[idx, torch.tensor(plan.pos, device=device)[r], which] = True
        return mask
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
