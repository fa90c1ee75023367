"""``train``: a TopK / BatchTopK SAE, transcoder or skip-transcoder, from a tensor or an activation store.

What the reference trainers do (Gao et al. 2024 "Scaling and evaluating sparse autoencoders";
SAELens, sparsify, dictionary_learning), written out here:

* decoder rows of unit norm, renormalised after every step, with the gradient's component
  parallel to each row removed before the step; an SAE's encoder starts as the decoder
  (``W_enc = W_dec``, both ``(n_latents, d)``); a transcoder's encoder starts random with unit rows;
* ``b_dec`` starts at the data mean (for a transcoder, the target's mean); a transcoder's
  ``b_enc`` centres its pre-activations; a skip-transcoder's ``W_skip`` starts at the
  least-squares linear map from input to target (the sparse path then learns what is left);
* the loss is the squared error over the global batch divided by the data's variance per token
  (so it reads as the fraction of variance unexplained), plus ``aux_alpha`` times the AuxK loss:
  the ``d // 2`` most active *dead* latents (not fired in ``dead_tokens`` tokens) are asked to
  predict the residual;
* Adam (0.9, 0.999), learning rate ``2e-4 / sqrt(n_latents / 2**14)`` by default (Gao et al.'s
  scaling), linear warm-up over the first ``warmup`` of the steps and linear decay to zero over
  the last ``decay``;
* BatchTopK keeps the ``k * batch`` largest activations of the global batch and learns, as an
  exponential average of the smallest one kept, the threshold it uses afterwards;
* data: see :mod:`interpkit.dictionaries._stream` (bounded memory, position 0 excluded, and
  tokens whose target norm is above ``max_norm_ratio`` times the median: attention sinks);
  the dictionary records that norm (``meta["skip_norm_above"]``), and splicing and evaluation
  leave such tokens alone, as they leave position 0.

Checkpoints: with ``out``, the full training state (weights, Adam moments, dead-latent counters,
the stream position) is written every ``checkpoint_every`` steps, atomically; rerunning the same
call after a crash or a SIGKILL resumes from the last checkpoint and ends with bit-identical
weights. The finished dictionary is saved in ``out`` (interpkit layout) and a rerun returns it.

Data parallel: under ``torchrun`` each rank computes the gradient of its slice of every global
batch and the gradients are summed (``all_reduce``), so every rank takes the step one process
would take on the whole batch (equal up to float summation order).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.dictionaries._dictionary import Dictionary
from interpkit.dictionaries._errors import DictionaryError
from interpkit.dictionaries._stream import Reader, StoreReader, Stream, TensorReader

if TYPE_CHECKING:
    import torch

KINDS = {
    "topk": ("sae", "topk"),
    "batchtopk": ("sae", "batchtopk"),
    "transcoder": ("transcoder", "topk"),
    "skip_transcoder": ("skip_transcoder", "topk"),
}


@dataclasses.dataclass
class Settings:
    """Everything that fixes a training run (a checkpoint resumes only the same settings)."""

    kind: str
    activation: str
    n_latents: int
    k: int
    steps: int
    batch_size: int
    lr: float
    seed: int
    aux_alpha: float
    dead_tokens: int
    warmup: float
    decay: float
    exclude_first: bool
    exclude_tokens: list[int]
    buffer_tokens: int
    threshold_lr: float
    max_norm_ratio: float | None
    input_site: str | None
    output_site: str | None
    data: str

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): linear warm-up, constant, linear decay."""
        warm = max(1, int(self.warmup * self.steps)) if self.warmup > 0 else 0
        decay = int(self.decay * self.steps)
        if step < warm:
            return self.lr * (step + 1) / warm
        if decay and step >= self.steps - decay:
            return self.lr * (self.steps - step) / decay
        return self.lr


def _reader(data: Any, kind: str, site: Any, input_site: Any, output_site: Any, positions: Any) -> Reader:
    import torch

    if isinstance(data, torch.Tensor):
        return TensorReader(data, None, positions)
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return TensorReader(data[0], data[1], positions)
    from interpkit.cache import ActivationStore

    store = data if isinstance(data, ActivationStore) else None
    if store is None:
        if not isinstance(data, str | os.PathLike):
            raise DictionaryError(
                f"training data must be a (tokens, d) tensor, an (inputs, targets) pair or an activation store, "
                f"got {type(data).__name__}"
            )
        store = ActivationStore(data)
    if kind == "sae":
        site = site or input_site
        if site is None:
            if len(store.sites) != 1:
                raise DictionaryError(
                    f"the store holds {len(store.sites)} sites ({', '.join(store.sites)}): pass site="
                )
            site = store.sites[0]
        return StoreReader(store, site)
    if input_site is None or output_site is None:
        raise DictionaryError(
            "a transcoder needs input_site= (the MLP's input after its norm, e.g. 'blocks.12.mlp.hook_in') and "
            "output_site= (its output, e.g. 'L12.mlp')"
        )
    return StoreReader(store, input_site, output_site)


