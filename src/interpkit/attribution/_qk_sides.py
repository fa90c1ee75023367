"""The machinery of QK attribution (:mod:`interpkit.attribution.qk`): each residual-stream term's
share of a layer's queries and keys, read through that layer's norms frozen at the run, its
``W_Q``/``W_K`` and biases, its query/key norms linearised at the run's scale, and rotary."""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

from interpkit.attribution.atp import AttributionError
from interpkit.models.anatomy import Norm

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model


def _norm_of(module: Any, centre: bool) -> Norm:
    from interpkit.models.anatomy import norm_affine, norm_eps

    inner = getattr(module, "_original_component", module)
    eps = norm_eps(inner)
    if getattr(inner, "weight", None) is None:
        return Norm(centre, None, None, eps)
    gain, bias = norm_affine(inner, eps)
    return Norm(centre, gain.double(), None if bias is None else bias.double(), eps)


@dataclasses.dataclass
class _Reads:
    """How one attention layer reads queries and keys from the residual stream (float64)."""

    ln1: Norm | None
    w_q: torch.Tensor  # (d_model, n_heads * d_head)
    w_k: torch.Tensor  # (d_model, n_kv * d_head)
    b_q: torch.Tensor  # (n_heads * d_head,)
    b_k: torch.Tensor
    q_norm: Norm | None
    k_norm: Norm | None
    per_head_norm: bool  # the q/k norms act on each head's vector (Qwen3), else on the whole (OLMo2)
    scale: float
    softcap: float | None
    scores_hooked: bool  # hook_attn_scores holds the pre-softmax scores (not so on a plain AttentionBridge)


def _reads(model: Model, layer: int) -> _Reads:
    import torch

    c = model.cfg
    attn = model.bridge.blocks[layer].attn
    inner = getattr(attn, "_original_component", attn)
    flat = lambda w: w.detach().double().permute(1, 0, 2).reshape(c.d_model, -1)  # noqa: E731

    def bias(b: Any, n: int) -> torch.Tensor:
        return torch.zeros(n * c.d_head, dtype=torch.float64) if b is None else b.detach().double().reshape(-1)

    bridge_cfg = model.bridge.cfg
    if bool(getattr(bridge_cfg, "qk_norm_after_rope", False)):
        raise AttributionError(f"{model.name} normalises queries and keys after rotary: QK attribution refuses it")
    for flag in ("rotary_adjacent_pairs", "rotary_interleaved_cos_sin"):
        if bool(getattr(bridge_cfg, flag, False)):
            raise AttributionError(f"{model.name} uses {flag}: QK attribution implements rotate-half rotary only")
    if c.positional == "rotary" and f"blocks.{layer}.attn.hook_cos" not in model.bridge.hook_dict:
        raise AttributionError(
            f"{model.name} applies rotary inside its attention module, out of QK attribution's sight"
        )
    norm = model.anatomy.ln1(layer)  # the identity where there is none (OLMo2 has no norm before attention)
    ln1 = None if not norm.present else Norm(
        norm.centre, None if norm.gain is None else norm.gain.double(),
        None if norm.bias is None else norm.bias.double(), norm.eps,
    )  # fmt: skip
    q_norm = getattr(attn, "q_norm", None) if "q_norm" in getattr(attn, "submodules", {}) else None
    k_norm = getattr(attn, "k_norm", None) if "k_norm" in getattr(attn, "submodules", {}) else None
    has_qk = q_norm is not None and getattr(q_norm, "_original_component", None) is not None
    softcap = getattr(inner, "attn_logit_softcapping", None)
    return _Reads(
        ln1=ln1,
        w_q=flat(attn.W_Q),
        w_k=flat(attn.W_K),
        b_q=bias(attn.b_Q, c.n_heads),
        b_k=bias(attn.b_K, c.n_kv_heads),
        q_norm=_qk_norm(q_norm) if has_qk else None,
        k_norm=_qk_norm(k_norm) if has_qk and k_norm is not None else None,
        per_head_norm=getattr(attn, "_qk_norm_phase", None) == "post_reshape",
        scale=_score_scale(model, layer, inner),
        softcap=float(softcap) if softcap else None,
        # A plain AttentionBridge fires hook_attn_scores after the fact, with the module's softmax weights.
        scores_hooked=type(attn).__name__ != "AttentionBridge",
    )


