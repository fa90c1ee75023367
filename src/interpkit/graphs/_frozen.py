"""The local replacement model of one prompt: the model with attention patterns, every norm's scale
and every MLP frozen at the run, so the residual stream is affine in what writes to it.

Ameisen et al. 2025 ("Circuit Tracing", section 2): attention patterns and normalisation
denominators are held at their values on the prompt, and the MLPs are replaced by their features
(plus error terms) whose activations are inputs. What remains between a node's output and another
node's input is linear: the residual stream, attention's value/output path under the frozen
pattern, the norms' gains and, for skip transcoders, the skip term. :class:`Frozen` holds those
pieces read from the bridge (in float32, or float64 for exactness studies) and computes, for a batch of rows, the gradient of each row's target (a feature's
pre-activation or a logit) at every layer's MLP output and at the embeddings: a single explicit
backward pass in closed form (:meth:`Frozen.backward`), with no autograd graph kept.
:meth:`Frozen.forward` runs the same affine model forwards; the attribution checks that it
reproduces the run, and the constants of every node come from its run with every source removed.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from interpkit.graph import GraphError as EdgeGraphError

if TYPE_CHECKING:
    import torch

    from interpkit.graphs._external import FinalNorm
    from interpkit.models import Model


class GraphError(EdgeGraphError):
    """An attribution graph cannot be built or used as asked (an :class:`interpkit.graph.GraphError`)."""


def linear_t(norm: FinalNorm | None, g: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The transpose of a frozen norm's linear part applied to ``g`` (``(..., pos, d)``)."""
    if norm is None:
        return g
    if norm.weight is not None:
        g = g * norm.weight.to(g)
    g = g / scale
    return g - g.mean(-1, keepdim=True) if norm.centre else g


def affine(norm: FinalNorm | None, x: torch.Tensor, scale: torch.Tensor | None, bias: bool = True) -> torch.Tensor:
    """A frozen norm applied to ``x``: its linear part at ``scale``, plus its bias unless ``bias=False``."""
    if norm is None:
        return x
    out = norm.linear(x, scale)
    return out if norm.bias is None or not bias else out + norm.bias.to(out)


@dataclasses.dataclass
class Layer:
    """One block of the frozen model (scales are ``(pos, 1)``, pattern ``(head, pos, pos)``)."""

    ln1: FinalNorm | None
    s1: torch.Tensor | None
    w_v: torch.Tensor  # (kv, d_model, d_head)
    b_v: torch.Tensor | None  # (kv, d_head)
    pattern: torch.Tensor
    w_o: torch.Tensor  # (head, d_head, d_model)
    b_o: torch.Tensor | None
    post_attn: FinalNorm | None
    s_pa: torch.Tensor | None
    mlp_in: FinalNorm | None  # the norm the MLP reads through (ln2; ln1 in a shared-norm block)
    s2: torch.Tensor | None
    post_mlp: FinalNorm | None
    s_pm: torch.Tensor | None


