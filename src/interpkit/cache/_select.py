"""What to cache: site labels and hook names turned into requests, and positions turned into indices.

A request names one tensor the cache keeps. A whole hook point (``"L3.resid_pre"``,
``"blocks.3.attn.hook_z"``) is kept under its canonical hook name; one head of a head-level hook
(``"L3H5"``, ``"L3H5.pattern"``, ``"L3KV1.k"``) is kept under its site label, with the head axis
dropped. Names may use shell wildcards (``"L*.resid_post"``, ``"blocks.*.attn.hook_z"``), matched
against the model's site labels and hook names.

    >>> from interpkit.cache._select import resolve_requests
    >>> [r.key for r in resolve_requests(model, ["L1.resid_pre", "L0H2"])]      # doctest: +SKIP
    ['blocks.1.hook_resid_pre', 'L0H2']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.cache._errors import CacheError
from interpkit.errors import SiteError, closest

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model

# Hooks whose activation has a (batch, head, query, key) layout: positions select queries.
_QUERY_AXIS_HOOKS = ("hook_pattern", "hook_attn_scores")


@dataclasses.dataclass(frozen=True)
class Request:
    """One tensor to keep: read from ``hook``, optionally one index along ``head_axis``."""

    key: str
    hook: str
    label: str | None = None
    head_axis: int | None = None
    head_index: int | None = None

    @property
    def pos_axis(self) -> int:
        """Axis of the (query) position in the hook's activation."""
        return 2 if self.hook.endswith(_QUERY_AXIS_HOOKS) else 1

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_requests(model: Model, sites: str | Iterable[Any]) -> list[Request]:
    """Requests for ``sites`` (labels, hook names, Site objects or wildcards), deduplicated, in order."""
    from interpkit.sites import HEAD_KINDS, KV_KINDS, Site, expand, resolve, validate

    names = [sites] if isinstance(sites, (str, Site)) else list(sites)
    if not names:
        raise SiteError("no sites given: name at least one site label (e.g. 'L0.resid_pre') or hook name")
    requests: dict[str, Request] = {}
    for name in expand(model, names):
        found = validate(name, model) if isinstance(name, Site) else resolve(model, name)
        if isinstance(found, Site):
            hook = model.resolve_hook(found.hook)
            if found.kind in HEAD_KINDS or found.kind in KV_KINDS:
                req = Request(found.label, hook, found.label, found.head_axis(), found.hook_index(model.cfg.group_size))
            else:
                req = Request(hook, hook, found.label)
        else:
            req = Request(found, found)
        if req.key in requests and requests[req.key].label is None:
            requests[req.key] = req  # keep the friendlier label when a site is named twice
        requests.setdefault(req.key, req)
    return list(requests.values())


def analysis_sites(model: Model) -> list[str]:
    """The hook points every analysis helper of ActivationCache reads (what ``sites=None`` caches)."""
    hooks = set(model.bridge.hook_dict)
    names = ["hook_embed"]
    if model.cfg.positional == "standard" and "hook_pos_embed" in hooks:
        names.append("hook_pos_embed")
    for layer in range(model.cfg.n_layers):
        for suffix in ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "hook_mlp_out"):
            if suffix == "hook_mlp_out" and model.cfg.attn_only:
                continue
            name = f"blocks.{layer}.{suffix}"
            if name in hooks:
                names.append(name)
    names.append(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    if "ln_final.hook_scale" in hooks and model.cfg.normalization is not None:
        names.append("ln_final.hook_scale")
    return names


def unknown_key(key: str, keys: Sequence[str], what: str = "cache") -> CacheError:
    near = closest(key, keys)
    shown = ", ".join(list(keys)[:12]) + (", ..." if len(keys) > 12 else "")
    return CacheError(
        f"{key!r} is not in this {what}" + (f"; closest: {', '.join(near)}" if near else "") + f". It holds: {shown}"
    )


# ---------------------------------------------------------------------------- positions
def normalize_positions(positions: Any, batch: int, seq_len: int, device: Any) -> torch.Tensor | None:
    """None (every position), a shared ``(k,)`` index or a per-example ``(batch, k)`` index, all >= 0.

    ``positions`` may be an int, a slice or range, a list of ints, a 1-D tensor (the same
    positions for every example) or a 2-D ``(batch, k)`` tensor (per example, e.g.
    ``task.answer_pos[:, None]``). Negative positions count from the end.
    """
    import torch

    if positions is None:
        return None
    if isinstance(positions, slice):
        pos = torch.arange(seq_len)[positions]
    elif isinstance(positions, int):
        pos = torch.tensor([positions])
    elif isinstance(positions, range):
        pos = torch.tensor(list(positions), dtype=torch.long)
    else:
        try:
            pos = torch.as_tensor(positions)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CacheError(
                f"positions must be an int, slice, list of ints or tensor, got {type(positions).__name__}"
            ) from exc
    if pos.dtype.is_floating_point or pos.dtype == torch.bool:
        raise CacheError(f"positions must be integer indices, got dtype {pos.dtype}")
    pos = pos.long()
    if pos.ndim == 2 and pos.shape[0] != batch:
        raise CacheError(f"per-example positions have {pos.shape[0]} rows but the batch has {batch} examples")
    if pos.ndim not in (1, 2) or pos.numel() == 0:
        raise CacheError(f"positions must select at least one position as (k,) or (batch, k); got {tuple(pos.shape)}")
    if int(pos.min()) < -seq_len or int(pos.max()) >= seq_len:
        raise CacheError(f"positions {int(pos.min())}..{int(pos.max())} lie outside the {seq_len} positions of the run")
    return torch.where(pos < 0, pos + seq_len, pos).to(device)


def select(act: torch.Tensor, req: Request, positions: torch.Tensor | None, batch: int, seq_len: int) -> torch.Tensor:
    """The part of a hook activation that ``req`` keeps: chosen positions, then the chosen head."""
    if positions is not None:
        positions = positions.to(act.device)  # a split model's activation sits on its layer's device
        axis = req.pos_axis
        if act.ndim <= axis or act.shape[axis] != seq_len:
            raise CacheError(
                f"cannot select positions at {req.hook}: its activation {tuple(act.shape)} has no position "
                f"axis of length {seq_len} at dim {axis}; cache it with positions=None"
            )
        if positions.ndim == 1:
            act = act.index_select(axis, positions)
        else:
            moved = act.movedim(axis, 1)
            if moved.shape[0] != batch:
                moved = moved.expand(batch, *moved.shape[1:])
            index = positions.reshape(*positions.shape, *([1] * (moved.ndim - 2))).expand(
                *positions.shape, *moved.shape[2:]
            )
            act = moved.gather(1, index).movedim(1, axis)
    if req.head_axis is not None:
        act = act.select(req.head_axis, req.head_index)
    return act
