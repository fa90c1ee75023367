"""Reading (and writing) one vector per chosen token at each probed site, batched, through ``ik.hooks``.

A ``SiteSpec`` is where a probe looks: a site label (``L3.resid_post``, ``L3H5``, ``L3KV1.v``) or
a hook name whose activation is ``(batch, pos, d)`` (``blocks.3.mlp.hook_post``). Activations
are gathered only at the selected ``(example, position)`` rows, inside the forward pass, so a
dataset never holds full sequences; the pass stops after the last site that is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.errors import SiteError

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model

# Site kinds whose activation is not one vector per token.
_NOT_VECTORS = ("pattern",)


@dataclasses.dataclass(frozen=True)
class SiteSpec:
    """One probed site: its label, the hook it lives on and the head index (if a head site)."""

    label: str
    hook: str
    head_axis: int | None = None
    head: int | None = None

    def read(self, act: torch.Tensor) -> torch.Tensor:
        """The site's ``(batch, pos, d)`` view of the hook's activation."""
        if self.head_axis is None:
            return act if act.ndim == 3 else act.flatten(2)
        return act.select(self.head_axis, self.head)

    def write(self, act: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """A copy of ``act`` with the site's view replaced by ``new`` (the caller's tensor is untouched)."""
        if self.head_axis is None:
            return new.reshape(act.shape)
        out = act.clone()
        out.select(self.head_axis, self.head).copy_(new)
        return out

    @property
    def layer(self) -> int:
        """The block this site belongs to (-1 for embed and other global hooks)."""
        parts = self.hook.split(".")
        return int(parts[1]) if parts[0] == "blocks" and parts[1].isdigit() else -1


def resolve_sites(model: Model, sites: Any = None) -> list[SiteSpec]:
    """Site specs for ``sites``: None (``L{l}.resid_post`` for every layer), a site kind
    (``"resid_pre"``, ``"z"``), one label or hook name, or a list of them; labels and hook names
    may use shell wildcards (``"L*.mlp"``, ``"blocks.*.mlp.hook_post"``)."""
    from interpkit.sites import KINDS, all_sites, expand, is_pattern

    if sites is None:
        sites = "resid_post"
    if isinstance(sites, str) and sites in KINDS:
        if sites in _NOT_VECTORS:
            raise SiteError(f"site kind {sites!r} is not one vector per token and cannot be probed")
        sites = [s.label for s in all_sites(model, sites)]
    elif isinstance(sites, str):
        sites = [sites]
    out: list[SiteSpec] = []
    for pattern in sites:
        wild = is_pattern(pattern)
        specs = [s for s in (_spec(model, name, wild) for name in expand(model, [pattern])) if s is not None]
        if not specs:
            raise SiteError(f"site pattern {pattern!r} matches only attention patterns, which cannot be probed")
        out.extend(s for s in specs if not (wild and any((o.hook, o.head) == (s.hook, s.head) for o in out)))
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise SiteError(f"sites are listed more than once: {labels}")
    return out


def _spec(model: Model, name: Any, wild: bool) -> SiteSpec | None:
    """The spec of one site label or hook name; None for a wildcard's match that is not one
    vector per token (an attention pattern), which is an error when named outright."""
    from interpkit.sites import Site, resolve, validate

    found = validate(name, model) if isinstance(name, Site) else resolve(model, name)
    if isinstance(found, str):
        if found.endswith(("hook_pattern", "hook_attn_scores")):
            if wild:
                return None
            raise SiteError(f"hook {found!r} holds attention patterns, not one vector per token")
        spliced = found.endswith((".latents", ".error", ".rest"))  # a splice's point: keep its site label
        return SiteSpec(name if spliced and isinstance(name, str) else found, found)
    if found.kind in _NOT_VECTORS:
        if wild:
            return None
        raise SiteError(f"site {found.label!r} is an attention pattern, not one vector per token")
    axis = found.head_axis()
    index = found.hook_index(model.cfg.group_size) if axis is not None else None
    return SiteSpec(found.label, model.resolve_hook(found.hook), axis, index)


def pad_batch(rows: Sequence[Sequence[int]], pad: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and attention mask ``(batch, pos)``."""
    import torch

    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return tokens.to(device), mask.to(device)


