"""Suffix-only forwards: per-position patches recompute only what a patch can change.

A patch at layer l and position p changes nothing at positions < p (causal attention) and
nothing below layer l. :class:`SuffixRunner` is a functional forward over the bridge's weights
that exploits both: rows of a batch (patch x example, all with the same start position p) hold
the residual stream of positions p..n-1 only; each remaining block takes its queries from the
suffix and its keys/values from the base run's cached prefix (positions < p, per example)
concatenated with the suffix's own, with rotary at the true absolute positions, grouped-query
head sharing and a causal mask. Only the answer position goes through the final norm and
unembedding, and positions after the last answer position are never computed.

The forward is checked once per model against the bridge (:meth:`SuffixRunner.check`, cached on
the model like ``tail_is_exact``); anything not implemented (soft-capping, parallel attention and
MLP, ALiBi, sliding windows, query/key norms, ...) gets an "unsupported" verdict
(:func:`unsupported_reason`), so callers fall back to the hook-based engine instead of being
silently wrong.

    >>> runner = SuffixRunner(model)                                         # doctest: +SKIP
    >>> base = runner.capture(task.corrupt, task.answer_pos)                 # doctest: +SKIP
    >>> logits = suffix_sweep(runner, base, "head_out", 3, clean_z)          # doctest: +SKIP
    >>> logits.shape        # (pos, head, batch, d_vocab)                    # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from interpkit.patching._suffix_parts import (
    SuffixUnsupported,
    _act,
    _flat_bias,
    _Layer,
    _norm,
    unsupported_reason,
)

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model

SUFFIX_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out")


def base_hooks(model: Model) -> list[str]:
    """The hook points the base run of the suffix forward reads: every block's input and the final residual."""
    last = model.cfg.n_layers - 1
    return [f"blocks.{lay}.hook_resid_pre" for lay in range(model.cfg.n_layers)] + [f"blocks.{last}.hook_resid_post"]


@dataclasses.dataclass
class BaseRun:
    """The base (target) run truncated after its last answer position, as the suffix forward needs it.

    ``resid_pre[l]`` is ``(batch, pos, d_model)`` entering block l (``resid_pre[n_layers]`` is the
    final residual); ``resid_mid``, ``z`` (batch, pos, head, d_head) and the rotated keys and
    values ``k``, ``v`` (batch, pos, kv_head, d_head) per layer; ``cos``/``sin`` (pos, rot_dim).
    """

    resid_pre: list[torch.Tensor]
    resid_mid: list[torch.Tensor]
    z: list[torch.Tensor]
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    answer_pos: torch.Tensor
    cos: torch.Tensor | None
    sin: torch.Tensor | None

    @property
    def n_pos(self) -> int:
        return self.resid_pre[0].shape[1]


