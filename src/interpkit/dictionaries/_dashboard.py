"""Feature dashboards: one self-contained HTML file describing many latents, with a search box.

For each latent (after Bricken et al. 2023, "Towards monosemanticity", and Neuronpedia's
feature pages): its firing density over the scanned tokens, a histogram of its non-zero
activations, the top-activating contexts from an activation store (each token shaded by the
latent's activation there, the maximum underlined), and the tokens its decoder direction
promotes and suppresses most when read through the final norm's gain and the unembedding
(``W_dec[i] * g @ W_U``; Bloom's "logit weight distribution").

The page needs no network: histograms are inline SVG, the search is a few lines of script
that hide the cards whose latent number or text does not match. Like the reports, the page
writes what it saw onto ``<body>`` (``data-ik-errors``, ``data-ik-cards``, ``data-ik-visible``)
for the browser test; opening it as ``dashboard.html#q=word`` runs that search on load.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.dictionaries._dictionary import Dictionary
from interpkit.dictionaries._errors import DictionaryError

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model


def scan(
    dictionary: Dictionary, store: Any, latents: Sequence[int], *, n_examples: int, window: int, skip_first: bool
) -> dict[str, Any]:
    """Densities, top activations (value, token index) and activation samples of ``latents`` over a store."""
    import torch

    from interpkit.dictionaries._stream import StoreReader

    reader = StoreReader(store, dictionary.input_site)
    if reader.d_in != dictionary.d_in:
        raise DictionaryError(
            f"the dictionary reads width {dictionary.d_in}, but {dictionary.input_site!r} in the store has width {reader.d_in}"
        )
    idx = torch.as_tensor(list(latents), dtype=torch.long)
    top_v = torch.full((n_examples, len(idx)), -torch.inf)
    top_i = torch.zeros((n_examples, len(idx)), dtype=torch.long)
    counts = torch.zeros(len(idx), dtype=torch.long)
    samples: list[list[torch.Tensor]] = [[] for _ in idx]
    n = 0
    stop = min(window, reader.n_tokens)
    for start in range(0, stop, 8192):
        x, _, pos = reader.read(start, min(start + 8192, stop))
        with torch.no_grad():
            z = dictionary.encode(x.float())[:, idx]
        skip = pos == 0 if skip_first else torch.zeros_like(pos, dtype=torch.bool)
        if dictionary.kind == "sae" and dictionary.meta.get("skip_norm_above") is not None:
            skip |= x.float().norm(dim=-1) > dictionary.meta["skip_norm_above"]
        z[skip] = 0
        n += int((~skip).sum())
        counts += (z > 0).sum(0)
        v, i = torch.cat([top_v, z]).topk(n_examples, dim=0)
        top_i = torch.cat([top_i, torch.arange(start, start + x.shape[0])[:, None].expand_as(z)]).gather(0, i)
        top_v = v
        for j in range(len(idx)):
            if sum(s.numel() for s in samples[j]) < 50_000:
                samples[j].append(z[:, j][z[:, j] > 0])
    return {
        "latents": idx.tolist(),
        "n_tokens": n,
        "counts": counts.tolist(),
        "top_values": top_v,
        "top_index": top_i,
        "samples": [torch.cat(s) if s else torch.zeros(0) for s in samples],
    }


def _context(store: Any, dictionary: Dictionary, token: int, latent: int, before: int, after: int) -> dict[str, Any]:
    """The tokens around global token ``token`` (within its example) and the latent's activation on each."""
    import torch

    example = int(store.get("example", token))
    lo, hi = store.example_span(example)
    a, b = max(lo, token - before), min(hi, token + after + 1)
    x = store.get(dictionary.input_site, slice(a, b)).float()
    with torch.no_grad():
        acts = dictionary.encode(x)[:, latent]
    return {"ids": store.get("tokens", slice(a, b)).tolist(), "acts": acts.tolist(), "at": token - a}


def logit_effects(model: Model, dictionary: Dictionary, latents: Sequence[int], k: int = 8) -> list[dict[str, Any]]:
    """Top and bottom ``k`` tokens of ``W_dec[i]`` through the final norm's gain and ``W_U``, per latent."""
    import torch

    w_u, _ = model.anatomy.unembed
    if w_u.shape[0] != dictionary.d_out:
        return [{"top": [], "bottom": []} for _ in latents]
    rows = dictionary.W_dec[torch.as_tensor(list(latents), dtype=torch.long)].to(w_u)
    with torch.no_grad():
        norm = model.anatomy.final_norm
        rows = norm.linear(rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)) if norm.present else rows
        effect = rows @ w_u
    out = []
    for row in effect:
        top, bottom = row.topk(k), (-row).topk(k)
        out.append(
            {
                "top": [(int(i), float(v)) for v, i in zip(top.values, top.indices, strict=True)],
                "bottom": [(int(i), -float(v)) for v, i in zip(bottom.values, bottom.indices, strict=True)],
            }
        )
    return out


