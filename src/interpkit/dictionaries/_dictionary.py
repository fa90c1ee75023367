"""``Dictionary``: a sparse autoencoder, transcoder or skip-transcoder as plain tensors.

One class covers the three roles, which differ only in what they read and write:

* an **SAE** reads and writes one site (``L12.resid_post``); it encodes ``x - b_dec`` when
  ``center_input`` (Bricken et al. 2023; SAELens's ``apply_b_dec_to_input``, sparsify's SAEs);
* a **transcoder** reads one site (the MLP's input after its norm, ``blocks.12.hook_mlp_in``)
  and writes another (the MLP's output, ``blocks.12.hook_mlp_out``) (Dunefsky et al. 2024);
* a **skip-transcoder** adds a linear term ``x @ W_skip.T`` beside the sparse path (Paulo et
  al. 2025).

Weights: ``W_enc (n_latents, d_in)``, ``b_enc (n_latents,)``, ``W_dec (n_latents, d_out)``,
``b_dec (d_out,)``, optional ``W_skip (d_out, d_in)`` and ``threshold (n_latents,)``. The
activations are those of SAELens, sparsify and circuit-tracer:

==============  ==========================================================================
``topk``        ReLU, then the ``k`` largest per token (Gao et al. 2024)
``batchtopk``   trained with the ``k * batch`` largest over a batch (Bussmann et al. 2024);
                used as a JumpReLU with the learned ``threshold``
``jumprelu``    ``relu(pre) * (pre > threshold)`` (Rajamanoharan et al. 2024)
``relu``        ``relu(pre)`` (the standard L1-trained SAE)
``topk_raw``    the ``k`` largest pre-activations kept as they are, negative or not
                (circuit-tracer's TopK)
==============  ==========================================================================

``encode(x)`` gives dense latents ``(..., n_latents)``; ``encode_topk(x)`` the sparse
``(values, indices)`` of a TopK dictionary; ``decode(z)`` = ``z @ W_dec + b_dec``;
``forward(x)`` / ``dictionary(x)`` = ``decode(encode(x))`` plus the skip term. Nothing here
imports torch until it is used.

    >>> import torch
    >>> from interpkit.dictionaries import Dictionary
    >>> d = Dictionary.random(d_in=8, n_latents=32, k=4, seed=0)
    >>> z = d.encode(torch.randn(3, 8))
    >>> tuple(z.shape), int((z != 0).sum(-1).max())
    ((3, 32), 4)
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from interpkit.dictionaries._errors import DictionaryError

if TYPE_CHECKING:
    import torch

ACTIVATIONS = ("topk", "batchtopk", "jumprelu", "relu", "topk_raw")
KINDS = ("sae", "transcoder", "skip_transcoder")
TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip", "threshold")


@dataclasses.dataclass(eq=False)
class Dictionary:
    """A sparse dictionary: weights, activation, and the sites it reads and writes (see module doc)."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    activation: str = "topk"
    k: int | None = None
    threshold: torch.Tensor | None = None
    W_skip: torch.Tensor | None = None
    kind: str = "sae"
    center_input: bool = True
    rescale_by_decoder_norm: bool = False
    input_site: str | None = None
    output_site: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output_site is None and self.kind == "sae":
            self.output_site = self.input_site
        self.validate()

    # ------------------------------------------------------------------ facts
    @property
    def n_latents(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def site(self) -> str | None:
        """The site the dictionary reads (an SAE writes it too; a transcoder writes ``output_site``)."""
        return self.input_site

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights by name (``W_skip`` and ``threshold`` only when present)."""
        return {name: t for name in TENSORS if (t := getattr(self, name)) is not None}

    def __repr__(self) -> str:
        where = self.input_site if self.kind == "sae" else f"{self.input_site} -> {self.output_site}"
        k = f", k={self.k}" if self.k is not None else ""
        return (
            f"Dictionary({self.kind}, {self.activation}{k}, {self.n_latents} latents, d_in={self.d_in}, "
            f"d_out={self.d_out}, site={where}, {str(self.dtype).removeprefix('torch.')})"
        )

    def validate(self) -> None:
        """Check shapes, activation and k; DictionaryError naming the first problem."""
        if self.activation not in ACTIVATIONS:
            raise DictionaryError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if self.kind not in KINDS:
            raise DictionaryError(f"unknown dictionary kind {self.kind!r}; valid: {', '.join(KINDS)}")
        n, d_in = self.W_enc.shape
        expect = {"b_enc": (n,), "W_dec": (n, self.W_dec.shape[1]), "b_dec": (self.W_dec.shape[1],)}
        if self.threshold is not None:
            expect["threshold"] = (n,)
        if self.W_skip is not None:
            expect["W_skip"] = (self.W_dec.shape[1], d_in)
        for name, shape in expect.items():
            if tuple(getattr(self, name).shape) != shape:
                raise DictionaryError(
                    f"{name} has shape {tuple(getattr(self, name).shape)}, expected {shape} "
                    f"for {n} latents, d_in={d_in}, d_out={self.W_dec.shape[1]}"
                )
        if self.activation in ("topk", "topk_raw") and (self.k is None or not 1 <= int(self.k) <= n):
            raise DictionaryError(f"k={self.k} must lie in 1..n_latents={n} for a {self.activation} dictionary")
        if self.activation in ("jumprelu", "batchtopk") and self.threshold is None:
            raise DictionaryError(f"a {self.activation} dictionary needs a threshold (n_latents,)")
        if (self.kind == "skip_transcoder") != (self.W_skip is not None):
            raise DictionaryError(f"kind={self.kind!r} and W_skip {'present' if self.W_skip is not None else 'absent'}")
        if self.kind == "sae" and d_in != self.W_dec.shape[1]:
            raise DictionaryError(f"an SAE must write what it reads, but d_in={d_in} and d_out={self.W_dec.shape[1]}")
        if self.center_input and self.kind != "sae":
            raise DictionaryError("center_input (subtracting b_dec before encoding) applies to SAEs only")

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(
        cls,
        d_in: int,
        n_latents: int,
        k: int | None = 32,
        *,
        activation: str = "topk",
        kind: str = "sae",
        d_out: int | None = None,
        seed: int = 0,
        dtype: Any = None,
        **fields: Any,
    ) -> Dictionary:
        """A randomly initialised dictionary: unit-norm decoder rows, encoder = decoder transpose.

        >>> d = Dictionary.random(d_in=16, n_latents=64, k=8)
        >>> bool(((d.W_dec.norm(dim=-1) - 1).abs() < 1e-6).all()), d.kind
        (True, 'sae')
        """
        import torch

        d_out = d_in if d_out is None else d_out
        g = torch.Generator().manual_seed(seed)
        dtype = dtype or torch.float32
        w_dec = torch.randn(n_latents, d_out, generator=g, dtype=torch.float64)
        w_dec = (w_dec / w_dec.norm(dim=-1, keepdim=True)).to(dtype)
        if kind == "sae":
            w_enc = w_dec.clone()
        else:
            w_enc = (torch.randn(n_latents, d_in, generator=g, dtype=torch.float64) / d_in**0.5).to(dtype)
        threshold = fields.pop("threshold", None)
        if threshold is None and activation in ("jumprelu", "batchtopk"):
            threshold = torch.full((n_latents,), 0.1, dtype=dtype)
        w_skip = torch.zeros(d_out, d_in, dtype=dtype) if kind == "skip_transcoder" else None
        return cls(
            W_enc=w_enc,
            b_enc=torch.zeros(n_latents, dtype=dtype),
            W_dec=w_dec,
            b_dec=torch.zeros(d_out, dtype=dtype),
            activation=activation,
            k=k if activation in ("topk", "topk_raw", "batchtopk") else None,
            threshold=threshold,
            W_skip=fields.pop("W_skip", w_skip),
            kind=kind,
            center_input=fields.pop("center_input", kind == "sae"),
            **fields,
        )

    def replace(self, **changes: Any) -> Dictionary:
        """A copy with ``changes`` (tensors are shared, not copied)."""
        return dataclasses.replace(self, meta=dict(self.meta), **changes)

    def to(self, device: Any = None, dtype: Any = None) -> Dictionary:
        """A copy on ``device`` and/or in ``dtype`` (the dictionary itself is unchanged)."""
        moved = {name: t.to(device=device, dtype=dtype) for name, t in self.tensors().items()}
        return self.replace(**moved)

    # ------------------------------------------------------------------ forward
    def _check_width(self, x: torch.Tensor, width: int, what: str) -> None:
        if x.shape[-1] != width:
            raise DictionaryError(
                f"{what} has width {x.shape[-1]}, but the dictionary "
                f"({self.input_site or 'no site'}) expects {width}: wrong site or wrong dictionary?"
            )

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec?) @ W_enc.T + b_enc`` (scaled by decoder norms when ``rescale_by_decoder_norm``)."""
        import torch.nn.functional as F

        self._check_width(x, self.d_in, "the input")
        x = x.to(self.dtype)
        if self.center_input:
            x = x - self.b_dec
        pre = F.linear(x, self.W_enc, self.b_enc)
        if self.rescale_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        return pre

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The activation function on pre-activations ``(..., n_latents)`` -> dense latents."""
        import torch

        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation in ("jumprelu", "batchtopk"):
            return torch.relu(pre) * (pre > self.threshold)
        source = pre if self.activation == "topk_raw" else torch.relu(pre)
        values, indices = source.topk(int(self.k), dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``(..., n_latents)`` of inputs ``(..., d_in)``."""
        return self.activate(self.pre_activations(x))

    def encode_topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` active latents per token of a TopK dictionary: ``(values, indices)``, each ``(..., k)``."""
        import torch

        if self.activation not in ("topk", "topk_raw"):
            raise DictionaryError(f"encode_topk needs a topk dictionary, this one is {self.activation}")
        pre = self.pre_activations(x)
        source = pre if self.activation == "topk_raw" else torch.relu(pre)
        return source.topk(int(self.k), dim=-1, sorted=False)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z @ W_dec + b_dec`` for latents ``(..., n_latents)`` (without the skip term)."""
        self._check_width(z, self.n_latents, "the latents")
        z = z.to(self.dtype)
        if self.rescale_by_decoder_norm:
            z = z / self.W_dec.norm(dim=-1)
        return z @ self.W_dec + self.b_dec

    def decode_topk(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``decode`` of sparse latents ``(values, indices)`` (each ``(..., k)``), without a dense matrix."""
        import torch.nn.functional as F

        lead = values.shape[:-1]
        w = self.W_dec if not self.rescale_by_decoder_norm else self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        flat = F.embedding_bag(
            indices.reshape(-1, indices.shape[-1]),
            w,
            per_sample_weights=values.reshape(-1, values.shape[-1]).to(w.dtype),
            mode="sum",
        )
        return flat.reshape(*lead, self.d_out) + self.b_dec

    def skip(self, x: torch.Tensor) -> torch.Tensor | None:
        """The linear skip term ``x @ W_skip.T`` of a skip-transcoder (None otherwise)."""
        return None if self.W_skip is None else x.to(self.dtype) @ self.W_skip.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction (SAE) or prediction (transcoder) of ``x`` ``(..., d_in)`` -> ``(..., d_out)``."""
        out = self.decode(self.encode(x))
        skip = self.skip(x)
        return out if skip is None else out + skip

    __call__ = forward

    # ------------------------------------------------------------------ files
    def save(self, path: Any, format: str = "interpkit") -> Any:
        """Write to folder ``path`` in ``format``: ``"interpkit"``, ``"saelens"``, ``"sparsify"`` or ``"circuit-tracer"``.

        Safetensors weights plus a JSON config, written atomically; returns the folder. A layout
        that cannot express this dictionary (SAELens has no TopK transcoder, sparsify only TopK)
        raises a DictionaryError naming the layouts that can.
        """
        from interpkit.dictionaries._formats import save

        return save(self, path, format)
