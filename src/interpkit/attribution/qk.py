"""QK attribution: why a head attends where it does, as a bilinear sum over the residual stream.

A head's pre-softmax score at query q and key k is ``s = scale * Q_q · K_k``, where ``Q_q`` is the
query read from the residual stream at q (its ``ln1``, ``W_Q``, ``b_Q``, a query norm where the
model has one, rotary at position q) and ``K_k`` the key read at k. With every norm's scale frozen
at the run (the scale the run computed, as direct logit attribution freezes the final norm), each
read is affine in the residual stream, and the residual stream is a sum of terms (``embed``,
``pos_embed`` where the model learns positions, every earlier head ``L{l}H{h}``, every earlier MLP
``L{l}.mlp``). So ``s = Σ_ij M[i, j]`` with ``M[i, j] = scale * q_i · k_j``: ``q_i`` is term i's
share of the query at q, ``k_j`` term j's share of the key at k, and every constant (attention
output biases, the norms' biases, ``b_Q``, ``b_K``) is the one ``bias`` term. Rotary embeddings are
linear at a fixed position, so each term is rotated at its own side's position; grouped-query
attention reads the key of the head's shared KV head directly.

Query/key norms (Qwen3 per head, OLMo2 over all heads) are not linear in the residual stream; they
are *linearised at the run's scale, exactly as the norm computes it* (the scale of the whole
query or key vector, or of each head's, as the model normalises), like every other norm here. So
the terms still sum to the score exactly; what they do not say is how a term would move the
norm's scale. A model that normalises after rotary (HunYuan) is refused. With per-layer
transcoders given (an object with ``encode``, ``W_dec``, ``b_dec``, optional ``W_skip``; the
dictionaries issue), each such MLP's term is replaced by one term per latent active at the query
or key position (``L{l}.tc{i}``), its skip term ``L{l}.tc_skip`` and its reconstruction error
``L{l}.tc_error``; ``b_dec`` joins ``bias``.

The terms sum to ``blocks.{layer}.attn.hook_attn_scores`` at (head, q, k), same scaling, before
masking (``meta["residual_error"]``, relative, a few 1e-7 in float32). Attention soft-capping
(Gemma 2) is applied after the sum: the terms are those of the uncapped score (a note says so).

Reference: Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits" (the QK circuit);
circuit-tracer issue 53 (QK attribution for attribution graphs).

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> res = ik.attribution.qk(model, [[5, 9, 3, 5, 9]], layer=1, head=0, query_pos=3, key_pos=1)
    >>> res.dims
    ('query_term', 'key_term')
    >>> abs(float(res.scores.sum()) - res.meta["score"]) < 1e-3
    True
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.attribution._qk_sides import QKSides, qk_sides
from interpkit.attribution.atp import AttributionError
from interpkit.results import Result, make_provenance

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model

_HEAD = re.compile(r"^L(\d+)H(\d+)$")


class QKWarning(UserWarning):
    """The QK terms do not sum to the model's score: the architecture reads queries or keys in a way not modelled."""


