"""Anatomy: everything an engine needs to know about a model's architecture, in one place.

Engines never branch on an architecture's name or on ``normalization_type``: they ask the model's
:class:`Anatomy` (``model.anatomy``), which reads each fact once from the bridge and caches it:

* the block structure: attention-only, parallel attention and MLP (GPT-NeoX, GPT-J, Phi), norms
  after attention/MLP (Gemma 2, OLMo2), query/key norms (Qwen3, OLMo2), grouped-query attention,
  rotary embeddings (``rotary`` gives cos/sin), soft-capping, sliding windows, the attention scale;
* norms as :class:`Norm` objects with their *measured* gain and epsilon (Gemma multiplies by
  ``1 + weight``): ``final_norm``, ``ln1(l)``, ``ln2(l)`` (the MLP's, which is ``ln1`` in a
  parallel block that shares one), ``post_attn_norm(l)``, ``post_mlp_norm(l)``, ``q_norm(l)``;
* weights in TransformerLens layouts: ``attn(l)`` (:class:`AttnWeights`), ``mlp(l)``
  (:class:`MLPWeights`), ``unembed`` (``W_U``, ``b_U``), ``head_out`` (stacked ``W_O``, ``b_O``);
* capabilities measured on the model once: ``tail_is_exact`` (final norm + unembedding of the
  last residual reproduce the logits), ``split_inputs`` (per-head q/k/v input hooks),
  ``block_arity`` (what a Hugging Face block returns), and ``verdict(name, check)``: a cache for
  the engines' own checks (the suffix forward, the gradient mode, which hooks are live).

Adding an architecture means teaching this module what is different about it (and adding a tiny
model to the tests); the engines follow.

    >>> import interpkit as ik
    >>> anatomy = ik.load_model("toy-induction").anatomy
    >>> anatomy.attn_only, anatomy.norm_kind, anatomy.attn(1).W_Q.shape
    (True, None, torch.Size([4, 128, 32]))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from interpkit.models.anatomy._checks import block_output_arity, final_hook, hook_writes, mlp_inputs, split_inputs, tail
from interpkit.models.anatomy._checks import supports_split_inputs as _supports_split_inputs
from interpkit.models.anatomy._checks import tail_is_exact as _tail_is_exact
from interpkit.models.anatomy._final import StopForward, answer_logits
from interpkit.models.anatomy._norms import IDENTITY, Norm, attr, norm_affine, norm_eps, read_norm, unwrapped
from interpkit.models.anatomy._weights import (
    ACTIVATIONS,
    AnatomyError,
    AttnWeights,
    MLPWeights,
    activation,
    attn_weights,
    mlp_weights,
    unembed_weights,
)

if TYPE_CHECKING:
    import torch


class Anatomy:
    """The architecture facts of one model; ``model.anatomy`` builds it once and keeps it.

    Weights and norms are read lazily and cached until the model moves or is cast
    (:meth:`forget_weights`, which ``Model.to`` calls); capabilities and verdicts are kept.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        b, c = model.bridge, model.cfg
        bc = b.cfg
        hf = attr(attr(b, "original_model"), "config")
        self.n_layers, self.n_heads, self.n_kv_heads = c.n_layers, c.n_heads, c.n_kv_heads
        self.d_model, self.d_head, self.d_vocab = c.d_model, c.d_head, c.d_vocab
        self.group_size = c.group_size
        self.attn_only = c.attn_only
        self.parallel = c.parallel_attn_mlp
        self.norm_kind: str | None = c.normalization
        self.rotary = c.positional == "rotary"
        self.rotary_base = c.rotary_base
        self.positional = str(attr(bc, "positional_embedding_type") or "standard")
        self.rotary_interleaved = bool(attr(bc, "rotary_adjacent_pairs"))
        self.act_name = str(attr(bc, "act_fn") or "relu")
        self.gated_mlp = bool(attr(bc, "gated_mlp"))
        soft_attn, soft_logits = (
            float(attr(bc, "attn_scores_soft_cap") or -1),
            float(attr(bc, "output_logits_soft_cap") or -1),
        )
        self.attn_soft_cap = soft_attn if soft_attn > 0 else None
        self.logit_soft_cap = soft_logits if soft_logits > 0 else None
        self.local_attention = bool(attr(bc, "use_local_attn"))
        self.sliding_window = bool(
            hf is not None and attr(hf, "sliding_window") is not None and attr(hf, "use_sliding_window") is not False
        )
        self.layer_scaled_attention = bool(hf is not None and attr(hf, "scale_attn_by_inverse_layer_idx"))
        self.model_type = None if hf is None else attr(hf, "model_type")
        first = b.blocks[0]
        self.post_norms = attr(first, "ln1_post") is not None  # Gemma 2, OLMo2: norms after attention/MLP
        self.qk_norms = attr(first.attn, "q_norm") is not None or bool(attr(bc, "use_qk_norm"))
        self.verdicts: dict[str, Any] = {}
        self._cache: dict[Any, Any] = {}

    # ------------------------------------------------------------------ caching
    def forget_weights(self) -> None:
        """Drop cached weights and norms (after the model moved, was cast or was dispatched)."""
        self._cache.clear()

    def _cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def verdict(self, name: str, check: Callable[[], Any]) -> Any:
        """The cached result of ``check()`` under ``name`` (computed on first use): the engines'
        once-per-model checks (the suffix forward, the gradient mode, live receiver hooks)."""
        if name not in self.verdicts:
            self.verdicts[name] = check()
        return self.verdicts[name]

    # ------------------------------------------------------------------ norms
    def _norm(self, module: Any, what: str) -> Norm:
        if self.norm_kind is None or module is None:
            return IDENTITY
        if self.norm_kind not in ("LN", "LNPre", "RMS", "RMSPre"):
            raise AnatomyError(f"norm type {self.norm_kind!r} of {self.model.name} is not supported")
        inner = unwrapped(module)
        weight = attr(inner, "weight")
        if not self.norm_kind.endswith("Pre") and (
            weight is None or tuple(weight.shape) != (self.d_model,) or not callable(inner)
        ):
            raise AnatomyError(f"cannot read the {what}'s weight of {self.model.name}")
        return read_norm(inner, self.norm_kind, attr(self.model.bridge.cfg, "eps"))

    @property
    def final_norm(self) -> Norm:
        """The norm before the unembedding (the identity in a model without one)."""
        return self._cached("final", lambda: self._norm(attr(self.model.bridge, "ln_final"), "final norm"))

    def ln1(self, layer: int) -> Norm:
        """The norm attention reads through in block ``layer``."""
        return self._cached(("ln1", layer), lambda: self._norm(attr(self.model.bridge.blocks[layer], "ln1"), "ln1"))

    def ln2(self, layer: int) -> Norm | None:
        """The norm the MLP reads through (``ln1`` in a parallel block with one shared norm); None if attention-only."""
        if self.attn_only:
            return None
        blk = self.model.bridge.blocks[layer]
        module = attr(blk, "ln2")
        if module is None and self.parallel:
            return self.ln1(layer)
        return self._cached(("ln2", layer), lambda: self._norm(module, "ln2"))

    def post_attn_norm(self, layer: int) -> Norm | None:
        """The norm applied to the attention output before the residual add (Gemma 2, OLMo2), else None."""
        module = attr(self.model.bridge.blocks[layer], "ln1_post")
        return None if module is None else self._cached(("ln1_post", layer), lambda: self._norm(module, "ln1_post"))

    def post_mlp_norm(self, layer: int) -> Norm | None:
        """The norm applied to the MLP output before the residual add (Gemma 2, OLMo2), else None."""
        module = attr(self.model.bridge.blocks[layer], "ln2_post")
        return None if module is None else self._cached(("ln2_post", layer), lambda: self._norm(module, "ln2_post"))

    def qk_norm(self, layer: int, side: str) -> Any:
        """The per-head norm on queries (``side="q"``) or keys (``"k"``), as the module itself; None if absent."""
        module = attr(self.model.bridge.blocks[layer].attn, f"{side}_norm")
        return None if module is None else unwrapped(module)

    # ------------------------------------------------------------------ weights
    def attn(self, layer: int) -> AttnWeights:
        """Block ``layer``'s attention weights (GQA native: ``W_K``/``W_V`` per KV head)."""
        return self._cached(
            ("attn", layer),
            lambda: attn_weights(self.model.bridge, layer, self.n_heads, self.n_kv_heads, self.d_model, self.d_head),
        )

    def mlp(self, layer: int) -> MLPWeights:
        """Block ``layer``'s MLP weights; AnatomyError for an attention-only model."""
        if self.attn_only:
            raise AnatomyError(f"{self.model.name} is attention-only: it has no MLPs")
        return self._cached(
            ("mlp", layer),
            lambda: mlp_weights(self.model.bridge, layer, self.d_model, self.act_name, self.gated_mlp),
        )

    @property
    def unembed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W_U`` ``(d_model, d_vocab)`` and ``b_U`` ``(d_vocab,)`` (zeros without bias)."""
        return self._cached("unembed", lambda: unembed_weights(self.model.bridge, self.d_model, self.d_vocab))

    @property
    def head_out(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W_O`` ``(layer, head, d_head, d_model)`` and ``b_O`` ``(layer, d_model)`` (None without bias)."""

        def read() -> tuple[torch.Tensor, torch.Tensor | None]:
            import torch

            dev = self.model.device
            w_o = torch.stack([self.attn(lay).W_O.to(dev) for lay in range(self.n_layers)])
            biases = [self.attn(lay).b_O for lay in range(self.n_layers)]
            b_o = (
                None
                if all(x is None for x in biases)
                else torch.stack(
                    [torch.zeros(self.d_model, device=dev, dtype=w_o.dtype) if x is None else x.to(dev) for x in biases]
                )
            )
            return w_o, b_o

        return self._cached("head_out", read)

    @property
    def attn_scale(self) -> float:
        """The factor on ``q · k`` before the softmax (``1/sqrt(d_head)`` unless the model says otherwise)."""

        def read() -> float:
            scales = {attr(unwrapped(blk.attn), "scaling") for blk in self.model.bridge.blocks}
            if len(scales) == 1 and None not in scales:
                return float(scales.pop())
            bc = self.model.bridge.cfg
            if attr(bc, "use_attn_scale") is False:
                return 1.0
            scale = float(attr(bc, "attn_scale") or 0)
            return 1.0 / (scale if scale > 0 else math.sqrt(self.d_head))

        return self._cached("attn_scale", read)

    def rotary_cos_sin(self, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos and sin ``(pos, rot_dim)`` of the model's rotary embedding for positions ``0..n-1`` (None without rotary)."""
        import torch

        if not self.rotary:
            return None
        emb = unwrapped(attr(self.model.bridge, "rotary_emb"))
        if emb is None:
            raise AnatomyError(f"{self.model.name} uses rotary embeddings but its bridge exposes no rotary_emb")
        dev, dt = self.model.device, self.model.dtype
        cos, sin = emb(torch.zeros(1, n, self.d_head, device=dev, dtype=dt), torch.arange(n, device=dev)[None])
        return cos[0], sin[0]

    # ------------------------------------------------------------------ capabilities
    @property
    def tail_is_exact(self) -> bool:
        """Whether final norm + unembedding of the last residual reproduce the logits (checked once)."""
        return self.verdict("tail_is_exact", lambda: _tail_is_exact(self))

    @property
    def split_inputs(self) -> bool:
        """Whether the bridge can give each head its own q/k/v input hook (``split_inputs``)."""
        return self.verdict("split_inputs", lambda: _supports_split_inputs(self))

    @property
    def hook_writes(self) -> dict[str, bool]:
        """Whether ``hook_attn_out`` / ``hook_mlp_out`` hold exactly the block's writes to the residual stream
        (not so where a post-attention or post-MLP norm comes after the hook)."""
        return self.verdict("hook_writes", lambda: hook_writes(self))

    @property
    def block_arity(self) -> int:
        """What a Hugging Face block returns: 0 for a bare tensor, else its tuple's length."""
        return self.verdict("block_arity", lambda: block_output_arity(self))

    def __repr__(self) -> str:
        facts = [
            f"norm={self.norm_kind}",
            "attn-only" if self.attn_only else ("parallel" if self.parallel else "sequential"),
            f"GQA x{self.group_size}" if self.group_size > 1 else "MHA",
            "rotary" if self.rotary else self.positional,
            *(["post-norms"] if self.post_norms else []),
            *(["qk-norms"] if self.qk_norms else []),
        ]
        return f"Anatomy({self.model.name}: {', '.join(facts)})"


__all__ = [
    "ACTIVATIONS",
    "Anatomy",
    "AnatomyError",
    "AttnWeights",
    "MLPWeights",
    "Norm",
    "StopForward",
    "activation",
    "answer_logits",
    "final_hook",
    "mlp_inputs",
    "norm_affine",
    "norm_eps",
    "split_inputs",
    "tail",
]