class SuffixRunner:
    """A functional forward of ``model`` that starts mid-network on a suffix of positions."""

    def __init__(self, model: Model) -> None:
        import torch

        reason = unsupported_reason(model)
        if reason is not None:
            raise SuffixUnsupported(reason)
        self.model = model
        b, c = model.bridge, model.cfg
        self.n_heads, self.n_kv, self.d_head = c.n_heads, c.n_kv_heads, c.d_head
        self.attn_only = c.attn_only
        bc = b.cfg
        norm, eps = bc.normalization_type, float(bc.eps)
        self.act = _act(str(bc.act_fn)) if not c.attn_only else None
        self.gated = bool(getattr(bc, "gated_mlp", False))
        dev, dt = model.device, model.dtype
        self.layers: list[_Layer] = []
        scales = set()
        with torch.inference_mode():
            for blk in b.blocks:
                a = blk.attn
                w = [a.W_Q, a.W_K, a.W_V]
                w_qkv = torch.cat([x.detach().permute(1, 0, 2).reshape(c.d_model, -1) for x in w], dim=1)
                biases = [a.b_Q, a.b_K, a.b_V]
                b_qkv = None
                if any(x is not None for x in biases):
                    heads = (self.n_heads, self.n_kv, self.n_kv)
                    b_qkv = torch.cat([_flat_bias(x, n, c.d_head, dev, dt) for x, n in zip(biases, heads, strict=True)])
                mlp = None if c.attn_only else blk.mlp
                gate = getattr(mlp, "W_gate", None) if self.gated else None
                if self.gated and gate is None:
                    raise SuffixUnsupported("gated MLP without W_gate")
                self.layers.append(
                    _Layer(
                        ln1=_norm(getattr(blk, "ln1", None), norm, eps),
                        ln2=None if c.attn_only else _norm(getattr(blk, "ln2", None), norm, eps),
                        w_qkv=w_qkv.contiguous(),
                        b_qkv=b_qkv,
                        w_o=a.W_O.detach().reshape(-1, c.d_model),
                        b_o=None if a.b_O is None else a.b_O.detach(),
                        w_in=None if mlp is None else mlp.W_in.detach(),
                        w_gate=None if gate is None else gate.detach(),
                        b_in=None if mlp is None or mlp.b_in is None else mlp.b_in.detach(),
                        w_out=None if mlp is None else mlp.W_out.detach(),
                        b_out=None if mlp is None or mlp.b_out is None else mlp.b_out.detach(),
                    )
                )
                scales.add(getattr(getattr(a, "_original_component", None), "scaling", None))
            self.ln_final = _norm(b.ln_final, norm, eps)
            self.w_u = b.W_U.detach()  # (d_model, d_vocab)
            self.b_u = None if b.b_U is None else b.b_U.detach()
        scale = scales.pop() if len(scales) == 1 else None
        if scale is None:
            uses = getattr(bc, "use_attn_scale", True)
            scale = 1.0 if not uses else 1.0 / (bc.attn_scale if bc.attn_scale > 0 else math.sqrt(c.d_head))
        self.scale = float(scale)
        self.rotary = c.positional == "rotary"

    # ------------------------------------------------------------------ verdict
    @classmethod
    def check(cls, model: Model) -> bool:
        """Whether the suffix forward reproduces the bridge's logits (1e-4), checked once per model.

        Never for a model split over several devices (checked on every call: a model can be
        dispatched or gathered after its first check).
        """
        if len(model.devices) > 1:
            return False
        cached = getattr(model, "_interpkit_suffix_exact", None)
        if cached is not None:
            return cached
        try:
            ok = cls(model)._probe()
        except SuffixUnsupported:
            ok = False
        model._interpkit_suffix_exact = ok
        return ok

    def _probe(self) -> bool:
        import torch

        m = self.model
        n = min(9, m.cfg.n_ctx)
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, m.cfg.d_vocab, (2, n), generator=g).to(m.device)
        answer_pos = torch.tensor([n - 1, n - 3], device=m.device)
        with torch.inference_mode():
            ref = m.bridge(tokens)[torch.arange(2), answer_pos]
            base = self.capture(tokens, answer_pos)
            ex = torch.arange(2, device=m.device)
            layer, p = m.cfg.n_layers // 2, n // 2
            runs = [
                self.run(base, 0, "pre", base.resid_pre[0], 0, ex),
                self.run(base, layer, "pre", base.resid_pre[layer][:, p:], p, ex),
            ]
            if not self.attn_only:
                runs.append(self.run(base, layer, "mid", base.resid_mid[layer][:, p:], p, ex))
        return all(torch.allclose(r, ref, atol=1e-4, rtol=1e-4) for r in runs)

    # ------------------------------------------------------------------ pieces
    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate-half rotary on the first ``rot_dim`` dims of ``x`` (..., pos, head, d_head)."""
        import torch

        rot = cos.shape[-1]
        cos, sin = cos[:, None, :], sin[:, None, :]  # (pos, 1, rot)
        xr, rest = x[..., :rot], x[..., rot:]
        half = rot // 2
        rotated = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
        out = (xr * cos + rotated * sin).to(x.dtype)
        return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out

    def _cos_sin(self, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        import torch

        if not self.rotary:
            return None, None
        emb = self.model.bridge.rotary_emb
        emb = getattr(emb, "_original_component", emb)
        dummy = torch.zeros(1, n, self.d_head, device=self.model.device, dtype=self.model.dtype)
        cos, sin = emb(dummy, torch.arange(n, device=self.model.device)[None])
        if cos.shape[-1] > self.d_head or cos.shape[-1] % 2:
            raise SuffixUnsupported(f"rotary width {cos.shape[-1]} with d_head {self.d_head}")
        return cos[0], sin[0]

    def _qkv(self, lay: _Layer, x: torch.Tensor, cos: Any, sin: Any) -> tuple[torch.Tensor, ...]:
        """Queries (rows, pos, head, d_head), rotated keys and values (rows, pos, kv_head, d_head)."""
        h = lay.ln1(x) @ lay.w_qkv
        if lay.b_qkv is not None:
            h = h + lay.b_qkv
        hq, hk = self.n_heads * self.d_head, self.n_kv * self.d_head
        q = h[..., :hq].unflatten(-1, (self.n_heads, self.d_head))
        k = h[..., hq : hq + hk].unflatten(-1, (self.n_kv, self.d_head))
        v = h[..., hq + hk :].unflatten(-1, (self.n_kv, self.d_head))
        if cos is not None:
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        return q, k, v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: int) -> torch.Tensor:
        """z (rows, s, head, d_head) for queries at positions p.. over keys at positions 0.."""
        import torch

        rows, s, _, dh = q.shape
        n = k.shape[1]
        group = self.n_heads // self.n_kv
        qg = q.reshape(rows, s, self.n_kv, group, dh).permute(0, 2, 3, 1, 4)  # (rows, kv, group, s, dh)
        kt = k.permute(0, 2, 3, 1)[:, :, None]  # (rows, kv, 1, dh, n)
        scores = (qg @ kt) * self.scale  # (rows, kv, group, s, n)
        future = torch.arange(n, device=q.device)[None, :] > torch.arange(p, p + s, device=q.device)[:, None]
        scores = scores.masked_fill(future, float("-inf"))
        pattern = scores.softmax(-1).to(v.dtype)
        z = pattern @ v.permute(0, 2, 1, 3)[:, :, None]  # (rows, kv, group, s, dh)
        return z.permute(0, 3, 1, 2, 4).reshape(rows, s, self.n_heads, dh)

    def _mlp(self, lay: _Layer, x: torch.Tensor) -> torch.Tensor:
        h = lay.ln2(x)
        pre = h @ lay.w_in
        if lay.b_in is not None:
            pre = pre + lay.b_in
        post = self.act(h @ lay.w_gate) * pre if lay.w_gate is not None else self.act(pre)
        out = post @ lay.w_out
        return out + lay.b_out if lay.b_out is not None else out

    def attn_out(self, lay: _Layer, z: torch.Tensor) -> torch.Tensor:
        """The attention output (..., d_model) of ``z`` (..., head, d_head)."""
        out = z.flatten(-2) @ lay.w_o
        return out + lay.b_o if lay.b_o is not None else out

    def unembed(self, resid: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm and unembedding of ``resid`` (rows, d_model); only ``columns`` (rows, k) if given."""
        x = self.ln_final(resid)
        if columns is None:
            return x @ self.w_u + self.b_u if self.b_u is not None else x @ self.w_u
        w = self.w_u.T[columns]  # (rows, k, d_model)
        out = (w @ x[:, :, None])[..., 0]
        return out + self.b_u[columns] if self.b_u is not None else out

    def mlp_out(self, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
        """The MLP output of ``layer`` for ``resid_mid`` (..., d_model); zeros when attention-only."""
        return resid_mid * 0 if self.attn_only else self._mlp(self.layers[layer], resid_mid)

    # ------------------------------------------------------------------ the two entry points
    def capture(
        self, tokens: torch.Tensor | None, answer_pos: torch.Tensor, store: dict[str, torch.Tensor] | None = None
    ) -> BaseRun:
        """The base run of ``tokens`` (batch, pos), truncated after the last answer position.

        ``store``: activations already captured from that run at :func:`base_hooks` (resolved
        names), so no forward is needed; ``tokens`` may then be None.
        """
        import torch

        from interpkit.patching._engine import capture

        m = self.model
        n = int(answer_pos.max()) + 1
        names = [m.resolve_hook(name) for name in base_hooks(m)]
        if store is None:
            store, _ = capture(m, m.check_tokens(tokens)[:, :n], names)
        resid_pre = [store[name][:, :n] for name in names]  # causal: later positions change nothing here
        cos, sin = self._cos_sin(n)
        mids, zs, ks, vs = [], [], [], []
        with torch.inference_mode():
            for lay, x in zip(self.layers, resid_pre, strict=False):
                q, k, v = self._qkv(lay, x, cos, sin)
                z = self._attend(q, k, v, 0)
                mids.append(x + self.attn_out(lay, z))
                zs.append(z)
                ks.append(k)
                vs.append(v)
        return BaseRun(resid_pre, mids, zs, ks, vs, answer_pos.to(m.device), cos, sin)

    def run(
        self,
        base: BaseRun,
        start_layer: int,
        stage: str,
        resid: torch.Tensor,
        p: int,
        ex: torch.Tensor,
        columns: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (rows, d_vocab, or rows, k for ``columns``) at each row's answer position.

        ``resid`` (rows, n - p, d_model) is the residual stream of positions p..n-1 entering
        block ``start_layer`` (``stage`` "pre") or its MLP ("mid"); row r continues base example
        ``ex[r]``, whose keys and values supply positions < p. Rows whose answer position is
        before p get the base run's logits.
        """
        import torch

        if stage not in ("pre", "mid"):
            raise ValueError(f"stage must be 'pre' or 'mid', got {stage!r}")
        cos = None if base.cos is None else base.cos[p:]
        sin = None if base.sin is None else base.sin[p:]
        x = resid
        with torch.inference_mode():
            for li in range(start_layer, len(self.layers)):
                lay = self.layers[li]
                if li > start_layer or stage == "pre":
                    q, k, v = self._qkv(lay, x, cos, sin)
                    if p:
                        k = torch.cat([base.k[li][ex, :p], k], dim=1)
                        v = torch.cat([base.v[li][ex, :p], v], dim=1)
                    x = x + self.attn_out(lay, self._attend(q, k, v, p))
                if not self.attn_only:
                    x = x + self._mlp(lay, x)
            at = base.answer_pos[ex]
            rows = torch.arange(len(ex), device=x.device)
            final = x[rows, (at - p).clamp(0, x.shape[1] - 1)]
            final = torch.where((at < p)[:, None], base.resid_pre[-1][ex, at], final)
            return self.unembed(final, columns)
