"""``ActivationCache``: what :func:`interpkit.cache.run` kept, looked up by site label or hook name.

Lookup accepts every name of a tensor: ``cache["L3.resid_pre"]``, ``cache["blocks.3.hook_resid_pre"]``
and any bridge alias of it; ``cache["L3H5"]`` also slices head 5 out of a whole cached ``hook_z``.
The residual-stream analyses (:mod:`interpkit.cache._analysis`) are methods here and return
:class:`interpkit.Result` objects with labelled components.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> cache = ik.cache.run(model, [[5, 6, 7, 5, 6]])
    >>> parts = cache.decompose_resid()
    >>> parts.dims, parts.labels["component"][:3]
    (('component', 'batch', 'pos', 'd_model'), ['embed', 'pos_embed', 'L0H0'])
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from interpkit.cache._errors import CacheError
from interpkit.cache._select import Request, unknown_key

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.results import Result


class ActivationCache:
    """Activations (and gradients) of one run, keyed by canonical hook name or head-site label."""

    def __init__(
        self,
        model: Model,
        acts: dict[str, torch.Tensor],
        grads: dict[str, torch.Tensor],
        requests: list[Request],
        *,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        metric: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.acts = acts
        self.grads = grads
        self.requests = {r.key: r for r in requests}
        self.tokens = tokens
        self.attention_mask = attention_mask
        self.positions = positions
        self.metric = metric

    # ------------------------------------------------------------------ lookup
    def _find(self, name: str, store: dict[str, torch.Tensor], what: str) -> torch.Tensor:
        if not isinstance(name, str):
            raise CacheError(f"cache keys are site labels or hook names, got {name!r}")
        if name in store:
            return store[name]
        from interpkit.errors import SiteError
        from interpkit.sites import parse

        try:
            site = parse(name)
        except SiteError:
            site = None
        if site is not None:
            if site.label in store:
                return store[site.label]
            hook = self._canonical(site.hook)
            if hook in store:
                t = store[hook]
                if site.head_axis() is None:
                    return t
                return t.select(site.head_axis(), site.hook_index(self.model.cfg.group_size))
        base, _, extra = name.rpartition(".")
        if extra in ("latents", "error", "rest") and base:  # a splice's hook point, by its site label
            try:
                found = f"{self._canonical(parse(base).hook)}.{extra}"
            except SiteError:
                found = ""
            if found in store:
                return store[found]
        hook = self._canonical(name)
        if hook in store:
            return store[hook]
        raise unknown_key(name, list(store), what)

    def _canonical(self, name: str) -> str:
        from interpkit.errors import SiteError

        try:
            return self.model.resolve_hook(name)
        except SiteError:
            return name

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._find(name, self.acts, "cache")

    def grad(self, name: str) -> torch.Tensor:
        """The gradient of the ``with_grad`` metric at a cached activation (same shape as it)."""
        if not self.grads:
            raise CacheError("this cache holds no gradients: run ik.cache.run(..., with_grad=metric)")
        return self._find(name, self.grads, "cache's gradients")

    def __contains__(self, name: object) -> bool:
        try:
            self[name]  # type: ignore[index]
        except CacheError:
            return False
        return True

    def keys(self) -> list[str]:
        return list(self.acts)

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.acts.items())

    def __iter__(self) -> Iterator[str]:
        return iter(self.acts)

    def __len__(self) -> int:
        return len(self.acts)

    def to(self, device: Any = None, dtype: Any = None) -> ActivationCache:
        """A copy with every tensor moved and/or cast."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device or t.device, dtype=dtype or t.dtype)

        return ActivationCache(
            self.model,
            {k: move(v) for k, v in self.acts.items()},
            {k: move(v) for k, v in self.grads.items()},
            list(self.requests.values()),
            tokens=self.tokens,
            attention_mask=self.attention_mask,
            positions=self.positions,
            metric=self.metric,
        )

    def need(self, names: list[str]) -> list[torch.Tensor]:
        """The cached tensors for hook ``names`` (on one device, the first one's), or one CacheError naming every missing one.

        A model split over devices leaves each activation on its layer's device; analyses that
        combine layers gather them here.
        """
        found, missing = [], []
        for name in names:
            try:
                found.append(self[name])
            except CacheError:
                missing.append(name)
        if missing:
            raise CacheError(
                f"this analysis needs hook(s) that were not cached: {', '.join(missing)}. Run "
                "ik.cache.run(model, tokens) with sites=None (the analysis set) or add these sites"
            )
        return [t.to(found[0].device) for t in found]

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.tokens.shape)
        grads = f", {len(self.grads)} gradients" if self.grads else ""
        return f"ActivationCache({len(self.acts)} tensors{grads}, tokens {shape}, model {self.model.spec!r})"

    # ------------------------------------------------------------------ analyses
    def accumulated_resid(self, layer: int | None = None, mid: bool = False) -> Result:
        """The residual stream entering each layer up to ``layer`` (default: all, plus the final one).

        Components ``L0.resid_pre, [L0.resid_mid,] L1.resid_pre, ..., L{n-1}.resid_post``; dims
        ``(component, batch, pos, d_model)``.
        """
        from interpkit.cache._analysis import accumulated_resid

        return accumulated_resid(self, layer, mid)

    def decompose_resid(self, layer: int | None = None) -> Result:
        """The residual entering ``layer`` (default: the final one) split into what wrote it.

        Components: ``embed``, ``pos_embed`` (learned positions only), each head ``L{l}H{h}``
        (``z @ W_O``), ``L{l}.attn_bias`` (where the model has ``b_O``), ``L{l}.mlp``. They sum
        to the cached residual; a mismatch above 1e-4 relative raises a CacheWarning.
        """
        from interpkit.cache._analysis import decompose_resid

        return decompose_resid(self, layer)

    def stack_head_results(self, layer: int | None = None) -> Result:
        """Each head's output ``z @ W_O`` for layers before ``layer``; dims ``(component, batch, pos, d_model)``."""
        from interpkit.cache._analysis import stack_head_results

        return stack_head_results(self, layer)

    def apply_ln_final(self, stack: torch.Tensor) -> torch.Tensor:
        """The final norm linearised at this run: centre (LayerNorm), divide by the cached scale, times weight.

        ``stack`` is ``(..., batch, pos, d_model)``; the norm's bias is left out (it is one
        constant term, which :meth:`logit_attrs` reports as the ``bias`` component).
        """
        from interpkit.cache._analysis import apply_ln_final

        return apply_ln_final(self, stack)

    def logit_lens(self, mid: bool = False) -> Result:
        """Logits read from each accumulated residual through the real final norm and unembedding.

        Dims ``(component, batch, pos, d_vocab)``; the last component equals the model's logits.
        """
        from interpkit.cache._analysis import logit_lens

        return logit_lens(self, mid)

    def logit_attrs(self, answer: Any, wrong: Any = None) -> Result:
        """Direct logit attribution of every residual component to ``logit(answer) - logit(wrong)``.

        ``answer`` / ``wrong``: an id, ``(batch,)`` or ``(batch, pos)`` ids (``wrong=None``:
        attribute ``logit(answer)`` itself). Each component goes through the final norm with the
        scale this run computed, then ``W_U``; the constant ``bias`` component (norm bias and
        ``b_U``) makes the components sum to the model's own logit difference. Dims
        ``(component, batch, pos)``.
        """
        from interpkit.cache._analysis import logit_attrs

        return logit_attrs(self, answer, wrong)