def qk(
    model: Model,
    tokens: Any,
    layer: int,
    head: int,
    query_pos: Any = -1,
    key_pos: Any = None,
    *,
    transcoders: Any = None,
    seed: int = 0,
) -> Result:
    """The score of head ``(layer, head)`` at ``(query_pos, key_pos)`` as ``(query_term, key_term)`` terms.

    ``tokens``: ids ``(pos,)`` or ``(batch, pos)``, a text, a list of texts or a Task (its clean
    prompts). ``query_pos``: an int (negative counts back from each example's last real token),
    ``"answer"`` for a Task, or one position per example. ``key_pos``: likewise, or None for the
    key the head attends to most at the query. Scores are the mean over examples; the per-example
    matrices are in ``extras["per_example"]``, the model's own scores in ``extras["actual"]``.

    >>> res = ik.attribution.qk(model, "The cat sat on the mat. The cat", 17, 3)     # doctest: +SKIP
    >>> res.top(3)                                                                  # doctest: +SKIP
    """
    layer, head = _check_head(model, layer, head)
    sides = qk_sides(model, tokens, layer, transcoders=transcoders)
    q_at = _positions(query_pos, tokens, sides, "query_pos")
    k_at = _attended(sides, head, q_at) if key_pos is None else _positions(key_pos, tokens, sides, "key_pos")
    if bool((k_at > q_at).any()):
        bad = int((k_at > q_at).nonzero()[0, 0])
        raise AttributionError(
            f"key position {int(k_at[bad])} comes after query position {int(q_at[bad])} (example {bad}): "
            "a causal head masks it; give key_pos <= query_pos"
        )
    exact = sides.matrix(head, q_at, k_at, model.cfg.group_size)  # (batch, term, term), float64
    actual, gap = _check(sides, exact, head, q_at, k_at)
    per_example = exact.float()
    labels = sides.labels
    meta = {
        "layer": layer,
        "head": head,
        "query_pos": q_at.tolist(),
        "key_pos": k_at.tolist(),
        "score": float(actual.mean()),
        "residual_error": float(gap.max()),
        "scale": sides.scale,
        "norms": "frozen at the run's scales (query/key norms linearised at the run's scale)",
    }
    if sides.softcap:
        meta["note"] = (
            f"the model soft-caps attention scores at {sides.softcap:g}: the terms sum to the uncapped score; "
            "score is the capped one the model uses"
        )
    return Result(
        scores=per_example.mean(0),
        dims=("query_term", "key_term"),
        labels={"query_term": list(labels), "key_term": list(labels)},
        metric="attn_score",
        clean_value=float(actual.mean()),
        kind="qk",
        meta=meta,
        extras={"per_example": per_example, "actual": actual},
        provenance=make_provenance(model, tokens if _is_task(tokens) else None, seed),
    )


def qk_loadings(
    model: Model, tokens: Any, heads: str | Sequence[Any], *, query_pos: Any = None, key_pos: Any = None, seed: int = 0
) -> Result:
    """Per head, how much each earlier component's read on the query side and on the key side adds
    to the score at the key the head attends to (``(head, side, term)``, mean over examples).

    The query-side loading of term i is ``Σ_j M[i, j]`` (its query share against the whole key),
    the key-side loading of term j is ``Σ_i M[i, j]``; each side's loadings sum to the score.
    ``heads``: labels such as ``"L1H0"`` or ``(layer, head)`` pairs. ``query_pos`` defaults to a
    Task's answer position (else the last token); ``key_pos`` to the most attended key.

    >>> task = ik.tasks.load("induction", model, n=8)                                # doctest: +SKIP
    >>> res = ik.attribution.qk_loadings(model, task, ["L1H0", "L1H1"])               # doctest: +SKIP
    """
    import torch

    pairs = [_check_head(model, *_head_spec(h)) for h in ([heads] if isinstance(heads, str) else heads)]
    if not pairs:
        raise AttributionError("qk_loadings needs at least one head, e.g. heads=['L1H0']")
    if query_pos is None:
        query_pos = "answer" if _is_task(tokens) else -1
    names = _all_terms(model, max(layer for layer, _ in pairs))
    out = torch.zeros(len(pairs), 2, len(names))
    by_layer: dict[int, QKSides] = {}
    scores = []
    for i, (layer, head) in enumerate(pairs):
        sides = by_layer.get(layer) or by_layer.setdefault(layer, qk_sides(model, tokens, layer))
        q_at = _positions(query_pos, tokens, sides, "query_pos")
        k_at = _attended(sides, head, q_at) if key_pos is None else _positions(key_pos, tokens, sides, "key_pos")
        m = sides.matrix(head, q_at, k_at, model.cfg.group_size)
        actual, _ = _check(sides, m, head, q_at, k_at)
        m = m.float()
        scores.append(float(actual.mean()))
        idx = torch.tensor([names.index(lab) for lab in sides.labels])
        out[i, 0, idx] = m.sum(2).mean(0)
        out[i, 1, idx] = m.sum(1).mean(0)
    return Result(
        scores=out,
        dims=("head", "side", "term"),
        labels={"head": [f"L{lay}H{h}" for lay, h in pairs], "side": ["query", "key"], "term": names},
        metric="attn_score",
        kind="qk_loadings",
        meta={"query_pos": str(query_pos), "key_pos": "most attended" if key_pos is None else str(key_pos)},
        extras={"score": torch.tensor(scores)},
        provenance=make_provenance(model, tokens if _is_task(tokens) else None, seed),
    )


