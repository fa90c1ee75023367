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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.models.anatomy import AnatomyError, activation
from interpkit.runtime._suffix_parts import SuffixUnsupported, _Layer, read_layer, unsupported_reason

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
        an, c = model.anatomy, model.cfg
        self.n_heads, self.n_kv, self.d_head = c.n_heads, c.n_kv_heads, c.d_head
        self.attn_only = c.attn_only
        self.act = None if c.attn_only else activation(an.act_name)
        with (
            torch.no_grad()
        ):  # plain tensors (not inference ones): a run with ``grad=True`` differentiates through them
            try:
                self.layers: list[_Layer] = [read_layer(model, lay) for lay in range(c.n_layers)]
                self.ln_final = an.final_norm.apply
                self.w_u, self.b_u = an.unembed  # (d_model, d_vocab), (d_vocab,)
            except AnatomyError as exc:
                raise SuffixUnsupported(str(exc)) from None
        self.scale = an.attn_scale
        self.rotary = an.rotary

    # ------------------------------------------------------------------ verdict
    @classmethod
    def check(cls, model: Model) -> bool:
        """Whether the suffix forward reproduces the bridge's logits (1e-4), checked once per model.

        Never for a model split over several devices (checked on every call: a model can be
        dispatched or gathered after its first check).
        """
        if len(model.devices) > 1:
            return False

        def probe() -> bool:
            try:
                return cls(model)._probe()
            except SuffixUnsupported:
                return False

        return model.anatomy.verdict("suffix", probe)

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
        pair = self.model.anatomy.rotary_cos_sin(n)
        if pair is None:
            return None, None
        cos, sin = pair
        if cos.shape[-1] > self.d_head or cos.shape[-1] % 2:
            raise SuffixUnsupported(f"rotary width {cos.shape[-1]} with d_head {self.d_head}")
        return cos, sin

    def _qkv(self, lay: _Layer, x: torch.Tensor, cos: Any, sin: Any) -> tuple[torch.Tensor, ...]:
        """Queries (rows, pos, head, d_head), rotated keys and values (rows, pos, kv_head, d_head)."""
        h = lay.ln1(x) @ lay.w_qkv
        if lay.b_qkv is not None:
            h = h + lay.b_qkv
        hq, hk = self.n_heads * self.d_head, self.n_kv * self.d_head
        q = _qk_normed(lay.q_norm, h[..., :hq], self.n_heads, self.d_head)
        k = _qk_normed(lay.k_norm, h[..., hq : hq + hk], self.n_kv, self.d_head)
        v = h[..., hq + hk :].unflatten(-1, (self.n_kv, self.d_head))
        if cos is not None:
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        return q, k, v

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: int, at: torch.Tensor | None = None
    ) -> torch.Tensor:
        """z (rows, s, head, d_head) for queries at positions p.. over keys at positions 0..

        ``at`` (rows,): one query per row (``s`` = 1), at that row's own position.
        """
        import torch

        rows, s, _, dh = q.shape
        n = k.shape[1]
        group = self.n_heads // self.n_kv
        qg = q.reshape(rows, s, self.n_kv, group, dh).permute(0, 2, 3, 1, 4)  # (rows, kv, group, s, dh)
        kt = k.permute(0, 2, 3, 1)[:, :, None]  # (rows, kv, 1, dh, n)
        scores = (qg @ kt) * self.scale  # (rows, kv, group, s, n)
        keys = torch.arange(n, device=q.device)
        if at is None:
            future = keys[None, :] > torch.arange(p, p + s, device=q.device)[:, None]
        else:
            future = (keys[None, :] > at[:, None])[:, None, None, None, :]
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
        """The attention output (..., d_model) of ``z`` (..., head, d_head), as ``hook_attn_out`` sees it."""
        out = z.flatten(-2) @ lay.w_o
        return out + lay.b_o if lay.b_o is not None else out

    def attn_write(self, lay: _Layer, out: torch.Tensor) -> torch.Tensor:
        """What an attention output adds to the residual stream (through the post-attention norm, if any)."""
        return out if lay.post_attn is None else lay.post_attn(out)

    def mlp_write(self, lay: _Layer, out: torch.Tensor) -> torch.Tensor:
        """What an MLP output adds to the residual stream (through the post-MLP norm, if any)."""
        return out if lay.post_mlp is None else lay.post_mlp(out)

    def unembed(self, resid: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm and unembedding of ``resid`` (rows, d_model); only ``columns`` (rows, k) if given."""
        x = self.ln_final(resid)
        if columns is None:
            return x @ self.w_u + self.b_u if self.b_u is not None else x @ self.w_u
        w = self.w_u.T[columns]  # (rows, k, d_model)
        out = (w @ x[:, :, None])[..., 0]
        return out + self.b_u[columns] if self.b_u is not None else out

    def mlp_out(self, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
        """What the MLP of ``layer`` adds to the residual stream for ``resid_mid`` (..., d_model); zeros when attention-only."""
        if self.attn_only:
            return resid_mid * 0
        lay = self.layers[layer]
        return self.mlp_write(lay, self._mlp(lay, resid_mid))

    # ------------------------------------------------------------------ the two entry points
    def capture(
        self, tokens: torch.Tensor | None, answer_pos: torch.Tensor, store: dict[str, torch.Tensor] | None = None
    ) -> BaseRun:
        """The base run of ``tokens`` (batch, pos), truncated after the last answer position.

        ``store``: activations already captured from that run at :func:`base_hooks` (resolved
        names), so no forward is needed; ``tokens`` may then be None.
        """
        import torch

        from interpkit.runtime._forward import capture

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
                mids.append(x + self.attn_write(lay, self.attn_out(lay, z)))
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
        grad: bool = False,
        joins: Sequence[tuple[int, torch.Tensor, torch.Tensor]] = (),
    ) -> torch.Tensor:
        """Logits (rows, d_vocab, or rows, k for ``columns``) at each row's answer position.

        ``resid`` (rows, n - p, d_model) is the residual stream of positions p..n-1 entering
        block ``start_layer`` (``stage`` "pre") or its MLP ("mid"); row r continues base example
        ``ex[r]``, whose keys and values supply positions < p. Rows whose answer position is
        before p get the base run's logits. ``grad``: record the run for autograd (gradients
        reach ``resid``; no weight gradients are kept), else it runs in inference mode.

        ``joins``: more rows ``(block, resid, ex)`` entering later blocks (``block`` >
        ``start_layer``, up to ``n_layers``: the final residual), each computed from its own
        block on but batched with the rows already running; their logits follow the first rows',
        in order (``columns`` covers all rows in that order).
        """
        import contextlib

        import torch

        if stage not in ("pre", "mid"):
            raise ValueError(f"stage must be 'pre' or 'mid', got {stage!r}")
        cos = None if base.cos is None else base.cos[p:]
        sin = None if base.sin is None else base.sin[p:]
        x, last = resid, len(self.layers) - 1
        pending = sorted(joins, key=lambda j: j[0])
        with contextlib.nullcontext() if grad else torch.inference_mode():
            for li in range(start_layer, len(self.layers)):
                while pending and pending[0][0] <= li:
                    _, more, more_ex = pending.pop(0)
                    x, ex = torch.cat([x, more]), torch.cat([ex, more_ex])
                at = base.answer_pos[ex]
                rows = torch.arange(len(ex), device=x.device)
                own = (at - p).clamp(0, x.shape[1] - 1)  # each row's answer position within the suffix
                lay = self.layers[li]
                if li > start_layer or stage == "pre":
                    q, k, v = self._qkv(lay, x, cos, sin)
                    if p:
                        k = torch.cat([base.k[li][ex, :p], k], dim=1)
                        v = torch.cat([base.v[li][ex, :p], v], dim=1)
                    if li == last:  # the last block: only the answer position is read, one query per row
                        z = self._attend(q[rows, own][:, None], k, v, p, at.clamp(min=p))
                        x = x[rows, own][:, None]
                    else:
                        z = self._attend(q, k, v, p)
                    x = x + self.attn_write(lay, self.attn_out(lay, z))
                elif li == last:
                    x = x[rows, own][:, None]
                if not self.attn_only:
                    x = x + self.mlp_write(lay, self._mlp(lay, x))
            finals = [x[:, 0] if start_layer <= last else self._at_answer(base, x, ex, p)]
            finals += [self._at_answer(base, more, more_ex, p) for _, more, more_ex in pending]  # the final residual
            ex = torch.cat([ex, *[more_ex for _, _, more_ex in pending]])
            at = base.answer_pos[ex]
            final = torch.where((at < p)[:, None], base.resid_pre[-1][ex, at], torch.cat(finals))
            return self.unembed(final, columns)

    @staticmethod
    def _at_answer(base: BaseRun, x: torch.Tensor, ex: torch.Tensor, p: int) -> torch.Tensor:
        """Each row's stream (rows, n - p, d_model) at its answer position: (rows, d_model)."""
        import torch

        own = (base.answer_pos[ex] - p).clamp(0, x.shape[1] - 1)
        return x[torch.arange(len(ex), device=x.device), own]


def _qk_normed(norm: Any, h: torch.Tensor, n: int, d_head: int) -> torch.Tensor:
    """Queries or keys (..., n, d_head) from their projection (..., n d_head), through the model's
    query/key norm if it has one: per head (Qwen3) or over all heads at once (OLMo2)."""
    if norm is None:
        return h.unflatten(-1, (n, d_head))
    if norm.weight.numel() == d_head:
        return norm(h.unflatten(-1, (n, d_head)))
    return norm(h).unflatten(-1, (n, d_head))
