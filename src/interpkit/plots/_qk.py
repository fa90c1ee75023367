"""QK attribution figures: the (query term x key term) heatmap of one score, and head loadings.

``qk_heatmap`` shows a ``kind="qk"`` Result (:func:`interpkit.attribution.qk`) restricted to the
terms that carry most of the score on either side (``top`` rows and columns by the summed
magnitude of their entries); a last row and column ``(rest)`` hold what the hidden terms add, so
the cells still sum to the score. ``qk_loadings_figure`` shows a ``kind="qk_loadings"`` Result as
one heatmap row per (head, side) over the terms with the largest loadings.

    >>> import torch
    >>> from interpkit.results import Result
    >>> from interpkit.plots import qk_heatmap
    >>> terms = ["embed", "L0H0", "L0H1", "bias"]
    >>> res = Result(torch.eye(4), ("query_term", "key_term"), {"query_term": terms, "key_term": terms},
    ...              metric="attn_score", kind="qk", meta={"layer": 1, "head": 0, "score": 4.0})
    >>> fig = qk_heatmap(res, top=2)
    >>> list(fig.data[0].y)
    ['embed', 'L0H0', '(rest)']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.errors import ResultError
from interpkit.plots._basic import axis_labels, heatmap

if TYPE_CHECKING:
    from interpkit.results import Result


def _kept(weight: Any, top: int) -> list[int]:
    import torch

    order = torch.argsort(weight, descending=True)[:top]
    return sorted(order.tolist())


def qk_heatmap(result: Result, top: int = 16, title: str | None = None) -> Any:
    """Heatmap of a QK attribution: the ``top`` query and key terms, the rest folded into ``(rest)``."""
    import torch

    from interpkit.results import Result

    if result.dims != ("query_term", "key_term"):
        raise ResultError(f"qk_heatmap needs a (query_term, key_term) result; got dims {result.dims}")
    m = result.scores.detach().double().cpu()
    rows, cols = _kept(m.abs().sum(1), top), _kept(m.abs().sum(0), top)
    shown = m[rows][:, cols]
    rest_rows = [i for i in range(m.shape[0]) if i not in rows]
    rest_cols = [j for j in range(m.shape[1]) if j not in cols]
    q_names = [axis_labels(result, "query_term")[i] for i in rows]
    k_names = [axis_labels(result, "key_term")[j] for j in cols]
    if rest_cols:
        shown = torch.cat([shown, m[rows][:, rest_cols].sum(1, keepdim=True)], 1)
        k_names.append("(rest)")
    if rest_rows:
        bottom = m[rest_rows][:, cols].sum(0)
        if rest_cols:
            bottom = torch.cat([bottom, m[rest_rows][:, rest_cols].sum().reshape(1)])
        shown = torch.cat([shown, bottom[None]], 0)
        q_names.append("(rest)")
    meta = result.meta or {}
    where = f"L{meta.get('layer', '?')}H{meta.get('head', '?')}"
    if "query_pos" in meta and "key_pos" in meta:
        where += f" · query {meta['query_pos']} · key {meta['key_pos']}"
    score = meta.get("score")
    name = title or f"QK attribution of {where}" + (f" · score {score:.4g}" if score is not None else "")
    view = Result(
        shown.float(),
        ("query_term", "key_term"),
        {"query_term": q_names, "key_term": k_names},
        metric=result.metric,
        kind="qk",
    )
    return heatmap(view, title=name)


def qk_loadings_figure(result: Result, top: int = 20, title: str | None = None) -> Any:
    """Heatmap of head loadings: rows ``L1H0 query`` / ``L1H0 key``, columns the ``top`` terms."""
    from interpkit.results import Result

    if result.dims != ("head", "side", "term"):
        raise ResultError(f"qk_loadings_figure needs a (head, side, term) result; got dims {result.dims}")
    values = result.scores.detach().float().cpu()
    flat = values.reshape(-1, values.shape[-1])
    cols = _kept(flat.abs().amax(0), top)
    names = [f"{h} {s}" for h in axis_labels(result, "head") for s in axis_labels(result, "side")]
    view = Result(
        flat[:, cols],
        ("head_side", "term"),
        {"head_side": names, "term": [axis_labels(result, "term")[j] for j in cols]},
        metric=result.metric,
        kind="qk_loadings",
    )
    return heatmap(view, title=title or "QK head loadings: what each head's query and key sides read")
