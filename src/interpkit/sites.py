"""Component labels and their hook points.

One naming scheme is used everywhere (results, plots, circuits, the CLI):

=====================  ==========================================  ===========================
label                  meaning                                     hook point (index)
=====================  ==========================================  ===========================
``embed``              token embedding                             ``hook_embed``
``L3.resid_pre``       residual stream entering block 3            ``blocks.3.hook_resid_pre``
``L3.resid_mid``       residual after attention, before the MLP    ``blocks.3.hook_resid_mid``
``L3.resid_post``      residual leaving block 3                    ``blocks.3.hook_resid_post``
``L3.attn``            attention output of block 3                 ``blocks.3.hook_attn_out``
``L3.mlp``             MLP output of block 3                       ``blocks.3.hook_mlp_out``
``L3H5``               head 5's output (``z``, before W_O)         ``blocks.3.attn.hook_z[:, :, 5]``
``L3H5.q``             head 5's query                              ``blocks.3.attn.hook_q[:, :, 5]``
``L3H5.k`` / ``.v``    the key / value head that head 5 reads      ``hook_k[:, :, 5 // group]``
``L3KV1.k`` / ``.v``   key / value head 1 (shared under GQA)       ``blocks.3.attn.hook_k[:, :, 1]``
``L3H5.pattern``       head 5's attention pattern                  ``blocks.3.attn.hook_pattern[:, 5]``
``logits``             output logits                               ``hook_unembed``
=====================  ==========================================  ===========================

``L3.attn_out`` and ``L3.mlp_out`` are accepted and normalised to ``L3.attn`` / ``L3.mlp``.
Under grouped-query attention, ``L3H5.k`` names the shared key head, so patching it also changes
the other heads of its group; use ``L3KV1.k`` to make that explicit.

    >>> from interpkit.sites import parse
    >>> parse("L3H5.k")
    Site(kind='k', layer=3, head=5)
    >>> parse("L3H5.k").label
    'L3H5.k'
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from interpkit.errors import SiteError, closest

if TYPE_CHECKING:
    from interpkit.models import Model

LAYER_KINDS = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
}
HEAD_KINDS = {
    "z": "blocks.{l}.attn.hook_z",
    "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "pattern": "blocks.{l}.attn.hook_pattern",
}
KV_KINDS = {"kv_k": "blocks.{l}.attn.hook_k", "kv_v": "blocks.{l}.attn.hook_v"}
GLOBAL_KINDS = {"embed": "hook_embed", "logits": "hook_unembed"}
KINDS = (*GLOBAL_KINDS, *LAYER_KINDS, *HEAD_KINDS, *KV_KINDS)
# the names ik.patch uses for site kinds (and the short forms of labels), accepted everywhere
KIND_ALIASES = {
    "head_out": "z",
    "head_q": "q",
    "head_k": "kv_k",
    "head_v": "kv_v",
    "head_pattern": "pattern",
    "attn": "attn_out",
    "mlp": "mlp_out",
}
PATCH_NAMES = {"z": "head_out", "q": "head_q", "k": "head_k", "kv_k": "head_k", "v": "head_v", "kv_v": "head_v",
               "pattern": "head_pattern"}  # fmt: skip
_SUFFIX = {"attn_out": "attn", "mlp_out": "mlp"}
_SUFFIX_IN = {"attn": "attn_out", "mlp": "mlp_out", "attn_out": "attn_out", "mlp_out": "mlp_out"}

_LAYER_RE = re.compile(r"^L(\d+)\.(\w+)$")
_HEAD_RE = re.compile(r"^L(\d+)H(\d+)(?:\.(q|k|v|z|pattern))?$")
_KV_RE = re.compile(r"^L(\d+)KV(\d+)\.(k|v)$")


@dataclasses.dataclass(frozen=True, order=True)
class Site:
    """One component of the model: what it is, in which layer, which head."""

    kind: str
    layer: int | None = None
    head: int | None = None

    @property
    def label(self) -> str:
        if self.kind in GLOBAL_KINDS:
            return self.kind
        if self.kind in LAYER_KINDS:
            return f"L{self.layer}.{_SUFFIX.get(self.kind, self.kind)}"
        if self.kind in KV_KINDS:
            return f"L{self.layer}KV{self.head}.{self.kind[-1]}"
        return f"L{self.layer}H{self.head}" + ("" if self.kind == "z" else f".{self.kind}")

    @property
    def hook(self) -> str:
        """The classic TransformerLens hook name this site lives on."""
        template = {**GLOBAL_KINDS, **LAYER_KINDS, **HEAD_KINDS, **KV_KINDS}[self.kind]
        return template.format(l=self.layer)

    def head_axis(self) -> int | None:
        """Axis of the head dimension in the hook's activation, or None for whole-layer sites."""
        if self.kind == "pattern":
            return 1
        return 2 if self.kind in HEAD_KINDS or self.kind in KV_KINDS else None

    def hook_index(self, group_size: int = 1) -> int | None:
        """Index along ``head_axis`` (query heads map to their shared key/value head)."""
        if self.kind in ("k", "v"):
            return self.head // group_size
        return self.head

    def __str__(self) -> str:
        return self.label


