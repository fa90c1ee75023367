"""Probe datasets from an on-disk activation store (``ik.cache.harvest`` / ``ik.cache.ActivationStore``).

For harvests too large to redo in memory: the store already holds every token's activations, its
token ids and, per token, the example and position it came from. ``from_store`` applies a
position rule per example, reads only the selected rows of the chosen sites (the store memory-maps
its shards) and attaches labels and a split, giving the same ``ProbeDataset`` as ``collect``.

Only the store's public reading interface is used, so any object providing it works:
``sites`` (names), ``len(store)`` (tokens), ``get(name, index=None)`` for a site or for
``"tokens"``, ``"example"`` and ``"position"`` (one value per token), and optionally
``select(names)`` to resolve a site name the store knows under another spelling.

    >>> from interpkit.probing import from_store
    >>> ds = from_store("runs/acts", labels, positions="last")               # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.errors import InterpkitError, SiteError, closest
from interpkit.probing._errors import ProbeError

if TYPE_CHECKING:
    from interpkit.probing._dataset import ProbeDataset

_LAYER_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)$")
_SUFFIX = {"attn_out": "attn", "mlp_out": "mlp"}


def _label(key: str) -> str:
    """``blocks.3.hook_resid_post`` -> ``L3.resid_post``; other names unchanged."""
    m = _LAYER_HOOK.match(key)
    return f"L{m.group(1)}.{_SUFFIX.get(m.group(2), m.group(2))}" if m else key


def _resolve(store: Any, name: str) -> str:
    """The store's key for ``name``: exact, by site label, or through ``store.select``; SiteError otherwise."""
    keys = list(store.sites)
    for key in keys:
        if name in (key, _label(key)):
            return key
    if hasattr(store, "select"):
        try:
            return store.select([name]).sites[0]
        except InterpkitError:
            pass
    labels = [_label(k) for k in keys]
    near = closest(name, labels)
    raise SiteError(
        f"site {name!r} is not in the store"
        + (f"; closest: {', '.join(near)}" if near else "")
        + f". It holds: {', '.join(labels[:12])}"
    )


def _open(store: Any) -> Any:
    if isinstance(store, (str, os.PathLike)):
        from interpkit.cache import ActivationStore

        return ActivationStore(store)
    missing = [a for a in ("sites", "get") if not hasattr(store, a)]
    if missing:
        raise ProbeError(f"{type(store).__name__} is not an activation store: it lacks {missing}")
    return store


def from_store(
    store: Any,
    labels: Sequence[Any],
    sites: Sequence[str] | None = None,
    positions: Any = "last",
    *,
    tokenizer: Any = None,
    answers: Sequence[str] | None = None,
    wrongs: Sequence[str] | None = None,
    kind: str | None = None,
    classes: Sequence[Any] | None = None,
    split: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    device: Any = None,
    dtype: Any = None,
) -> ProbeDataset:
    """A ``ProbeDataset`` from a store (path or ``ActivationStore``), one label (or list) per stored example.

    ``positions``: ``"last"``, ``"all"``, explicit positions per example, or (with ``tokenizer``,
    to turn ids into strings) ``"match:REGEX"`` or a callable. ``sites`` default to every site in
    the store; a name the store does not hold raises a SiteError listing the closest.
    """
    import torch

    from interpkit.probing._dataset import ProbeDataset, encode_labels
    from interpkit.probing._positions import select_positions

    store = _open(store)
    keys = [_resolve(store, s) for s in sites] if sites is not None else list(store.sites)
    if not keys:
        raise ProbeError("the store holds no sites")
    example = torch.as_tensor(store.get("example")).long()
    position = torch.as_tensor(store.get("position")).long()
    tokens = torch.as_tensor(store.get("tokens")).long()
    n_examples = int(example.max()) + 1 if len(example) else 0
    if len(labels) != n_examples:
        raise ProbeError(f"{len(labels)} labels were given for the store's {n_examples} examples; give one per example")
    order = torch.argsort(example * (int(position.max()) + 1) + position)  # example-major, position-minor
    starts = torch.searchsorted(example[order], torch.arange(n_examples + 1))
    ids = [tokens[order[starts[i] : starts[i + 1]]].tolist() for i in range(n_examples)]
    if isinstance(positions, str) and positions == "marked":
        raise ProbeError("position rule 'marked' needs the texts; a store holds token ids: give explicit positions")
    needs_text = callable(positions) or (isinstance(positions, str) and positions.startswith("match:"))
    if needs_text and tokenizer is None:
        raise ProbeError(f"position rule {positions!r} reads token strings: pass tokenizer= to from_store")
    str_tokens = [[tokenizer.decode([t]) for t in row] for row in ids] if needs_text else [[""] * len(r) for r in ids]
    picked = select_positions(positions, str_tokens, n_bos=0, skip_bos=False)
    y, class_names = encode_labels(labels, picked, kind, classes)
    rows = torch.cat([order[starts[i] + torch.tensor(p, dtype=torch.long)] for i, p in enumerate(picked)])
    per_site = [torch.as_tensor(store.get(k, rows)).reshape(len(rows), -1) for k in keys]
    widths = [t.shape[-1] for t in per_site]
    acts = torch.zeros((len(keys), len(rows), max(widths)), dtype=dtype or torch.float32)
    for i, t in enumerate(per_site):
        acts[i, :, : widths[i]] = t.to(acts.dtype)
    ex = torch.tensor([i for i, p in enumerate(picked) for _ in p], dtype=torch.long)
    pos = torch.tensor([q for p in picked for q in p], dtype=torch.long)
    manifest = getattr(store, "manifest", {}) or {}
    ds = ProbeDataset(
        acts=acts,
        y=y,
        example=ex,
        pos=pos,
        token=tokens[rows],
        split=torch.zeros_like(ex),
        sites=[_label(k) for k in keys],
        classes=class_names,
        widths=widths,
        source={"ids": ids, "positions": picked, "texts": None, "answers": answers, "wrongs": wrongs},
        meta={
            "positions": positions if isinstance(positions, str) else "explicit",
            "store": str(getattr(store, "path", type(store).__name__)),
            "model": manifest.get("model", {}) if isinstance(manifest.get("model"), dict) else {},
            "hooks": keys,
        },
    )
    ds = ds.resplit(split, seed)
    return _to(ds, device) if device is not None else ds


def _to(ds: ProbeDataset, device: Any) -> ProbeDataset:
    import dataclasses

    moved = {k: getattr(ds, k).to(device) for k in ("acts", "y", "example", "pos", "token", "split")}
    return dataclasses.replace(ds, **moved)
