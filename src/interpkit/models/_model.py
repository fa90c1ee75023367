"""The ``Model`` object: a TransformerBridge, its tokenizer, a plain config and provenance.

Everything downstream (sites, tasks, cache, patching, attribution) talks to a ``Model`` rather
than to the bridge directly, so that the places where TransformerLens 4.x is surprising are
handled once here: hook aliases are folded, the BOS policy is explicit, the config reads the
true rotary base, and ``generate`` never goes through the bridge's own generation loop (its
KV cache stays empty under transformers 5.x and the text degenerates).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.errors import DeviceError, SiteError, TaskError, check_text, unknown

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The dimensions every analysis needs, named as in TransformerLens."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: int | None
    attn_only: bool
    normalization: str | None  # "LN", "RMS" or None
    positional: str  # "rotary" or "standard"
    rotary_base: float | None
    parallel_attn_mlp: bool = False  # attention and MLP both read resid_pre (GPT-NeoX, GPT-J, Phi): no resid_mid

    @property
    def group_size(self) -> int:
        """Query heads sharing one key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


def _preferred_hook_name(names: list[str]) -> str:
    # Classic TransformerLens names (hook_resid_pre, attn.hook_z, ...) beat the bridge's
    # structural ones (blocks.0.hook_in, attn.o.hook_in); among equals, the shortest wins.
    structural = (".hook_in", ".hook_out")
    return min(names, key=lambda n: (n.endswith(structural), len(n), n))