def _qk_norm(module: Any) -> Norm:
    import torch

    inner = getattr(module, "_original_component", module)
    return _norm_of(module, isinstance(inner, torch.nn.LayerNorm))


def _score_scale(model: Model, layer: int, inner: Any) -> float:
    """The factor the model multiplies ``Q·K`` by (HF ``scaling``; GPT-2's inverse-layer option)."""
    scaling = getattr(inner, "scaling", None)
    if scaling is not None:
        return float(scaling)
    if type(inner).__name__ == "NativeAttention":  # divides by its ``scale``
        return 1.0 / float(inner.scale)
    hf = getattr(getattr(model.bridge, "original_model", None), "config", None)
    bc = model.bridge.cfg
    unscaled = hf is not None and not getattr(hf, "scale_attn_weights", True)
    if unscaled or not getattr(bc, "use_attn_scale", True):
        scale = 1.0
    else:
        attn_scale = float(getattr(bc, "attn_scale", -1.0) or -1.0)
        scale = 1.0 / attn_scale if attn_scale > 0 else model.cfg.d_head**-0.5
    inverse = getattr(bc, "scale_attn_by_inverse_layer_idx", False) or getattr(
        hf, "scale_attn_by_inverse_layer_idx", False
    )
    return scale / (layer + 1) if inverse else scale


