"""``spliced``: run a model with dictionaries in place of the activations they reconstruct.

Inside ``with ik.dictionaries.spliced(model, {site: dictionary}, error=True) as splice:`` every
forward pass of ``model`` replaces each site's activation by the dictionary's output:

* an SAE at ``L12.resid_post`` reads and writes ``blocks.12.hook_resid_post``;
* a transcoder reads its ``input_site`` (``blocks.12.mlp.hook_in``: the MLP's input after its
  norm; the bridge's ``hook_mlp_in`` alias does not fire without a bridge option) and writes its
  ``output_site`` (``blocks.12.hook_mlp_out``, label ``L12.mlp``). The MLP itself still runs: its
  output is needed for the error term.

With ``error=True`` the error term ``act - dictionary(x)`` (computed from the unedited latents,
detached from autograd, as SAELens does) is added back, so the outputs are unchanged (to float
rounding) while the latents become real, editable nodes of the computation: editing a latent
changes the output by exactly the change of its decoder contribution, and gradients reach the
latents and, through the encoder, everything upstream. With ``error=False`` the model runs on
reconstructions alone (the "spliced-in" loss of the evaluations).

Positions 0 keep their activation when the dictionary was trained without them
(``skip_first``, default: what the dictionary's training did), since no reconstruction there
was ever learned; so do tokens whose activation is longer than the dictionary's
``meta["skip_norm_above"]`` (the attention-sink tokens its training left out).

While the splice is open, the latents, the error term and the rest of what the splice writes
are also hook points of the *model*: ``blocks.12.hook_resid_post.latents``, ``.error`` and
``.rest`` (site labels ``L12.resid_post.latents``, ``L12.mlp.latents``, ``L12.mlp.rest``), so every
engine reaches them as it reaches any site: ``ik.cache.run``, ``ik.patch`` (per latent, and per
position), ``ik.attribute`` (AtP, AtP*, IG, exact; per latent and position), probing, and the edge
graph (``splice.senders()``: the latents and the rest as sender nodes). What the splice writes is
``Σ_i z_i W_dec[i] + rest``, the rest being ``b_dec``, the skip term and the error term (and the
whole activation at tokens it leaves alone, where the latents are zero). Through the splice
itself the latents and error are hook points too, with TransformerLens's hook signature
``fn(tensor, hook) -> tensor | None`` and ``hook.name`` as below; what a hook returns replaces
the latents before decoding (patching, ablation), ``None`` leaves them:

==========================  ============================================================
``"{site}.latents"``        ``(batch, pos, n_latents)`` dense latents, before decoding
``"{site}.error"``          ``(batch, pos, d_out)`` the error term (``error=True`` only)
==========================  ============================================================

    >>> with ik.dictionaries.spliced(model, {"L12.resid_post": sae}, capture=True) as splice:   # doctest: +SKIP
    ...     splice.add_hook("L12.resid_post.latents", lambda z, hook: z * 0)  # ablate every latent
    ...     logits = model(tokens)
    >>> splice.latents["L12.resid_post"].shape                                                  # doctest: +SKIP
    torch.Size([1, 9, 4608])
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.dictionaries._dictionary import Dictionary
from interpkit.dictionaries._errors import DictionaryError

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model

HookFn = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class _Point:
    """What a splice hook sees as ``hook``: its name (the TransformerLens ``HookPoint`` field)."""

    name: str


@dataclasses.dataclass
class Entry:
    """One spliced dictionary: the hook it reads, the hook it writes, and its hook points."""

    site: str
    dictionary: Dictionary
    read_hook: str
    write_hook: str
    skip_first: bool
    max_norm: float | None = None
    start_layer: int | None = 0  # where a forward that edits the latents can start (see start_layers())

    def skipped(self, act: torch.Tensor) -> torch.Tensor:
        """Which tokens ``(batch, pos)`` keep their activation: position 0 if ``skip_first``, and
        tokens whose written activation is longer than ``max_norm`` (attention sinks)."""
        import torch

        skip = torch.zeros(act.shape[:-1], dtype=torch.bool, device=act.device)
        if self.skip_first and skip.shape[-1] > 0:
            skip[..., 0] = True
        if self.max_norm is not None:
            skip |= act.float().norm(dim=-1) > self.max_norm
        return skip

    @property
    def latents_name(self) -> str:
        return f"{self.site}.latents"

    @property
    def error_name(self) -> str:
        return f"{self.site}.error"

    @property
    def latents_hook(self) -> str:
        """The model hook point of the latents (``blocks.12.hook_resid_post.latents``), live during the splice."""
        return f"{self.write_hook}.latents"

    @property
    def error_hook(self) -> str:
        return f"{self.write_hook}.error"

    @property
    def rest_hook(self) -> str:
        """The model hook point of everything the splice writes besides the latents' decoder
        contributions (``b_dec``, the skip term, the error term): ``write = Σ z_i W_dec[i] + rest``."""
        return f"{self.write_hook}.rest"


def start_layers(model: Model, plan: Sequence[Entry], error: bool) -> list[int | None]:
    """Per entry, the layer a forward that edits its latents can start at, from the residual
    stream cached entering it: the earliest block the entry reads or writes in, and one block
    earlier while some entry of the splice writes that block's incoming residual stream (a forward
    started there would splice the cached, already spliced, value a second time). Below block 0
    is the embedding: with the error term added back a second splice changes nothing (0),
    without it there is no start (None).
    """
    import re

    def layer_of(name: str) -> int | None:
        found = re.match(r"blocks\.(\d+)\.", name)
        return None if found is None else int(found.group(1))

    entering = {
        lay for e in plan if (lay := layer_of(e.write_hook)) is not None
        and e.write_hook == model.resolve_hook(f"blocks.{lay}.hook_resid_pre")
    }  # fmt: skip
    out: list[int | None] = []
    for e in plan:
        layers = [layer_of(e.read_hook), layer_of(e.write_hook)]
        if None in layers:
            out.append(None)
            continue
        start = min(lay for lay in layers if lay is not None)
        while start in entering:
            start -= 1
        out.append(start if start >= 0 else (0 if error else None))
    return out


def hook_of(model: Model, name: str) -> str:
    """The canonical hook name of a site label (``L12.resid_post``, ``L12.mlp``) or hook name."""
    from interpkit.errors import SiteError
    from interpkit.sites import Site, resolve

    try:
        found = resolve(model, name)
    except SiteError as exc:
        raise DictionaryError(f"cannot splice at {name!r}: {exc}") from None
    if isinstance(found, Site):
        if found.head is not None:
            raise DictionaryError(f"cannot splice at {name!r}: a dictionary reads a whole site, not one head")
        return model.resolve_hook(found.hook)
    return found


def entries(model: Model, dictionaries: Any, skip_first: bool | None, error: bool = True) -> list[Entry]:
    """The splice plan: ``{site: dictionary}`` or dictionaries carrying their own sites."""
    if isinstance(dictionaries, Dictionary):
        dictionaries = [dictionaries]
    if isinstance(dictionaries, Sequence) and not isinstance(dictionaries, str):
        pairs = []
        for d in dictionaries:
            if not d.output_site:
                raise DictionaryError(f"{d!r} has no site: pass {{site: dictionary}}")
            pairs.append((d.output_site, d))
    elif isinstance(dictionaries, Mapping):
        pairs = list(dictionaries.items())
    else:
        raise DictionaryError(
            f"dictionaries must be {{site: Dictionary}} or a list of them, got {type(dictionaries).__name__}"
        )
    out = []
    for site, d in pairs:
        if not isinstance(d, Dictionary):
            raise DictionaryError(f"the value for {site!r} is a {type(d).__name__}, not a Dictionary")
        write = hook_of(model, site)
        if d.kind == "sae":
            read = write
        else:
            if not d.input_site:
                raise DictionaryError(
                    f"transcoder for {site!r} has no input_site: set it (e.g. 'blocks.12.mlp.hook_in')"
                )
            read = hook_of(model, d.input_site)
        first = d.meta.get("training", {}).get("exclude_first", False) if skip_first is None else skip_first
        out.append(Entry(site, d, read, write, bool(first), d.meta.get("skip_norm_above")))
    for e, start in zip(out, start_layers(model, out, error), strict=True):
        e.start_layer = start
    writes = [e.write_hook for e in out]
    if len(set(writes)) != len(writes):
        raise DictionaryError(f"two dictionaries write the same hook: {writes}")
    return out


class Splice:
    """The running splice: its entries, hook points for latents and errors, and captured tensors."""

    def __init__(self, plan: list[Entry], error: bool, capture: bool, model: Any = None) -> None:
        from transformer_lens.hook_points import HookPoint

        self.model = model
        self.entries = {e.site: e for e in plan}
        self.error = error
        self.capture = capture
        self.latents: dict[str, torch.Tensor] = {}
        self.errors: dict[str, torch.Tensor] = {}
        self._hooks: dict[str, list[HookFn]] = {}
        # model-level hook points: what every engine (cache, patching, attribution, probing) hooks
        self.points = {name: HookPoint() for e in plan for name in (e.latents_hook, e.error_hook, e.rest_hook)}
        for e in plan:  # what a sweep over the latents needs to know of them
            self.points[e.latents_hook].width = e.dictionary.n_latents
            self.points[e.latents_hook].start_layer = e.start_layer

    def hook_names(self) -> list[str]:
        """Every hook point of the splice (``"{site}.latents"``, ``"{site}.error"``)."""
        return [name for e in self.entries.values() for name in (e.latents_name, e.error_name)]

    def add_hook(self, name: str, fn: HookFn) -> None:
        """Call ``fn(tensor, hook)`` at hook point ``name``; a returned tensor replaces the latents or error."""
        if name not in self.hook_names():
            from interpkit.errors import closest

            near = closest(name, self.hook_names())
            raise DictionaryError(
                f"no splice hook point {name!r}"
                + (f"; closest: {', '.join(near)}" if near else "")
                + f". Hook points: {', '.join(self.hook_names())}"
            )
        self._hooks.setdefault(name, []).append(fn)

    def reset_hooks(self) -> None:
        self._hooks.clear()

    def senders(self, latents: Mapping[int | str, Sequence[int]] | None = None) -> list[Any]:
        """Sender kinds for :func:`interpkit.graph.build_graph` with this splice's latents as nodes.

        Embeddings and heads as usual; at each spliced MLP one sender per latent (``L1.mlp#17``)
        and one for the rest (``L1.mlp#rest``: ``b_dec``, skip and error terms); whole MLPs
        elsewhere. ``latents`` ({layer or site: indices}) keeps only those latents as nodes of their
        own, the others of each spliced layer summed into one node ``L1.mlp#other`` (what an
        attribution graph's circuit needs: a few latents, not tens of thousands). Only dictionaries
        that write an MLP output qualify (GraphError otherwise).

        >>> graph = build_graph(model, senders=splice.senders())   # doctest: +SKIP
        """
        from interpkit.dictionaries._graph_kinds import splice_senders

        return splice_senders(self.model, list(self.entries.values()), latents)

    def _run_hooks(self, name: str, value: torch.Tensor) -> torch.Tensor:
        for fn in self._hooks.get(name, ()):
            new = fn(value, _Point(name))
            if new is not None:
                if new.shape != value.shape:
                    raise DictionaryError(
                        f"hook at {name} returned shape {tuple(new.shape)}, expected {tuple(value.shape)}"
                    )
                value = new
        return value

    def ablate(self, site: str, latents: Sequence[int], positions: Any = None, value: float = 0.0) -> None:
        """Set ``latents`` of ``site`` (at ``positions``, default all) to ``value`` in every forward."""
        import torch

        idx = torch.as_tensor(list(latents), dtype=torch.long)

        def fn(z: torch.Tensor, hook: Any) -> torch.Tensor:
            rows = torch.arange(z.shape[1]) if positions is None else torch.as_tensor(positions, dtype=torch.long)
            mask = torch.zeros(z.shape[1], z.shape[2], dtype=torch.bool, device=z.device)
            mask[rows[:, None], idx[None, :]] = True
            return torch.where(mask, torch.full_like(z, value), z)

        self.add_hook(f"{site}.latents", fn)

    def patch(self, site: str, values: torch.Tensor, latents: Sequence[int] | None = None) -> None:
        """Replace ``site``'s latents (all, or the columns ``latents``) by ``values`` (broadcast to them)."""
        import torch

        idx = None if latents is None else torch.as_tensor(list(latents), dtype=torch.long)

        def fn(z: torch.Tensor, hook: Any) -> torch.Tensor:
            if idx is None:
                return values.to(z).expand_as(z).clone()
            z = z.clone()
            z[..., idx] = values.to(z).expand_as(z[..., idx])
            return z

        self.add_hook(f"{site}.latents", fn)

    # ------------------------------------------------------------------ the model hooks
    def model_hooks(self) -> list[tuple[str, HookFn]]:
        out: list[tuple[str, HookFn]] = []
        for e in self.entries.values():
            inputs: dict[str, torch.Tensor] = {}
            if e.read_hook != e.write_hook:
                out.append((e.read_hook, self._reader(e, inputs)))
            out.append((e.write_hook, self._writer(e, inputs)))
        return out

    def _reader(self, e: Entry, inputs: dict[str, torch.Tensor]) -> HookFn:
        def read(act: torch.Tensor, hook: Any) -> None:
            inputs["x"] = act

        return read

    def _writer(self, e: Entry, inputs: dict[str, torch.Tensor]) -> HookFn:
        def write(act: torch.Tensor, hook: Any) -> torch.Tensor:
            x = act if e.read_hook == e.write_hook else inputs.pop("x", None)
            if x is None:
                raise DictionaryError(f"{e.read_hook} did not fire before {e.write_hook}: cannot splice {e.site}")
            return self._replace(e, x, act)

        return write

    def _replace(self, e: Entry, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        import torch

        d = e.dictionary
        if x.shape[-1] != d.d_in or act.shape[-1] != d.d_out:
            raise DictionaryError(
                f"the dictionary for {e.site} reads width {d.d_in} and writes {d.d_out}, but {e.read_hook} has "
                f"width {x.shape[-1]} and {e.write_hook} {act.shape[-1]}: wrong site or wrong dictionary"
            )
        d = d.to(device=act.device) if d.device != act.device else d
        keep = e.skipped(act)  # tokens that keep their activation: no latent writes there
        z = d.encode(x)
        if bool(keep.any()):
            z = torch.where(keep[..., None], torch.zeros((), dtype=z.dtype, device=z.device), z)
        skip = d.skip(x)
        err = None
        if self.error:
            with torch.no_grad():
                clean = d.decode(z) if skip is None else d.decode(z) + skip
                err = self._run_hooks(e.error_name, (act - clean.to(act.dtype)).detach())
            err = self.points[e.error_hook](err)
        z = self.points[e.latents_hook](self._run_hooks(e.latents_name, z))
        writes = d.decode(z) - d.b_dec  # Σ z_i W_dec[i]: what the latents themselves write
        out = writes + d.b_dec if skip is None else writes + d.b_dec + skip
        if err is not None:
            out = out + err
        if bool(keep.any()):
            out = torch.where(keep[..., None], act.to(out.dtype), out)
        out = (writes + self.points[e.rest_hook](out - writes)).to(act.dtype)
        if self.capture:
            self.latents[e.site] = z
            if err is not None:
                self.errors[e.site] = err
        return out


@contextlib.contextmanager
def spliced(
    model: Model,
    dictionaries: Mapping[str, Dictionary] | Sequence[Dictionary] | Dictionary,
    error: bool = True,
    *,
    skip_first: bool | None = None,
    capture: bool = False,
) -> Iterator[Splice]:
    """Splice ``dictionaries`` into ``model`` for the body of the ``with`` (see the module doc).

    ``capture``: keep each forward's latents (and error terms) in ``splice.latents[site]``
    (``splice.errors[site]``). Hooks are removed on exit, also on error.

    >>> import interpkit as ik, torch
    >>> model = ik.load_model("toy-induction")
    >>> sae = ik.dictionaries.Dictionary.random(d_in=128, n_latents=256, k=8, input_site="L1.resid_pre")
    >>> tokens = torch.tensor([[1, 2, 3, 4]])
    >>> with ik.dictionaries.spliced(model, {"L1.resid_pre": sae}, capture=True) as splice:
    ...     logits = model(tokens)
    >>> torch.allclose(logits, model(tokens), atol=1e-4), tuple(splice.latents["L1.resid_pre"].shape)
    (True, (1, 4, 256))
    """
    from interpkit.hooks import hooks

    splice = Splice(entries(model, dictionaries, skip_first, error), error, capture, model)
    try:
        for name, point in splice.points.items():
            model.attach_hook_point(name, point)
        with hooks(model, fwd=splice.model_hooks()):
            yield splice
    finally:
        for name in splice.points:
            model.detach_hook_point(name)
