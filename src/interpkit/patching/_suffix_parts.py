"""The pieces of the suffix-only forward read from a bridge: which architectures it implements,
their activation functions, norms and per-layer weights (:mod:`interpkit.patching._suffix`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from interpkit.errors import InterpkitError

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model

_HF_TYPES = {"llama", "mistral", "qwen2", "gpt2"}
_ACTS = {"relu", "silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh"}


class SuffixUnsupported(InterpkitError):
    """The suffix forward does not implement this model's architecture (use the hook engine)."""


def unsupported_reason(model: Model) -> str | None:
    """Why the suffix forward cannot run ``model`` (None when it is implemented)."""
    c = model.bridge.cfg
    hf = getattr(getattr(model.bridge, "original_model", None), "config", None)
    norm = getattr(c, "normalization_type", None)
    checks = [
        (norm not in (None, "LN", "RMS"), f"normalization {norm!r}"),
        (getattr(c, "positional_embedding_type", "standard") not in ("standard", "rotary"), "positional embedding"),
        (float(getattr(c, "attn_scores_soft_cap", -1.0)) > 0, "attention soft-capping"),
        (float(getattr(c, "output_logits_soft_cap", -1.0)) > 0, "logit soft-capping"),
        (bool(getattr(c, "parallel_attn_mlp", False)), "parallel attention and MLP"),
        (bool(getattr(c, "use_qk_norm", False)), "query/key norms"),
        (bool(getattr(c, "use_local_attn", False)), "local attention"),
        (bool(getattr(c, "rotary_adjacent_pairs", False)), "adjacent-pair rotary"),
        (str(getattr(c, "act_fn", "relu")).lower() not in _ACTS and not c.attn_only, f"activation {c.act_fn!r}"),
        # Its weights and caches would have to follow each block to its device; the hook engine does that.
        (len(model.devices) > 1, "a model split over several devices (device_map)"),
    ]
    if hf is not None:
        kind = getattr(hf, "model_type", None)
        checks += [
            (kind not in _HF_TYPES, f"Hugging Face model type {kind!r}"),
            (
                getattr(hf, "sliding_window", None) is not None and getattr(hf, "use_sliding_window", True),
                "sliding window",
            ),
            (bool(getattr(hf, "scale_attn_by_inverse_layer_idx", False)), "per-layer attention scale"),
        ]
    elif model.cfg.positional == "rotary":
        checks.append((True, "native rotary models"))
    bad = [why for failed, why in checks if failed]
    return f"suffix forward does not implement {', '.join(bad)}" if bad else None


def _act(name: str) -> Any:
    import torch.nn.functional as F

    name = name.lower()
    if name == "relu":
        return F.relu
    if name in ("silu", "swish"):
        return F.silu
    if name == "gelu":
        return F.gelu
    return lambda x: F.gelu(x, approximate="tanh")


@dataclasses.dataclass
class _Norm:
    kind: str | None  # "LN", "RMS" or None
    w: torch.Tensor | None
    b: torch.Tensor | None
    eps: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind is None:
            return x
        dtype = x.dtype
        x = x.float()
        if self.kind == "LN":
            x = x - x.mean(-1, keepdim=True)
        x = (x * (x.pow(2).mean(-1, keepdim=True) + self.eps).rsqrt()).to(dtype)
        x = x * self.w if self.w is not None else x
        return x + self.b if self.b is not None else x


def _norm(module: Any, kind: str | None, eps: float) -> _Norm:
    if kind is None:
        return _Norm(None, None, None, eps)
    from interpkit.cache._weights import norm_affine

    inner = getattr(module, "_original_component", module)
    if getattr(inner, "weight", None) is None or not callable(inner):
        raise SuffixUnsupported(f"cannot find the weight of norm {type(inner).__name__}")
    eps = float(getattr(inner, "variance_epsilon", getattr(inner, "eps", eps)))
    gain, bias = norm_affine(inner, eps)  # the gain, which is 1 + weight in Gemma's norms
    return _Norm(kind, gain, bias, eps)


@dataclasses.dataclass
class _Layer:
    ln1: _Norm
    ln2: _Norm | None
    w_qkv: torch.Tensor  # (d_model, (n_heads + 2 n_kv_heads) d_head)
    b_qkv: torch.Tensor | None
    w_o: torch.Tensor  # (n_heads d_head, d_model)
    b_o: torch.Tensor | None
    w_in: torch.Tensor | None  # (d_model, d_mlp)
    w_gate: torch.Tensor | None
    b_in: torch.Tensor | None
    w_out: torch.Tensor | None  # (d_mlp, d_model)
    b_out: torch.Tensor | None


def _flat_bias(b: Any, n: int, d_head: int, device: Any, dtype: Any) -> torch.Tensor:
    import torch

    return torch.zeros(n * d_head, device=device, dtype=dtype) if b is None else b.detach().reshape(-1)
