"""Residual-stream analyses over an ActivationCache, correct on raw (unfolded) TransformerBridges.

The residual stream is a sum: ``resid_final = embed [+ pos_embed] + sum_l (sum_h z_lh @ W_O[l,h]
+ b_O[l] + mlp_out_l)``. Where a block normalises its attention output before adding it (Gemma 2,
OLMo2: ``ln1_post``), that norm is linearised at this run like the final norm: each head's term
is its output divided by the scale of the whole attention output, times the norm's gain. Head outputs are computed here from ``hook_z`` and the bridge's
``W_O`` (hook_result does not fire on a bridge by default). Direct logit attribution
(Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits") pushes each term through
the final norm *linearised at this run*: centred (LayerNorm only), divided by the scale the run
actually computed (``ln_final.hook_scale``) and multiplied by the norm weight; the norm bias and
``b_U`` form one constant ``bias`` term. The terms then sum exactly to the model's logit
difference. TransformerLens's ``ActivationCache.logit_attrs`` assumes a folded, centred model and
is silently wrong on a raw bridge, so it is not used.

    >>> cache = ik.cache.run(model, tokens)                       # doctest: +SKIP
    >>> dla = cache.logit_attrs(answer=5, wrong=7)                 # doctest: +SKIP
    >>> dla.scores.sum(0)  # == logits[..., 5] - logits[..., 7]    # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from interpkit.cache._errors import CacheError, CacheWarning

if TYPE_CHECKING:
    import torch

    from interpkit.cache._activation_cache import ActivationCache
    from interpkit.results import Result


def _dtype(cache: ActivationCache, t: torch.Tensor) -> torch.dtype:
    import torch

    return torch.promote_types(t.dtype, torch.float32)


def _layer(cache: ActivationCache, layer: int | None) -> int:
    n = cache.model.cfg.n_layers
    layer = n if layer is None else int(layer)
    if not 0 <= layer <= n:
        raise CacheError(f"layer {layer} is out of range: give 0..{n} ({n} = the final residual stream)")
    return layer


def _result(
    cache: ActivationCache, scores: torch.Tensor, dims: tuple[str, ...], labels: list[str], kind: str
) -> Result:
    from interpkit.results import Result

    meta = {"positions": None if cache.positions is None else cache.positions.tolist()}
    return Result(scores, dims, {"component": labels}, kind=kind, meta=meta, provenance=cache.model.provenance())


def _resid_target(cache: ActivationCache, layer: int) -> str:
    n = cache.model.cfg.n_layers
    return f"blocks.{layer}.hook_resid_pre" if layer < n else f"blocks.{n - 1}.hook_resid_post"


def accumulated_resid(cache: ActivationCache, layer: int | None = None, mid: bool = False) -> Result:
    import torch

    layer = _layer(cache, layer)
    n = cache.model.cfg.n_layers
    if mid and cache.model.cfg.attn_only:
        raise CacheError("mid=True needs a model with MLPs: an attention-only model has no resid_mid")
    names, labels = [], []
    for ell in range(min(layer + 1, n)):
        names.append(f"blocks.{ell}.hook_resid_pre")
        labels.append(f"L{ell}.resid_pre")
        if mid and ell < layer:
            names.append(f"blocks.{ell}.hook_resid_mid")
            labels.append(f"L{ell}.resid_mid")
    if layer == n:
        names.append(f"blocks.{n - 1}.hook_resid_post")
        labels.append(f"L{n - 1}.resid_post")
    stack = torch.stack(cache.need(names))
    return _result(cache, stack.to(_dtype(cache, stack)), ("component", "batch", "pos", "d_model"), labels, "resid")


def _head_stack(cache: ActivationCache, layer: int) -> tuple[torch.Tensor, list[str]]:
    import torch

    c = cache.model.cfg
    z = torch.stack(cache.need([f"blocks.{ell}.attn.hook_z" for ell in range(layer)]))  # (l, b, p, h, e)
    w_o, _ = cache.model.anatomy.head_out
    dtype = _dtype(cache, z)
    out = torch.einsum("lbphe,lhem->lhbpm", z.to(dtype), w_o[:layer].to(z.device, dtype))
    labels = [f"L{ell}H{h}" for ell in range(layer) for h in range(c.n_heads)]
    return out.reshape(layer * c.n_heads, *out.shape[2:]), labels


def stack_head_results(cache: ActivationCache, layer: int | None = None) -> Result:
    layer = _layer(cache, layer)
    if layer == 0:
        raise CacheError("stack_head_results(layer=0) has no heads: give a layer of 1 or more")
    stack, labels = _head_stack(cache, layer)
    return _result(cache, stack, ("component", "batch", "pos", "d_model"), labels, "head_results")


def _components(cache: ActivationCache, layer: int) -> tuple[torch.Tensor, list[str]]:
    import torch

    c = cache.model.cfg
    pos_embed = c.positional == "standard" and "hook_pos_embed" in cache.model.bridge.hook_dict
    names = ["hook_embed", *(["hook_pos_embed"] if pos_embed else [])]
    names += [f"blocks.{ell}.attn.hook_z" for ell in range(layer)]
    names += [] if c.attn_only else [f"blocks.{ell}.hook_mlp_out" for ell in range(layer)]
    found = cache.need(names)  # one error naming everything missing
    embed = found[0]
    dtype = _dtype(cache, embed)
    parts: list[torch.Tensor] = [embed.to(dtype)]
    labels = ["embed"]
    if pos_embed:
        parts.append(found[1].to(dtype).expand(embed.shape))
        labels.append("pos_embed")
    if layer > 0:
        heads, head_labels = _head_stack(cache, layer)
        heads = heads.reshape(layer, c.n_heads, *heads.shape[1:])
        _, b_o = cache.model.anatomy.head_out
        mlps = found[len(names) - layer :] if not c.attn_only else []
        for ell in range(layer):
            layer_heads = heads[ell]  # (head, batch, pos, d_model)
            bias = None if b_o is None else b_o[ell].to(embed.device, dtype).expand(embed.shape)
            post = cache.model.anatomy.post_attn_norm(ell)
            if post is not None:  # linearised at this run: each head's share of the normed output
                scale = post.scale(layer_heads.sum(0) + (0 if bias is None else bias))
                layer_heads = post.linear(layer_heads, scale)
                bias = None if bias is None else post.linear(bias, scale)
                if post.bias is not None:
                    bias = post.bias.to(embed.device, dtype).expand(embed.shape) + (0 if bias is None else bias)
            parts.extend(layer_heads.unbind(0))
            labels.extend(head_labels[ell * c.n_heads : (ell + 1) * c.n_heads])
            if bias is not None:
                parts.append(bias)
                labels.append(f"L{ell}.attn_bias")
            if mlps:
                parts.append(mlps[ell].to(dtype))
                labels.append(f"L{ell}.mlp")
    return torch.stack(parts), labels


def _check_sum(cache: ActivationCache, stack: torch.Tensor, layer: int) -> None:
    target_name = _resid_target(cache, layer)
    if target_name not in cache:
        return
    target = cache[target_name].to(stack)
    err = float((stack.sum(0) - target).norm() / target.norm().clamp_min(1e-30))
    if err > 1e-4:
        warnings.warn(
            f"the residual decomposition of {cache.model.name} misses {err:.2e} (relative) of {target_name}: "
            "this architecture writes to the residual stream in a way interpkit does not model",
            CacheWarning,
            stacklevel=3,
        )


def decompose_resid(cache: ActivationCache, layer: int | None = None) -> Result:
    layer = _layer(cache, layer)
    stack, labels = _components(cache, layer)
    _check_sum(cache, stack, layer)
    return _result(cache, stack, ("component", "batch", "pos", "d_model"), labels, "resid_decomposition")


def apply_ln_final(cache: ActivationCache, stack: torch.Tensor) -> torch.Tensor:
    norm = cache.model.anatomy.final_norm
    if not norm.present:
        return stack
    (scale,) = cache.need(["ln_final.hook_scale"])
    return norm.linear(stack, scale.to(stack))


def logit_lens(cache: ActivationCache, mid: bool = False) -> Result:
    stacked = accumulated_resid(cache, None, mid)
    w_u, b_u = cache.model.anatomy.unembed
    resid = stacked.scores
    normed = cache.model.anatomy.final_norm(resid)
    logits = normed @ w_u.to(resid) + b_u.to(resid)
    return _result(cache, logits, ("component", "batch", "pos", "d_vocab"), stacked.labels["component"], "logit_lens")


def _ids(value: Any, batch: int, n_pos: int, d_vocab: int, device: Any, name: str) -> torch.Tensor:
    import torch

    ids = torch.as_tensor(value, device=device)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise CacheError(f"{name} must be token ids, got dtype {ids.dtype}")
    ids = ids.long()
    if ids.ndim == 0:
        ids = ids.expand(batch, n_pos)
    elif ids.ndim == 1 and ids.shape[0] == batch:
        ids = ids[:, None].expand(batch, n_pos)
    elif tuple(ids.shape) != (batch, n_pos):
        raise CacheError(f"{name} ids must be one id, ({batch},) or ({batch}, {n_pos}); got {tuple(ids.shape)}")
    if int(ids.min()) < 0 or int(ids.max()) >= d_vocab:
        raise CacheError(f"{name} ids must lie in [0, {d_vocab})")
    return ids


def logit_attrs(cache: ActivationCache, answer: Any, wrong: Any = None) -> Result:
    import torch

    stack, labels = _components(cache, cache.model.cfg.n_layers)
    _check_sum(cache, stack, cache.model.cfg.n_layers)
    _, batch, n_pos, _ = stack.shape
    w_u, b_u = cache.model.anatomy.unembed
    w_u, b_u = w_u.to(stack), b_u.to(stack)
    d_vocab = w_u.shape[1]
    a = _ids(answer, batch, n_pos, d_vocab, stack.device, "answer")
    direction = w_u.T[a]  # (b, p, d_model)
    const = b_u[a]
    if wrong is not None:
        w = _ids(wrong, batch, n_pos, d_vocab, stack.device, "wrong")
        direction = direction - w_u.T[w]
        const = const - b_u[w]
    norm = cache.model.anatomy.final_norm
    if norm.present and norm.bias is not None:
        const = const + direction @ norm.bias.to(stack)
    normed = apply_ln_final(cache, stack)
    attrs = torch.einsum("cbpd,bpd->cbp", normed, direction)
    scores = torch.cat([attrs, const[None]])
    return _result(cache, scores, ("component", "batch", "pos"), [*labels, "bias"], "logit_attrs")