def parse(label: str) -> Site:
    """Parse a site label (syntax only; :func:`validate` checks it against a model)."""
    if not isinstance(label, str):
        raise SiteError(f"a site label must be a string, got {label!r}")
    text = label.strip()
    if text in GLOBAL_KINDS:
        return Site(text)
    if m := _HEAD_RE.match(text):
        return Site(m.group(3) or "z", int(m.group(1)), int(m.group(2)))
    if m := _KV_RE.match(text):
        return Site(f"kv_{m.group(3)}", int(m.group(1)), int(m.group(2)))
    if (m := _LAYER_RE.match(text)) and m.group(2) in {**LAYER_KINDS, **_SUFFIX_IN}:
        return Site(_SUFFIX_IN.get(m.group(2), m.group(2)), int(m.group(1)))
    examples = [
        "embed",
        "L0.resid_pre",
        "L0.resid_mid",
        "L0.resid_post",
        "L0.attn",
        "L0.mlp",
        "L0H0",
        "L0H0.q",
        "L0H0.k",
        "L0H0.v",
        "L0H0.pattern",
        "L0KV0.k",
        "logits",
    ]
    near = closest(text, examples, n=3)
    raise SiteError(
        f"cannot parse site label {label!r}"
        + (f"; closest forms: {', '.join(near)}" if near else "")
        + f". Valid forms: {', '.join(examples)}"
    )


def all_sites(model: Model, kind: str | None = None) -> list[Site]:
    """Every site of ``kind`` (or of all kinds) that exists in ``model``, in forward order."""
    if kind is not None and kind not in KINDS:
        near = closest(kind, KINDS)
        raise SiteError(
            f"unknown site kind {kind!r}"
            + (f"; closest: {', '.join(near)}" if near else "")
            + f". Kinds: {', '.join(KINDS)}"
        )
    c = model.cfg
    hooks = set(model.hook_names()) | set(model.bridge.hook_dict)
    out: list[Site] = []
    kinds = [kind] if kind else list(KINDS)
    if "embed" in kinds:
        out.append(Site("embed"))
    for layer in range(c.n_layers):
        for k in kinds:
            if k in LAYER_KINDS:
                site = Site(k, layer)
                if site.hook in hooks and not (k == "mlp_out" and c.attn_only):
                    out.append(site)
            elif k in HEAD_KINDS:
                out.extend(Site(k, layer, h) for h in range(c.n_heads))
            elif k in KV_KINDS:
                out.extend(Site(k, layer, h) for h in range(c.n_kv_heads))
    if "logits" in kinds:
        out.append(Site("logits"))
    return out


def kind_name(name: Any) -> str | None:
    """The site kind a bare name denotes (``"resid_post"``; ``"head_out"`` -> ``"z"``), or None for anything else.

    >>> kind_name("head_out"), kind_name("L3.mlp"), kind_name("embed")
    ('z', None, None)
    """
    if not isinstance(name, str) or name in GLOBAL_KINDS:
        return None
    kind = KIND_ALIASES.get(name, name)
    return kind if kind in KINDS else None


def sweep_of(model: Model, site: str, layers: Iterable[int] | None = None) -> tuple[str, list[int] | None]:
    """``ik.patch``'s ``(site kind, layers)`` for a kind name, a label or a wildcard over labels.

    ``"resid_post"`` or ``"head_out"`` sweep every layer; ``"L3.resid_post"``, ``"L[0-5].attn"`` or
    ``"L3H*"`` sweep the layers they name (a sweep patches whole layers of heads: naming only some
    heads of a layer is an error). The returned kind is a patch site name (``head_out``, ...).
    """
    kind = kind_name(site)
    if kind is not None:
        return PATCH_NAMES.get(kind, kind), None if layers is None else list(layers)
    found = [parse(n) for n in expand(model, [site]) if not str(n).startswith(("blocks.", "hook_"))]
    found = [f for f in found if f.label.count(".") == site.count(".")]  # "L3H*" means heads, not their .q/.k/.v
    kinds = {PATCH_NAMES.get(f.kind, f.kind) for f in found}
    if not found or len(kinds) != 1 or None in {f.layer for f in found}:
        raise SiteError(
            f"site {site!r} must name one kind of component over some layers: a kind (resid_pre, resid_mid, "
            "resid_post, attn_out, mlp_out, head_out, head_q, head_k, head_v, head_pattern), a label (L3.resid_post, "
            f"L3H5) or a wildcard over labels (L*.mlp, L3H*); it matches {sorted({f.label for f in found})[:6]}"
        )
    named = sorted({f.layer for f in found})
    per_layer = len({(f.kind, f.head) for f in found if f.layer == named[0]})
    whole = model.cfg.n_kv_heads if found[0].kind in KV_KINDS else model.cfg.n_heads
    if found[0].head is not None and per_layer < whole:
        raise SiteError(
            f"site {site!r} names some heads of a layer; a patching sweep patches every head of each layer it "
            f"covers (use {found[0].label.split('H')[0]}H* or a kind with layers=[...]; ik.patching.ablate takes single heads)"
        )
    if layers is not None and sorted(set(layers)) != named:
        raise SiteError(f"site {site!r} names layers {named}, but layers={list(layers)} was given too")
    return kinds.pop(), named