def _settings(reader: Reader, stream: Stream, kind: str, **kw: Any) -> Settings:
    dict_kind, activation = KINDS[kind]
    if kw.get("activation"):
        if kw["activation"] not in ("topk", "batchtopk"):
            raise DictionaryError(f"activation={kw['activation']!r}: training supports topk and batchtopk")
        activation = kw["activation"]
    n = int(kw["n_latents"] or 8 * reader.d_in)
    k = int(kw["k"] or 32)
    if not 1 <= k <= n:
        raise DictionaryError(f"k={k} must lie in 1..n_latents={n}")
    if kw["batch_size"] < 1:
        raise DictionaryError(f"batch_size must be at least 1, got {kw['batch_size']}")
    steps = kw["steps"]
    if steps is None:
        steps = max(1, stream.count() // kw["batch_size"])
    if int(steps) < 1:
        raise DictionaryError(f"steps must be at least 1, got {steps}")
    in_site = getattr(reader, "in_key", None) or kw.get("input_site") or kw.get("site")
    out_site = getattr(reader, "out_key", None) or kw.get("output_site") or in_site
    return Settings(
        kind=dict_kind,
        activation=activation,
        n_latents=n,
        k=k,
        steps=int(steps),
        batch_size=int(kw["batch_size"]),
        lr=float(kw["lr"] if kw["lr"] is not None else 2e-4 / math.sqrt(n / 2**14)),
        seed=int(kw["seed"]),
        aux_alpha=float(kw["aux_alpha"]),
        dead_tokens=int(kw["dead_tokens"] or max(kw["batch_size"], 1000 * n // k)),
        warmup=float(kw["warmup"]),
        decay=float(kw["decay"]),
        exclude_first=bool(kw["exclude_first"]),
        exclude_tokens=[int(t) for t in kw["exclude_tokens"]],
        buffer_tokens=int(kw["buffer_tokens"]),
        threshold_lr=float(kw["threshold_lr"]),
        max_norm_ratio=None if kw["max_norm_ratio"] is None else float(kw["max_norm_ratio"]),
        input_site=in_site,
        output_site=out_site if dict_kind != "sae" else in_site,
        data=f"{reader.describe}, {reader.n_tokens} tokens",
    )


def train(
    data: Any,
    kind: str = "topk",
    n_latents: int | None = None,
    k: int | None = None,
    steps: int | None = None,
    batch_size: int = 4096,
    lr: float | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    *,
    site: str | None = None,
    input_site: str | None = None,
    output_site: str | None = None,
    activation: str | None = None,
    aux_alpha: float = 1 / 32,
    dead_tokens: int | None = None,
    warmup: float = 0.05,
    decay: float = 0.2,
    exclude_first: bool = True,
    exclude_tokens: tuple[int, ...] | list[int] = (),
    positions: torch.Tensor | None = None,
    buffer_tokens: int = 1 << 16,
    threshold_lr: float = 0.01,
    max_norm_ratio: float | None = 10.0,
    checkpoint_every: int | None = None,
    init_tokens: int = 1 << 14,
    log_every: int = 10,
    progress: bool = True,
    distributed: bool | None = None,
    overwrite: bool = False,
) -> Dictionary:
    """Train a sparse dictionary on ``data`` and return it (see the module doc for the method).

    ``data``: a ``(tokens, d)`` tensor; an ``(inputs, targets)`` pair of tensors (transcoders);
    an activation store (folder or :class:`~interpkit.cache.ActivationStore`) with ``site=``
    (SAE) or ``input_site=`` / ``output_site=`` (transcoders). ``kind``: ``topk``,
    ``batchtopk``, ``transcoder``, ``skip_transcoder`` (transcoders take ``activation="topk"``
    or ``"batchtopk"``). ``n_latents`` (default ``8 * d``), ``k`` (default 32), ``steps``
    (default: one pass over the data), ``batch_size`` (global, in tokens). ``out``: a folder for
    checkpoints and the result; rerunning with the same ``out`` resumes or returns the finished
    dictionary. ``positions``: per-token positions for tensor data (position 0 is then excluded).
    ``max_norm_ratio``: drop tokens whose target norm exceeds this multiple of the median (None: keep).

    >>> import torch, interpkit as ik
    >>> x = torch.randn(2048, 16)
    >>> d = ik.dictionaries.train(x, n_latents=64, k=4, steps=5, batch_size=256, progress=False)
    >>> d.n_latents, d.k
    (64, 4)
    """
    from interpkit.dictionaries._loop import run

    if kind not in KINDS:
        raise DictionaryError(f"unknown dictionary kind {kind!r}; valid: {', '.join(KINDS)}")
    dict_kind = KINDS[kind][0]
    reader = _reader(data, dict_kind, site, input_site, output_site, positions)
    if dict_kind == "sae" and isinstance(reader, TensorReader) and reader.y is not None:
        raise DictionaryError("an SAE reconstructs its input: give one tensor, or use kind='transcoder' for a pair")
    if dict_kind != "sae" and isinstance(reader, TensorReader) and reader.y is None:
        raise DictionaryError(f"kind={kind!r} needs targets: give an (inputs, targets) pair of tensors")
    stream = Stream(reader, seed=seed, buffer_tokens=buffer_tokens, exclude_first=exclude_first,
                    exclude_tokens=exclude_tokens)  # fmt: skip
    settings = _settings(
        reader, stream, kind, n_latents=n_latents, k=k, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        aux_alpha=aux_alpha, dead_tokens=dead_tokens, warmup=warmup, decay=decay, exclude_first=exclude_first,
        exclude_tokens=exclude_tokens, buffer_tokens=buffer_tokens, threshold_lr=threshold_lr,
        max_norm_ratio=max_norm_ratio, activation=activation, site=site, input_site=input_site, output_site=output_site,
    )  # fmt: skip
    try:
        return run(
            stream, settings, out=None if out is None else Path(out).expanduser(), checkpoint_every=checkpoint_every,
            init_tokens=init_tokens, log_every=log_every, progress=progress, distributed=distributed,
            overwrite=overwrite,
        )  # fmt: skip
    finally:
        reader.close()