def dashboard(
    model: Model,
    dictionary: Dictionary,
    store: Any,
    path: str | os.PathLike,
    *,
    latents: Sequence[int] | None = None,
    n_examples: int = 8,
    window: int = 100_000,
    context: tuple[int, int] = (12, 4),
    skip_first: bool | None = None,
    title: str | None = None,
) -> Path:
    """Write feature dashboards of ``latents`` (default: the first 64) to one HTML file; returns its path.

    ``store``: an activation store (folder or object) holding the dictionary's ``input_site``
    and the token ids; the first ``window`` tokens are scanned.

    >>> ik.dictionaries.dashboard(model, sae, "acts/", "runs/sae/dashboard.html", latents=range(50))  # doctest: +SKIP
    """
    from interpkit.cache import ActivationStore
    from interpkit.results import write_text_atomic

    if dictionary.input_site is None:
        raise DictionaryError("the dictionary has no input_site: set it to the store's site")
    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    latents = list(range(min(64, dictionary.n_latents))) if latents is None else [int(i) for i in latents]
    bad = [i for i in latents if not 0 <= i < dictionary.n_latents]
    if bad:
        raise DictionaryError(f"latent(s) {bad[:5]} out of range: the dictionary has {dictionary.n_latents} latents")
    if skip_first is None:
        skip_first = bool(dictionary.meta.get("training", {}).get("exclude_first", False))
    found = scan(dictionary, store, latents, n_examples=n_examples, window=window, skip_first=skip_first)
    effects = logit_effects(model, dictionary, latents)
    cards = []
    for j, latent in enumerate(latents):
        tops = [
            _context(store, dictionary, int(found["top_index"][r, j]), latent, *context)
            for r in range(n_examples)
            if float(found["top_values"][r, j]) > 0
        ]
        cards.append(_card(model, latent, found, j, tops, effects[j]))
    head = title or f"Feature dashboards: {dictionary!r}"
    note = f"{found['n_tokens']} tokens scanned from {html.escape(str(store.path))}"
    text = _PAGE.format(title=html.escape(head), note=note, cards="\n".join(cards), script=_SCRIPT)
    return write_text_atomic(path, text)


def _tok(model: Model, i: int) -> str:
    text = model.tokenizer.decode([i]) if model.tokenizer is not None else f"<{i}>"
    return html.escape(text.replace("\n", "\u21b5"))


def _histogram(values: torch.Tensor, bins: int = 30) -> str:
    import torch

    if values.numel() == 0:
        return "<p class='muted'>never fires</p>"
    top = float(values.max())
    counts = torch.histc(values, bins=bins, min=0.0, max=top if top > 0 else 1.0)
    peak = float(counts.max()) or 1.0
    bars = "".join(
        f"<rect x='{i * 8}' y='{60 - 58 * float(c) / peak:.1f}' width='7' height='{58 * float(c) / peak:.1f}'/>"
        for i, c in enumerate(counts)
    )
    return f"<svg class='hist' width='{bins * 8}' height='62' role='img'><g>{bars}</g></svg><span class='muted'>0 .. {top:.3g}</span>"


def _card(
    model: Model, latent: int, found: dict[str, Any], j: int, tops: list[dict[str, Any]], effect: dict[str, Any]
) -> str:
    density = found["counts"][j] / max(found["n_tokens"], 1)
    rows = []
    for ctx in tops:
        peak = max(ctx["acts"]) or 1.0
        spans = "".join(
            f"<span style='background:rgba(255,110,0,{max(a, 0) / peak:.2f})' title='{a:.3f}'"
            + (" class='max'" if t == ctx["at"] else "")
            + f">{_tok(model, i)}</span>"
            for t, (i, a) in enumerate(zip(ctx["ids"], ctx["acts"], strict=True))
        )
        rows.append(f"<div class='ctx'><b>{ctx['acts'][ctx['at']]:.2f}</b> {spans}</div>")
    promote = ", ".join(f"<code>{_tok(model, i)}</code> {v:+.2f}" for i, v in effect["top"])
    suppress = ", ".join(f"<code>{_tok(model, i)}</code> {v:+.2f}" for i, v in effect["bottom"])
    return (
        f"<section class='card' data-latent='{latent}'><h2>latent {latent}</h2>"
        f"<p>density {density:.4%} ({found['counts'][j]} of {found['n_tokens']} tokens)</p>"
        f"{_histogram(found['samples'][j])}"
        f"<p><b>promotes</b> {promote or '-'}</p><p><b>suppresses</b> {suppress or '-'}</p>"
        f"{''.join(rows) or '<p class=muted>no activating context in the window</p>'}</section>"
    )


_SCRIPT = """
(function () {
  var errors = [];
  window.addEventListener('error', function (e) { errors.push(String(e.message)); status(); });
  function cards() { return Array.prototype.slice.call(document.querySelectorAll('section.card')); }
  function status() {
    var shown = cards().filter(function (c) { return c.style.display !== 'none'; }).length;
    document.body.setAttribute('data-ik-errors', JSON.stringify(errors));
    document.body.setAttribute('data-ik-cards', String(cards().length));
    document.body.setAttribute('data-ik-visible', String(shown));
  }
  function search(q) {
    q = q.trim().toLowerCase();
    cards().forEach(function (c) {
      var hit = !q || c.getAttribute('data-latent') === q || c.textContent.toLowerCase().indexOf(q) >= 0;
      c.style.display = hit ? '' : 'none';
    });
    status();
  }
  window.addEventListener('load', function () {
    var box = document.getElementById('search');
    box.addEventListener('input', function () { search(box.value); });
    var m = /[#&]q=([^&]*)/.exec(window.location.hash);
    if (m) { box.value = decodeURIComponent(m[1]); }
    search(box.value);
  });
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; padding: 0 1em; color: #222; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: 0.4em 1em; margin: 0.8em 0; }}
.card h2 {{ font-size: 1.05em; margin: 0.3em 0; }} .muted {{ color: #777; font-size: 0.85em; }}
.ctx {{ font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre-wrap; margin: 0.2em 0; }}
.ctx span.max {{ text-decoration: underline; }} svg.hist rect {{ fill: #2166ac; }}
#search {{ font-size: 1em; padding: 0.3em; width: 24em; }}
</style>
<script>{script}</script></head>
<body><h1>{title}</h1><p class="muted">{note}</p>
<input id="search" type="search" placeholder="search latents: number or text">
{cards}
</body></html>
"""