def _is_task(tokens: Any) -> bool:
    from interpkit.tasks import Task

    return isinstance(tokens, Task)


def _head_spec(head: Any) -> tuple[int, int]:
    if isinstance(head, str):
        m = _HEAD.match(head.strip())
        if not m:
            raise AttributionError(f"head {head!r} is not a head label like 'L1H0'")
        return int(m.group(1)), int(m.group(2))
    try:
        layer, h = head
        return int(layer), int(h)
    except (TypeError, ValueError) as exc:
        raise AttributionError(f"head {head!r} is neither a label like 'L1H0' nor a (layer, head) pair") from exc


def _check_head(model: Model, layer: int, head: int) -> tuple[int, int]:
    c = model.cfg
    if not 0 <= int(layer) < c.n_layers:
        raise AttributionError(f"layer {layer} is out of range for {model.name} (layers 0..{c.n_layers - 1})")
    if not 0 <= int(head) < c.n_heads:
        raise AttributionError(f"head {head} is out of range for {model.name} (heads 0..{c.n_heads - 1})")
    return int(layer), int(head)


def _all_terms(model: Model, layer: int) -> list[str]:
    c = model.cfg
    names = ["embed"]
    if c.positional == "standard" and "hook_pos_embed" in model.bridge.hook_dict:
        names.append("pos_embed")
    for lay in range(layer):
        names += [f"L{lay}H{h}" for h in range(c.n_heads)] + ([] if c.attn_only else [f"L{lay}.mlp"])
    return [*names, "bias"]


def _positions(value: Any, tokens: Any, sides: QKSides, what: str) -> torch.Tensor:
    """One position per example: negative ints count back from each example's last real token."""
    import torch

    batch = sides.tokens.shape[0]
    last = sides.last.cpu()
    if isinstance(value, str):
        if value != "answer" or not _is_task(tokens):
            raise AttributionError(f"{what}={value!r}: only 'answer' is a named position, and only for a Task")
        pos = tokens.answer_pos.cpu().long()
    else:
        pos = torch.as_tensor(value).long().reshape(-1).cpu()
        if pos.numel() == 1:
            pos = pos.expand(batch)
        if pos.numel() != batch:
            raise AttributionError(f"{what} gives {pos.numel()} positions for {batch} examples")
        pos = torch.where(pos < 0, last + 1 + pos, pos)
    if bool(((pos < 0) | (pos > last)).any()):
        raise AttributionError(f"{what} {value!r} is outside the prompt (positions 0..{int(last.min())})")
    return pos


def _attended(sides: QKSides, head: int, q_at: torch.Tensor) -> torch.Tensor:
    import torch

    rows = torch.arange(len(q_at))
    return sides.pattern[rows, head, q_at].argmax(-1)


def _check(
    sides: QKSides, m: torch.Tensor, head: int, q_at: torch.Tensor, k_at: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's scores ``(batch,)`` and each example's relative gap to the sum of the terms."""
    import torch

    rows = torch.arange(len(q_at))
    actual = sides.scores[rows, head, q_at, k_at].float()
    total = m.sum((1, 2))
    if sides.softcap:
        total = sides.softcap * torch.tanh(total / sides.softcap)
    gap = (total - actual.double()).abs() / actual.double().abs().clamp_min(1e-6)
    if bool((gap > 1e-3).any()) and float((total - actual.double()).abs().max()) > 1e-5:
        warnings.warn(
            f"the QK terms miss the model's score by {float(gap.max()):.2e} (relative): this architecture reads "
            "queries or keys in a way QK attribution does not model",
            QKWarning,
            stacklevel=3,
        )
    return actual, gap.float()