class Model:
    """A transformer wrapped for interpretability work.

    Threads: one Model may be shared between threads. Every forward interpkit runs on it
    (``model(...)``, ``generate``, and every engine, since they all run inside
    :func:`interpkit.hooks.hooks`) holds ``model.lock``, a re-entrant lock, for the whole
    forward with its hooks, so one thread's hooks never fire in another thread's forward; the
    threads take turns and each gets the result it would get alone. They do not run in
    parallel: for that, load one Model per thread. Calling ``model.bridge`` directly from
    several threads bypasses the lock (hold ``model.lock`` yourself).

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> model.cfg.n_layers, model.cfg.n_heads
    (2, 4)
    """

    def __init__(
        self,
        bridge: Any,
        tokenizer: Any = None,
        *,
        spec: str,
        weights_hash: str | None = None,
        prepend_bos: bool | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        from interpkit.models._generate import repair_kv_cache

        self.bridge = bridge.eval()
        self.lock = threading.RLock()  # held by every forward interpkit runs (see the class docstring)
        repair_kv_cache(self.bridge)
        self.tokenizer = tokenizer
        self.spec = spec
        self.weights_hash = weights_hash
        self.info = dict(info or {})
        if prepend_bos is None:
            prepend_bos = bool(getattr(tokenizer, "add_bos_token", False)) if tokenizer else False
        self.prepend_bos = prepend_bos
        self.cfg = self._read_config()
        self._extra_points: dict[str, Any] = {}  # hook points interpkit adds (a splice's latents)
        self._hook_groups = self._fold_hooks()
        self._anatomy: Any = None

    @property
    def anatomy(self) -> Any:
        """The architecture facts engines ask for (:class:`interpkit.models.anatomy.Anatomy`), built once."""
        if self._anatomy is None:
            from interpkit.models.anatomy import Anatomy

            self._anatomy = Anatomy(self)
        return self._anatomy

    def __getstate__(self) -> dict[str, Any]:  # a lock cannot be copied: a copy gets its own
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ config and hooks
    def _read_config(self) -> ModelConfig:
        c = self.bridge.cfg
        hf = getattr(getattr(self.bridge, "original_model", None), "config", None)
        rotary_base = None
        positional = getattr(c, "positional_embedding_type", "standard")
        if hf is not None and getattr(hf, "rope_parameters", None):
            rotary_base = float(hf.rope_parameters.get("rope_theta", c.rotary_base))
            positional = "rotary"
        elif positional == "rotary":
            rotary_base = float(c.rotary_base)
        n_kv = getattr(c, "n_key_value_heads", None) or c.n_heads
        return ModelConfig(
            n_layers=int(c.n_layers),
            n_heads=int(c.n_heads),
            n_kv_heads=int(n_kv),
            d_model=int(c.d_model),
            d_head=int(c.d_head),
            d_vocab=int(c.d_vocab),
            n_ctx=int(c.n_ctx),
            d_mlp=None if getattr(c, "attn_only", False) else getattr(c, "d_mlp", None),
            attn_only=bool(getattr(c, "attn_only", False)),
            normalization=getattr(c, "normalization_type", None),
            positional="rotary" if positional == "rotary" else "standard",
            rotary_base=rotary_base,
            parallel_attn_mlp=bool(getattr(c, "parallel_attn_mlp", False)),
        )

    def _fold_hooks(self) -> dict[str, list[str]]:
        by_point: dict[int, list[str]] = {}
        for name, point in {**self.bridge.hook_dict, **self._extra_points}.items():
            by_point.setdefault(id(point), []).append(name)
        groups = {}
        for names in by_point.values():
            groups[_preferred_hook_name(names)] = sorted(names)
        return groups

    def refresh_hooks(self) -> None:
        """Re-read the bridge's hook points (after a mode switch such as split q/k/v inputs)."""
        self._hook_groups = self._fold_hooks()

    def hook_names(self) -> list[str]:
        """One name per real hook point (aliases folded), classic TransformerLens names first."""
        return list(self._hook_groups)

    def hook_aliases(self, name: str) -> list[str]:
        """Every name under which the hook point ``name`` is reachable."""
        return self._hook_groups[self.resolve_hook(name)]

    def resolve_hook(self, name: str) -> str:
        """The canonical name of a hook point given any of its names; SiteError if unknown."""
        if name in self._hook_groups:
            return name
        point = self._extra_points.get(name) or self.bridge.hook_dict.get(name)
        if point is not None:
            for canonical, names in self._hook_groups.items():
                if name in names:
                    return canonical
        raise unknown("hook", name, self.hook_names(), SiteError)

    def hook_point(self, name: str) -> Any:
        """The HookPoint module behind any name of it."""
        name = self.resolve_hook(name)
        return self._extra_points[name] if name in self._extra_points else self.bridge.hook_dict[name]

    def attach_hook_point(self, name: str, point: Any) -> None:
        """Make ``point`` (a TransformerLens ``HookPoint`` that some code of interpkit calls, such as a
        splice's latents) a hook point of this model under ``name``, for every engine to hook."""
        point.name = name
        self._extra_points[name] = point
        self.refresh_hooks()

    def detach_hook_point(self, name: str) -> None:
        """Remove a hook point :meth:`attach_hook_point` added (and any hooks left on it)."""
        point = self._extra_points.pop(name, None)
        if point is not None:
            point.remove_hooks(including_permanent=True)
        self.refresh_hooks()

    # ------------------------------------------------------------------ device and dtype
    @property
    def device(self) -> torch.device:
        """Where token ids go: the device of the input embedding (the first of :attr:`devices`)."""
        embed = getattr(self.bridge, "embed", None)
        first = next(embed.parameters(), None) if embed is not None else None
        return (first if first is not None else next(self.bridge.parameters())).device

    @property
    def devices(self) -> tuple[torch.device, ...]:
        """Every device holding weights, the input embedding's first (one entry unless loaded with ``device_map``)."""
        return tuple(dict.fromkeys([self.device, *(p.device for p in self.bridge.parameters())]))

    def layer_device(self, layer: int) -> torch.device:
        """The device block ``layer`` runs on (its weights' device)."""
        if not -self.cfg.n_layers <= layer < self.cfg.n_layers:
            raise SiteError(f"layer {layer} is out of range for {self.name} (layers 0..{self.cfg.n_layers - 1})")
        return next(self.bridge.blocks[layer].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.bridge.parameters()).dtype

    @property
    def name(self) -> str:
        return self.info.get("name", self.spec)

    def provenance(self) -> dict[str, Any]:
        """Model facts recorded with every Result."""
        return {
            "model": self.spec,
            "model_name": self.name,
            "weights_hash": self.weights_hash,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            **({"device_map": dict(self.info["device_map"])} if "device_map" in self.info else {}),
            **({"devices": [str(d) for d in self.devices]} if len(self.devices) > 1 else {}),
        }

    # ------------------------------------------------------------------ tokens
    def _need_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise TaskError(
                f"model {self.spec!r} has no tokenizer: give token ids instead of text "
                "(task files can use clean_ids / corrupt_ids / answer_id / wrong_id)"
            )
        return self.tokenizer

    def to_tokens(
        self, text: str | Sequence[str], prepend_bos: bool | None = None, padding_side: str = "right"
    ) -> torch.Tensor:
        """Token ids ``(batch, pos)``; pads a list of texts on ``padding_side`` with the pad id.

        ``prepend_bos`` defaults to ``model.prepend_bos`` (the model's own tokenizer behaviour;
        False for SmolLM2). Texts longer than the context raise a TaskError.
        """
        import torch

        if padding_side not in ("left", "right"):
            raise TaskError(f"padding_side {padding_side!r} is not one of 'left', 'right'")
        tok = self._need_tokenizer()
        bos = self.prepend_bos if prepend_bos is None else prepend_bos
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise TaskError("to_tokens got an empty list of texts")
        rows = []
        for i, t in enumerate(texts):
            ids = tok.encode(
                check_text(t, "text" if len(texts) == 1 else f"text {i}", TaskError), add_special_tokens=False
            )
            if bos:
                ids = [tok.bos_token_id, *ids]
            rows.append(ids)
        longest = max(len(r) for r in rows)
        if longest > self.cfg.n_ctx:
            raise TaskError(f"text of {longest} tokens is longer than the model context n_ctx={self.cfg.n_ctx}")
        if min(len(r) for r in rows) == 0:
            raise TaskError("an empty text gives no tokens; pass prepend_bos=True or a longer text")
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        out = torch.full((len(rows), longest), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            if padding_side == "right":
                out[i, : len(r)] = torch.tensor(r)
            else:
                out[i, longest - len(r) :] = torch.tensor(r)
        return out.to(self.device)

    def to_str_tokens(self, text: str | Sequence[int] | torch.Tensor, prepend_bos: bool | None = None) -> list[str]:
        """The tokens of one text (or one row of ids) as strings; ids print as ``<id>`` without a tokenizer."""
        import torch

        if isinstance(text, str):
            ids = self.to_tokens(text, prepend_bos=prepend_bos)[0].tolist()
        else:
            ids = text.reshape(-1).tolist() if isinstance(text, torch.Tensor) else list(text)
        if self.tokenizer is None:
            return [f"<{i}>" for i in ids]
        return [self.tokenizer.decode([i]) for i in ids]

    def to_single_token(self, text: str, what: str = "answer") -> int:
        """The id of ``text`` if it is exactly one token, else a TaskError naming the split (and ``what`` it is)."""
        tok = self._need_tokenizer()
        ids = tok.encode(check_text(text, what, TaskError), add_special_tokens=False)
        if len(ids) != 1:
            pieces = [tok.decode([i]) for i in ids]
            raise TaskError(f"{what} {text!r} is not a single token for {self.name}: it splits into {pieces}")
        return ids[0]

    # ------------------------------------------------------------------ running
    def __call__(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(batch, pos, d_vocab)`` for token ids ``(batch, pos)``."""
        tokens = self.check_tokens(tokens)
        mask = None if attention_mask is None else attention_mask.to(self.device)
        with self.lock:
            return self.bridge(tokens, attention_mask=mask).to(self.device)

    def answer_logits(
        self, tokens: torch.Tensor, answer_pos: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(batch, d_vocab)`` at each row's ``answer_pos`` only (the rest is never unembedded)."""
        from interpkit.hooks import hooks
        from interpkit.models.anatomy import answer_logits

        tokens = self.check_tokens(tokens)
        mask = None if attention_mask is None else attention_mask.to(self.device)

        def run(extra: Any) -> torch.Tensor:
            with hooks(self, fwd=extra):
                return self.bridge(tokens, attention_mask=mask)

        return answer_logits(self, answer_pos.to(self.device), run)

    def check_tokens(self, tokens: Any) -> torch.Tensor:
        import torch

        try:
            tokens = torch.as_tensor(tokens)
        except (TypeError, ValueError, RuntimeError, OverflowError):  # a dict, ragged rows, strings, None
            raise TaskError(
                f"tokens must be integer ids of shape (batch, pos) (a tensor, or equal-length lists of ints); "
                f"got {type(tokens).__name__} {tokens!r:.60}"
            ) from None
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise TaskError(
                f"tokens must be integer ids of shape (batch, pos); got {tuple(tokens.shape)} {tokens.dtype}"
            )
        if tokens.shape[1] > self.cfg.n_ctx:
            raise TaskError(f"{tokens.shape[1]} tokens is longer than the model context n_ctx={self.cfg.n_ctx}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.d_vocab):
            raise TaskError(
                f"token ids must lie in [0, {self.cfg.d_vocab}); got {int(tokens.min())}..{int(tokens.max())}"
            )
        return tokens.to(self.device, torch.long)

    def generate(
        self,
        prompt: str | torch.Tensor,
        max_new_tokens: int = 20,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
        use_cache: bool = True,
    ) -> Any:
        """Continue a prompt; greedy when ``temperature == 0``. Returns text for text, ids for ids.

        >>> model.generate("The capital of France is", max_new_tokens=3)  # doctest: +SKIP
        'The capital of France is Paris.'
        """
        from interpkit.models._generate import generate

        with self.lock:
            return generate(self, prompt, max_new_tokens, temperature, top_k, seed, stop_at_eos, use_cache)

    # ------------------------------------------------------------------ moving
    def to(self, device: Any = None, dtype: Any = None) -> Model:
        """Move and/or cast the model in place; returns self.

        Moving a model loaded with ``device_map`` gathers it onto the one ``device`` (the map's
        hooks are removed); casting keeps every module where it is.
        """
        from interpkit.models._devices import resolve_device, resolve_dtype

        if device is not None:
            target = resolve_device(device)
            if "device_map" in self.info:
                from interpkit.models._dispatch import undispatch

                undispatch(self)
            self.bridge.to(target)
            self.bridge.cfg.device = str(target)
        if dtype is not None:
            self.bridge.to(resolve_dtype(dtype))
        if self._anatomy is not None:
            self._anatomy.forget_weights()
        return self

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"Model({self.spec!r}: {c.n_layers} layers, {c.n_heads} heads ({c.n_kv_heads} kv), "
            f"d_model {c.d_model}, vocab {c.d_vocab}, {self.dtype}, {self.device})"
        )


__all__ = ["DeviceError", "Model", "ModelConfig"]