def is_pattern(name: Any) -> bool:
    """Whether ``name`` is a shell wildcard (``*``, ``?`` or ``[``) rather than one label or hook name."""
    return isinstance(name, str) and any(ch in name for ch in "*?[")


def expand(model: Model, names: Iterable[Any]) -> list[Any]:
    """``names`` with shell wildcards (``"L*.resid_post"``, ``"blocks.*.attn.hook_z"``) and site kinds
    (``"resid_post"``, ``"head_out"``: every such site) replaced by the site labels and hook names of
    ``model`` they match, in forward order; other names (and :class:`Site` objects) are passed
    through. A pattern that matches nothing is a SiteError.

        >>> import interpkit as ik
        >>> expand(ik.load_model("toy-induction"), ["resid_post", "L1H?"])
        ['L0.resid_post', 'L1.resid_post', 'L1H0', 'L1H1', 'L1H2', 'L1H3']
    """
    import fnmatch

    out: list[Any] = []
    candidates: list[str] | None = None
    for name in names:
        if isinstance(name, Site):
            out.append(name)
            continue
        if not isinstance(name, str):
            raise SiteError(f"a site must be a label like 'L3.resid_pre' or a hook name, got {name!r}")
        kind = kind_name(name.strip())
        if kind is not None:
            out.extend(s.label for s in all_sites(model, kind))
            continue
        if not is_pattern(name):
            out.append(name.strip())
            continue
        if candidates is None:
            candidates = [s.label for s in all_sites(model)] + model.hook_names()
        found = [c for c in candidates if fnmatch.fnmatchcase(c, name)]
        if not found:
            raise SiteError(f"site pattern {name!r} matches no site label or hook name of {model.name}")
        out.extend(found)
    return out


def validate(site: Site | str, model: Model) -> Site:
    """A Site that exists in ``model``; SiteError naming the closest valid labels otherwise."""
    site = parse(site) if isinstance(site, str) else site
    c = model.cfg
    problem = None
    if site.layer is not None and not 0 <= site.layer < c.n_layers:
        problem = f"layer {site.layer} is out of range (model has {c.n_layers} layers, 0..{c.n_layers - 1})"
    elif site.kind in HEAD_KINDS and not 0 <= site.head < c.n_heads:
        problem = f"head {site.head} is out of range (model has {c.n_heads} heads, 0..{c.n_heads - 1})"
    elif site.kind in KV_KINDS and not 0 <= site.head < c.n_kv_heads:
        problem = f"key/value head {site.head} is out of range (model has {c.n_kv_heads}, 0..{c.n_kv_heads - 1})"
    elif site.kind == "mlp_out" and c.attn_only:
        problem = "the model is attention-only and has no MLP"
    elif site.kind == "resid_mid" and c.parallel_attn_mlp:
        problem = "its attention and MLP run in parallel on resid_pre, so there is no resid_mid"
    elif site.kind not in HEAD_KINDS and site.kind not in KV_KINDS:
        try:
            model.resolve_hook(site.hook)
        except SiteError:
            problem = f"the model has no hook point {site.hook!r}"
    if problem:
        labels = [s.label for s in all_sites(model)]
        near = closest(site.label, labels)
        raise SiteError(
            f"site {site.label!r} is not in {model.name}: {problem}" + (f"; closest: {', '.join(near)}" if near else "")
        )
    return site


def resolve(model: Model, name: str) -> Site | str:
    """A site label -> validated Site; a hook name -> its canonical hook name; else SiteError.

    A label with a hook point of interpkit's own after it (``L12.resid_post.latents`` while a
    dictionary is spliced there) resolves to that hook point's name.
    """
    base, dot, extra = name.rpartition(".")
    if dot and extra in ("latents", "error", "rest") and base:
        found = resolve(model, base)
        return model.resolve_hook(f"{found.hook if isinstance(found, Site) else found}.{extra}")
    try:
        return validate(parse(name), model)
    except SiteError as site_error:
        if name.startswith(("L", "embed", "logits")) and not name.startswith("ln"):
            raise
        try:
            return model.resolve_hook(name)
        except SiteError:
            labels = [s.label for s in all_sites(model)] + model.hook_names()
            near = closest(name, labels)
            raise SiteError(
                f"unknown site or hook {name!r}" + (f"; closest: {', '.join(near)}" if near else "")
            ) from site_error