def pad_id(model: Model) -> int:
    tok = model.tokenizer
    return int(tok.pad_token_id) if tok is not None and tok.pad_token_id is not None else 0


class _Done(Exception):
    """Raised by the last reading hook to end a forward early; never escapes this module."""


def collect_rows(
    model: Model,
    ids: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    specs: Sequence[SiteSpec],
    batch_size: int = 32,
    dtype: Any = None,
    extra_hooks: Callable[[Sequence[int]], list[tuple[str, Any]]] | None = None,
) -> torch.Tensor:
    """Activations ``(site, row, d_max)`` at every ``(example, position)`` row, in example order.

    Sites narrower than the widest are zero-padded (a zero feature changes no probe).
    ``extra_hooks(example_indices)`` may add hooks (an intervention) for each batch; then the
    pass runs to the end instead of stopping after the last read.
    """
    import torch

    from interpkit.hooks import hooks

    dtype = dtype or torch.float32
    counts = [len(p) for p in positions]
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    by_hook: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        by_hook.setdefault(spec.hook, []).append(i)
    point_order = {name: i for i, name in enumerate(model.hook_names())}
    last_hook = max(by_hook, key=lambda h: point_order.get(h, -1)) if extra_hooks is None else None
    pad = pad_id(model)
    store: dict[str, torch.Tensor] = {}

    def reader(act: torch.Tensor, hook: Any) -> None:
        rows = store["rows"]
        for i in by_hook[hook.name]:
            vec = specs[i].read(act)[store["b"], store["p"]].to(dtype)  # (rows_in_batch, d)
            if "out" not in store:
                width = max(vec.shape[-1], store["width"])
                store["out"] = torch.zeros((len(specs), starts[-1], width), dtype=dtype, device=act.device)
            if vec.shape[-1] > store["out"].shape[-1]:
                raise SiteError(
                    f"site {specs[i].label!r} gives vectors of width {vec.shape[-1]}, wider than the model config suggests ({store['out'].shape[-1]})"
                )
            store["out"][i, rows[0] : rows[1], : vec.shape[-1]] = vec
        if hook.name == last_hook:
            raise _Done

    store["width"] = _widest(model, specs)
    for lo in range(0, len(ids), batch_size):
        batch = list(range(lo, min(lo + batch_size, len(ids))))
        tokens, mask = pad_batch([ids[i] for i in batch], pad, model.device)
        store["b"] = torch.tensor([j for j, i in enumerate(batch) for _ in positions[i]], device=model.device)
        store["p"] = torch.tensor([p for i in batch for p in positions[i]], device=model.device)
        store["rows"] = (starts[batch[0]], starts[batch[-1] + 1])
        fwd = [(h, reader) for h in by_hook]
        if extra_hooks is not None:
            fwd = extra_hooks(batch) + fwd
        with torch.inference_mode(), hooks(model, fwd=fwd), contextlib.suppress(_Done):
            model(tokens, attention_mask=mask)
    return store["out"]


def site_width(model: Model, spec: SiteSpec) -> int:
    """The width of a site's vector, from the model config (d_model, d_head or d_mlp), or from a
    hook point that states it (a spliced dictionary's latents)."""
    c = model.cfg
    stated = getattr(model.hook_point(spec.hook), "width", None)
    if stated is not None:
        return int(stated)
    if spec.head_axis is not None:
        return c.d_head
    if spec.hook.endswith(("mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear")) and c.d_mlp:
        return int(c.d_mlp)
    if spec.hook.endswith(("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v")):
        return c.d_head * (c.n_heads if spec.hook.endswith(("hook_z", "hook_q")) else c.n_kv_heads)
    return c.d_model


def _widest(model: Model, specs: Sequence[SiteSpec]) -> int:
    return max(site_width(model, s) for s in specs)