@dataclasses.dataclass
class Frozen:
    """The frozen model of one prompt; see the module docstring."""

    layers: list[Layer]
    parallel: bool
    ln_final: FinalNorm | None
    s_final: torch.Tensor | None
    w_u: torch.Tensor  # (d_model, d_vocab)
    b_u: torch.Tensor
    group: int
    skips: dict[int, torch.Tensor]  # layer -> W_skip (d_model, d_in): raw MLP out += mlp_in @ W_skip.T

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    # ------------------------------------------------------------------ forwards
    def attend(self, lay: Layer, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """Attention's output ``(..., pos, d_model)`` of residual ``x`` under the frozen pattern and
        scales (``bias=False``: its linear part only, for changes of ``x``)."""
        import torch

        h = affine(lay.ln1, x, lay.s1, bias)
        v = torch.einsum("...pd,kde->...pke", h, lay.w_v)
        if lay.b_v is not None and bias:
            v = v + lay.b_v
        v = v.repeat_interleave(self.group, dim=-2)  # (..., pos, head, d_head)
        z = torch.einsum("hqk,...khe->...qhe", lay.pattern, v)
        out = torch.einsum("...qhe,hem->...qm", z, lay.w_o)
        if lay.b_o is not None and bias:
            out = out + lay.b_o
        return affine(lay.post_attn, out, lay.s_pa, bias)

    def forward(self, embed: torch.Tensor, mlp_out: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """Residual streams of the frozen model: ``embed`` ``(..., pos, d)`` enters block 0 and
        ``mlp_out[l]`` is the raw output of MLP ``l`` (its features, error and bias; the skip term
        is added here). Returns ``pre``, ``mid`` (what each MLP reads, before its norm) and ``final``."""
        pre, mid = [], []
        x = embed
        for i, lay in enumerate(self.layers):
            pre.append(x)
            a = self.attend(lay, x)
            reads = x if self.parallel else x + a
            mid.append(reads)
            raw = mlp_out[i]
            if i in self.skips:
                raw = raw + affine(lay.mlp_in, reads, lay.s2) @ self.skips[i].T.to(raw)
            x = x + a + affine(lay.post_mlp, raw, lay.s_pm)
        return {"pre": pre, "mid": mid, "final": [x]}

    def logits(self, final: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., pos, d_vocab)`` of the final residual stream ``(..., pos, d_model)``."""
        return affine(self.ln_final, final, self.s_final) @ self.w_u + self.b_u

    # ------------------------------------------------------------------ the backward pass
    def attend_t(self, lay: Layer, g: torch.Tensor) -> torch.Tensor:
        """The transpose of :meth:`attend`'s linear part: gradient at its input from ``g`` at its output."""
        import torch

        g = linear_t(lay.post_attn, g, lay.s_pa)
        gz = torch.einsum("rqm,hem->rqhe", g, lay.w_o)
        gv = torch.einsum("hqk,rqhe->rkhe", lay.pattern, gz)
        gv = gv.unflatten(2, (-1, self.group)).sum(3)  # (rows, pos, kv, d_head)
        gh = torch.einsum("rkne,nde->rkd", gv, lay.w_v)
        return linear_t(lay.ln1, gh, lay.s1)

    def backward(
        self, seeds: list[torch.Tensor | None], final_seed: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Gradients of each row's target at every MLP's raw output and at the embeddings.

        ``seeds[l]``: ``(rows, pos, d_in)`` gradient at layer l's MLP input (after its norm: an
        encoder row at the row's position) or None; ``final_seed``: ``(rows, pos, d_model)`` at
        the final norm's output. Returns ``[(rows, pos, d_out)]`` per layer (the gradient at the
        MLP's raw output, through its post-norm) and ``(rows, pos, d_model)`` at the embeddings.
        Rows whose seed is in layer l get zeros in every layer >= l.
        """
        import torch

        rows = next(s.shape[0] for s in [final_seed, *seeds] if s is not None)
        ref = self.w_u
        n = self.layers[0].pattern.shape[-1]
        g = torch.zeros(rows, n, ref.shape[0], dtype=ref.dtype, device=ref.device)
        if final_seed is not None:
            g = g + linear_t(self.ln_final, final_seed.to(ref), self.s_final)
        at_out: list[torch.Tensor] = [g] * self.n_layers
        for i in reversed(range(self.n_layers)):
            lay = self.layers[i]
            raw = linear_t(lay.post_mlp, g, lay.s_pm)
            at_out[i] = raw
            into = seeds[i].to(ref) if seeds[i] is not None else None
            if i in self.skips:
                skip = raw @ self.skips[i].to(ref)
                into = skip if into is None else into + skip
            reads = g if into is None else g + linear_t(lay.mlp_in, into, lay.s2)
            if self.parallel:
                g = reads + self.attend_t(lay, g)
            else:
                g = reads + self.attend_t(lay, reads)
        return at_out, g


def read_frozen(model: Model, store: dict[str, torch.Tensor], skips: dict[int, Any], dtype: Any) -> Frozen:
    """The frozen model of the run whose activations (batch 1, resolved hook names) are in ``store``."""
    import torch

    from interpkit.graphs._external import final_norm, head_out_weights, post_attn_norm, unembed_weights

    c = model.cfg
    if c.attn_only:
        raise GraphError(f"{model.name} is attention-only: attribution graphs need MLPs to hold the features")
    get = lambda name: store[model.resolve_hook(name)][0].to(dtype)  # noqa: E731
    w_o, b_o = head_out_weights(model)
    layers = []
    with torch.no_grad():
        for i, blk in enumerate(model.bridge.blocks):
            layers.append(_layer(model, blk, i, get, w_o[i].to(dtype), None if b_o is None else b_o[i].to(dtype)))
            layers[-1].post_attn = _cast(post_attn_norm(model, i), dtype)
            if layers[-1].post_attn is not None:
                layers[-1].s_pa = layers[-1].post_attn.scale(get(f"blocks.{i}.ln1_post.hook_in"))
        ln_final = _cast(final_norm(model), dtype)
        ln_final = ln_final if ln_final is not None and ln_final.present else None
        final = get(f"blocks.{c.n_layers - 1}.hook_resid_post")
        w_u, b_u = unembed_weights(model)
    return Frozen(
        layers=layers,
        parallel=c.parallel_attn_mlp,
        ln_final=ln_final,
        s_final=None if ln_final is None else ln_final.scale(final),
        w_u=w_u.to(dtype),
        b_u=b_u.to(dtype),
        group=c.group_size,
        skips={lay: w.detach().to(dtype) for lay, w in skips.items()},
    )


def _cast(norm: FinalNorm | None, dtype: Any) -> FinalNorm | None:
    if norm is None:
        return None
    return dataclasses.replace(
        norm,
        gain=None if norm.gain is None else norm.gain.detach().to(dtype),
        bias=None if norm.bias is None else norm.bias.detach().to(dtype),
    )


def _present(norm: FinalNorm | None, dtype: Any) -> FinalNorm | None:
    """An anatomy norm cast to ``dtype``, or None for a missing one (the identity)."""
    return _cast(norm, dtype) if norm is not None and norm.present else None


def _layer(model: Model, blk: Any, i: int, get: Any, w_o: torch.Tensor, b_o: torch.Tensor | None) -> Layer:
    c = model.cfg
    dtype = w_o.dtype
    attn = blk.attn
    an = model.anatomy
    ln1 = _present(an.ln1(i), dtype)
    mlp_in = _present(an.ln2(i), dtype)  # ln2, or the shared ln1 of a parallel block (Phi)
    post_mlp = _present(an.post_mlp_norm(i), dtype)
    pre = get(f"blocks.{i}.hook_resid_pre")
    reads = pre if c.parallel_attn_mlp else get(f"blocks.{i}.hook_resid_mid")
    w_v = attn.W_V.detach().to(dtype)
    if tuple(w_v.shape) != (c.n_kv_heads, c.d_model, c.d_head):
        raise GraphError(f"the value weight of layer {i} has shape {tuple(w_v.shape)}, not understood")
    return Layer(
        ln1=ln1,
        s1=None if ln1 is None else ln1.scale(pre),
        w_v=w_v,
        b_v=None if attn.b_V is None else attn.b_V.detach().to(dtype).reshape(c.n_kv_heads, c.d_head),
        pattern=get(f"blocks.{i}.attn.hook_pattern"),
        w_o=w_o,
        b_o=b_o,
        post_attn=None,
        s_pa=None,
        mlp_in=mlp_in,
        s2=None if mlp_in is None else mlp_in.scale(reads),
        post_mlp=post_mlp,
        s_pm=None if post_mlp is None else post_mlp.scale(get(f"blocks.{i}.mlp.hook_out")),
    )


def needed_hooks(model: Model) -> list[str]:
    """Every hook point :func:`read_frozen` and the feature readers take from the run."""
    c = model.cfg
    names = [f"blocks.{c.n_layers - 1}.hook_resid_post"]
    for i, blk in enumerate(model.bridge.blocks):
        names += [f"blocks.{i}.hook_resid_pre", f"blocks.{i}.attn.hook_pattern"]
        names += [f"blocks.{i}.mlp.hook_in", f"blocks.{i}.mlp.hook_out"]
        if not c.parallel_attn_mlp:
            names.append(f"blocks.{i}.hook_resid_mid")
        if getattr(blk, "ln1_post", None) is not None:
            names.append(f"blocks.{i}.ln1_post.hook_in")
    return names
