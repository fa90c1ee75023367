"""The one place the graphs package imports private pieces of other packages.

The lead engineer is moving these to public homes (``interpkit.runtime`` for the batching,
``interpkit.models.anatomy`` for the architecture facts); repointing them is a change to this
file only.
"""

from __future__ import annotations

from interpkit.cache._weights import FinalNorm as FinalNorm
from interpkit.cache._weights import final_norm as final_norm
from interpkit.cache._weights import head_out_weights as head_out_weights
from interpkit.cache._weights import norm_affine as norm_affine
from interpkit.cache._weights import norm_eps as norm_eps
from interpkit.cache._weights import post_attn_norm as post_attn_norm
from interpkit.cache._weights import unembed_weights as unembed_weights
from interpkit.patching._engine import Batcher as Batcher
from interpkit.patching._engine import free_memory_bytes as free_memory_bytes

__all__ = [
    "Batcher",
    "FinalNorm",
    "final_norm",
    "free_memory_bytes",
    "head_out_weights",
    "norm_affine",
    "norm_eps",
    "post_attn_norm",
    "unembed_weights",
]