def _hooks(model: Model, layer: int, reads: _Reads, transcoders: dict[int, Any]) -> list[str]:
    c = model.cfg
    names = ["hook_embed", f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_attn_scores"]
    names.append(f"blocks.{layer}.attn.hook_pattern")
    if c.positional == "standard" and "hook_pos_embed" in model.bridge.hook_dict:
        names.append("hook_pos_embed")
    names += [f"blocks.{lay}.attn.hook_z" for lay in range(layer)]
    names += [] if c.attn_only else [f"blocks.{lay}.hook_mlp_out" for lay in range(layer)]
    if reads.ln1 is not None:
        names.append(f"blocks.{layer}.ln1.hook_scale")
    if c.positional == "rotary":
        names += [f"blocks.{layer}.attn.hook_cos", f"blocks.{layer}.attn.hook_sin"]
    if reads.q_norm is not None or not reads.scores_hooked:
        names += [f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"]
    for lay in transcoders:
        names += [f"blocks.{lay}.mlp.hook_in", f"blocks.{lay}.mlp.hook_out"]
    return names


def _transcoder_map(model: Model, transcoders: Any, layer: int) -> dict[int, Any]:
    if transcoders is None:
        return {}
    items = transcoders.items() if isinstance(transcoders, dict) else enumerate(transcoders)
    out = {int(lay): tc for lay, tc in items if tc is not None}
    bad = [lay for lay in out if not 0 <= lay < model.cfg.n_layers]
    if bad:
        raise AttributionError(f"transcoder layers {bad} are out of range 0..{model.cfg.n_layers - 1}")
    if model.cfg.attn_only and out:
        raise AttributionError(f"{model.name} is attention-only: it has no MLPs for transcoders to replace")
    return {lay: tc for lay, tc in out.items() if lay < layer}


@dataclasses.dataclass
class QKSides:
    """Each term's share of every head's query and of every KV head's key, at every position.

    ``q`` ``(term, batch, pos, n_heads, d_head)`` and ``k`` ``(term, batch, pos, n_kv, d_head)``
    (rotated, float64); ``scores`` the model's ``hook_attn_scores`` ``(batch, head, q, k)``.
    """

    labels: list[str]
    q: torch.Tensor
    k: torch.Tensor
    scores: torch.Tensor
    pattern: torch.Tensor
    scale: float
    softcap: float | None
    tokens: torch.Tensor
    last: torch.Tensor  # (batch,) each example's last real position

    def matrix(self, head: int, query_pos: torch.Tensor, key_pos: torch.Tensor, group: int) -> torch.Tensor:
        """``M`` ``(batch, query_term, key_term)`` at each example's (query_pos, key_pos)."""
        import torch

        rows = torch.arange(self.q.shape[1])
        q = self.q[:, rows, query_pos.cpu(), head]  # (term, batch, d_head)
        k = self.k[:, rows, key_pos.cpu(), head // group]
        return torch.einsum("ibe,jbe->bij", q, k) * self.scale


def qk_sides(model: Model, tokens: Any, layer: int, *, transcoders: Any = None) -> QKSides:
    """The per-term query and key reads of ``layer`` on ``tokens`` (ids, text or a Task)."""
    import torch

    from interpkit.cache import run

    reads = _reads(model, layer)
    tcs = _transcoder_map(model, transcoders, layer)
    cache = run(model, tokens, _hooks(model, layer, reads, tcs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a residual decomposition that misses is a failure here
        decomposed = cache.decompose_resid(layer)
    terms, labels = _grouped(decomposed.scores.double(), decomposed.labels["component"])
    if tcs:
        terms, labels = _split_transcoders(model, cache, terms, labels, tcs)
    *rest, bias = terms.unbind(0)  # the constants' residual share: its norm image gets ln1's bias
    x = torch.stack([*rest, bias])
    if reads.ln1 is not None:
        scale = cache[f"blocks.{layer}.ln1.hook_scale"].double()  # (batch, pos, 1)
        x = reads.ln1.linear(x, scale)
        if reads.ln1.bias is not None:
            x[-1] = x[-1] + reads.ln1.bias
    q = x @ reads.w_q  # (term, batch, pos, n_heads * d_head)
    k = x @ reads.w_k
    q[-1], k[-1] = q[-1] + reads.b_q, k[-1] + reads.b_k
    c = model.cfg
    if reads.q_norm is not None:
        q = _linearise_qk(q, cache[f"blocks.{layer}.attn.hook_q"], reads.q_norm, reads.per_head_norm, c.d_head)
        if reads.k_norm is not None:
            k = _linearise_qk(k, cache[f"blocks.{layer}.attn.hook_k"], reads.k_norm, reads.per_head_norm, c.d_head)
    q = q.unflatten(-1, (c.n_heads, c.d_head))
    k = k.unflatten(-1, (c.n_kv_heads, c.d_head))
    if c.positional == "rotary":
        cos = cache[f"blocks.{layer}.attn.hook_cos"].double()
        sin = cache[f"blocks.{layer}.attn.hook_sin"].double()
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    return QKSides(
        labels=labels,
        q=q,
        k=k,
        scores=_model_scores(model, layer, cache, reads),
        pattern=cache[f"blocks.{layer}.attn.hook_pattern"].double().cpu(),
        scale=reads.scale,
        softcap=reads.softcap,
        tokens=cache.tokens,
        last=_last_positions(cache),
    )


def _model_scores(model: Model, layer: int, cache: Any, reads: _Reads) -> torch.Tensor:
    """The model's pre-softmax scores ``(batch, head, q, k)``: its ``hook_attn_scores``, or where that
    hook carries the softmax weights (a plain AttentionBridge, e.g. native models), ``scale * q·k``
    from its ``hook_q`` and ``hook_k`` (no rotary there: refused above), soft-capped as the model does."""
    import torch

    if reads.scores_hooked:
        return cache[f"blocks.{layer}.attn.hook_attn_scores"].double().cpu()
    q = cache[f"blocks.{layer}.attn.hook_q"].double()  # (batch, pos, head, d_head)
    k = cache[f"blocks.{layer}.attn.hook_k"].double().repeat_interleave(model.cfg.group_size, dim=2)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * reads.scale
    if reads.softcap:
        scores = reads.softcap * torch.tanh(scores / reads.softcap)
    return scores.cpu()


def _last_positions(cache: Any) -> torch.Tensor:
    import torch

    batch, n = cache.tokens.shape
    mask = getattr(cache, "attention_mask", None)
    if mask is None:
        return torch.full((batch,), n - 1)
    return mask.long().sum(1).cpu() - 1


def _grouped(terms: torch.Tensor, labels: list[str]) -> tuple[torch.Tensor, list[str]]:
    """The decomposition with every attention-bias term folded into one trailing ``bias`` term."""
    import torch

    keep = [i for i, lab in enumerate(labels) if not lab.endswith(".attn_bias")]
    bias = [i for i, lab in enumerate(labels) if lab.endswith(".attn_bias")]
    constant = terms[bias].sum(0) if bias else torch.zeros_like(terms[0])
    return torch.cat([terms[keep], constant[None]]), [labels[i] for i in keep] + ["bias"]


def _linearise_qk(x: torch.Tensor, raw: torch.Tensor, norm: Norm, per_head: bool, d_head: int) -> torch.Tensor:
    """Terms ``(term, batch, pos, heads * d_head)`` through a query/key norm frozen at the run's scale."""
    raw = raw.double().flatten(-2)  # (batch, pos, heads * d_head): the run's query before its norm
    if per_head:
        x, raw = x.unflatten(-1, (-1, d_head)), raw.unflatten(-1, (-1, d_head))
    out = norm.linear(x, norm.scale(raw))
    if norm.bias is not None:
        out[-1] = out[-1] + norm.bias
    return out.flatten(-2) if per_head else out


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary of ``x`` ``(term, batch, pos, head, d_head)`` at each position (partial if narrower)."""
    import torch

    rot = cos.shape[-1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # (batch, pos, 1, rot)
    xr, rest = x[..., :rot], x[..., rot:]
    half = rot // 2
    turned = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
    return torch.cat([xr * cos + turned * sin, rest], dim=-1)


def _split_transcoders(
    model: Model, cache: Any, terms: torch.Tensor, labels: list[str], tcs: dict[int, Any]
) -> tuple[torch.Tensor, list[str]]:
    """Replace each ``L{l}.mlp`` term by its transcoder's active latents, skip term and error."""
    import torch

    out, names = list(terms[:-1].unbind(0)), list(labels[:-1])
    bias = terms[-1].clone()
    for lay, tc in sorted(tcs.items()):
        i = names.index(f"L{lay}.mlp")
        x = cache[f"blocks.{lay}.mlp.hook_in"].double()
        raw = cache[f"blocks.{lay}.mlp.hook_out"].double()  # the MLP's own output, before any post-norm
        with torch.no_grad():
            z = tc.encode(x.to(tc.W_dec.dtype)).double()  # (batch, pos, n_latents)
        w_dec = tc.W_dec.detach().double()
        b_dec = tc.b_dec.detach().double() if getattr(tc, "b_dec", None) is not None else torch.zeros_like(raw[0, 0])
        skip = x @ tc.W_skip.detach().double().T if getattr(tc, "W_skip", None) is not None else None
        active = (z != 0).flatten(0, 1).any(0).nonzero()[:, 0].tolist()
        parts = [z[..., a, None] * w_dec[a] for a in active]
        part_names = [f"L{lay}.tc{a}" for a in active]
        recon = z @ w_dec + b_dec + (0 if skip is None else skip)
        if skip is not None:
            parts.append(skip)
            part_names.append(f"L{lay}.tc_skip")
        parts.append(raw - recon)
        part_names.append(f"L{lay}.tc_error")
        post = model.anatomy.post_mlp_norm(lay)
        lay_bias = b_dec.expand_as(raw)
        if post is not None:  # the block's post-MLP norm, linearised at its run scale
            pbias = post.bias
            norm = Norm(post.centre, None if post.gain is None else post.gain.double(), None, post.eps)
            s = norm.scale(raw)
            parts = [norm.linear(p, s) for p in parts]
            lay_bias = norm.linear(lay_bias, s) + (0 if pbias is None else pbias.double())
        bias = bias + lay_bias
        out[i : i + 1] = parts
        names[i : i + 1] = part_names
    return torch.stack([*out, bias]), [*names, "bias"]
