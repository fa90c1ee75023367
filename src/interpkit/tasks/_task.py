"""``Task``: paired clean and corrupt token batches with the answers a metric reads.

Each example is a clean prompt, a corrupt prompt of the *same token length* (the task is
rejected otherwise: interpkit never pads one against the other, since that would silently
misalign positions), an answer token and a wrong token. Examples of different lengths are
right-padded to a common length; ``answer_pos`` gives each example's last real position and
``attention_mask`` marks real tokens. Right padding keeps every real token's absolute position,
and with causal attention the pad tokens after ``answer_pos`` cannot change what is read there.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.errors import TaskError, check_text

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model


@dataclasses.dataclass
class Task:
    """A batch of clean/corrupt prompt pairs.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=8, seed=0)
    >>> task.clean.shape == task.corrupt.shape
    True
    """

    name: str
    clean: torch.Tensor  # (batch, pos) long
    corrupt: torch.Tensor  # (batch, pos) long
    answer: torch.Tensor  # (batch,) long
    wrong: torch.Tensor  # (batch,) long
    answer_pos: torch.Tensor  # (batch,) long: position whose logits the metric reads
    attention_mask: torch.Tensor  # (batch, pos) long: 1 for real tokens, 0 for padding
    metric: str = "logit_diff"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    clean_text: list[str] | None = None
    corrupt_text: list[str] | None = None

    def __post_init__(self) -> None:
        n = self.clean.shape[0]
        if n == 0:
            raise TaskError(f"task {self.name!r} is empty: it has no examples")
        if self.clean.shape != self.corrupt.shape:
            raise TaskError(
                f"task {self.name!r}: clean {tuple(self.clean.shape)} and corrupt {tuple(self.corrupt.shape)} differ in shape"
            )
        for field in ("answer", "wrong", "answer_pos"):
            if getattr(self, field).shape != (n,):
                raise TaskError(
                    f"task {self.name!r}: {field} must have shape ({n},), got {tuple(getattr(self, field).shape)}"
                )

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.clean.shape[1])

    @property
    def device(self) -> torch.device:
        return self.clean.device

    def to(self, device: Any) -> Task:
        """A copy of the task on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in moved.items():
            if hasattr(value, "to") and hasattr(value, "shape"):
                moved[key] = value.to(device)
        return Task(**moved)

    def subset(self, index: Any) -> Task:
        """The examples at ``index`` (a slice, list of ints or bool mask), trimmed of unused padding."""
        import torch

        idx = torch.arange(len(self))[index].reshape(-1)
        if idx.numel() == 0:
            raise TaskError(f"subset of task {self.name!r} selects no examples")
        width = int(self.answer_pos[idx].max()) + 1
        width = max(width, int(self.attention_mask[idx].sum(1).max()))
        pick = idx.tolist()
        # Per-example lists in params (template index, order, ...) follow the selection.
        params = {
            k: [v[i] for i in pick] if isinstance(v, list) and len(v) == len(self) else v
            for k, v in self.params.items()
        }
        return Task(
            name=self.name,
            clean=self.clean[idx, :width],
            corrupt=self.corrupt[idx, :width],
            answer=self.answer[idx],
            wrong=self.wrong[idx],
            answer_pos=self.answer_pos[idx],
            attention_mask=self.attention_mask[idx, :width],
            metric=self.metric,
            params=params,
            clean_text=[self.clean_text[i] for i in pick] if self.clean_text else None,
            corrupt_text=[self.corrupt_text[i] for i in pick] if self.corrupt_text else None,
        )

    def hash(self) -> str:
        """SHA-256 of the task's tokens and answers (what provenance records)."""
        digest = hashlib.sha256()
        for t in (self.clean, self.corrupt, self.answer, self.wrong, self.answer_pos):
            digest.update(str(tuple(t.shape)).encode())
            digest.update(t.detach().cpu().long().numpy().tobytes())
        digest.update(self.metric.encode())
        return digest.hexdigest()

    def provenance(self) -> dict[str, Any]:
        return {"task": self.name, "task_hash": self.hash(), "n_examples": len(self), "task_params": dict(self.params)}

    def same_positions(self) -> bool:
        """True when every example reads its answer at the same position (no padding)."""
        return bool((self.answer_pos == self.answer_pos[0]).all()) and bool(self.attention_mask.all())


def need_tokenizer(model: Model, task: str) -> Any:
    """The model's tokenizer, or a TaskError saying that ``task`` is built from text."""
    if model.tokenizer is None:
        raise TaskError(f"the {task} task is built from text and needs a tokenizer; model {model.spec!r} has none")
    return model.tokenizer


def _is_id(value: Any) -> bool:
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def token_ids(value: Any, what: str) -> list[int]:
    """``value`` as a list of token ids, or a TaskError: bools, floats, strings and dicts are refused.

    A 1-D integer tensor, or any sequence of ints (numpy ints too), is accepted as it is.

    >>> token_ids([5, 9, 2], "example 0: clean")
    [5, 9, 2]
    >>> token_ids([5, True], "example 0: clean")
    Traceback (most recent call last):
    ...
    interpkit.errors.TaskError: example 0: clean must be a list of int token ids; item 1 is True (bool)
    """
    import torch

    if isinstance(value, torch.Tensor):
        if value.ndim != 1 or value.dtype.is_floating_point or value.dtype == torch.bool or value.is_complex():
            raise TaskError(f"{what} must be a 1-D tensor of int token ids, got {value.dtype} {tuple(value.shape)}")
        return [int(i) for i in value.tolist()]
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Sequence):
        raise TaskError(f"{what} must be a list of int token ids, got {type(value).__name__} {value!r:.60}")
    for i, item in enumerate(value):
        if not _is_id(item):
            raise TaskError(f"{what} must be a list of int token ids; item {i} is {item!r:.40} ({type(item).__name__})")
    return [int(i) for i in value]


def token_id(value: Any, what: str) -> int:
    """``value`` as one token id (an int, or a 0-d integer tensor), or a TaskError."""
    import torch

    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.dtype.is_floating_point:
        value = value.item()
    if not _is_id(value):
        raise TaskError(f"{what} must be an int token id, got {value!r:.40} ({type(value).__name__})")
    return int(value)


def from_token_lists(
    name: str,
    model: Model | None,
    clean: Sequence[Sequence[int]],
    corrupt: Sequence[Sequence[int]],
    answer: Sequence[int],
    wrong: Sequence[int],
    metric: str = "logit_diff",
    params: dict[str, Any] | None = None,
    clean_text: list[str] | None = None,
    corrupt_text: list[str] | None = None,
    where: Sequence[str] | None = None,
) -> Task:
    """Build a Task from per-example token lists, checking every contract of the task format.

    ``where`` names each example for error messages (e.g. ``"line 7"``).
    """
    import torch

    n = len(clean)
    if n == 0:
        raise TaskError(f"task {name!r} is empty: it has no examples")
    if not (len(corrupt) == len(answer) == len(wrong) == n):
        raise TaskError(f"task {name!r}: clean, corrupt, answer and wrong have different counts")
    where = list(where) if where is not None else [f"example {i}" for i in range(n)]
    clean = [token_ids(c, f"task {name!r}, {w}: clean") for c, w in zip(clean, where, strict=True)]
    corrupt = [token_ids(c, f"task {name!r}, {w}: corrupt") for c, w in zip(corrupt, where, strict=True)]
    answer = [token_id(a, f"task {name!r}, {w}: answer") for a, w in zip(answer, where, strict=True)]
    wrong = [token_id(a, f"task {name!r}, {w}: wrong") for a, w in zip(wrong, where, strict=True)]
    n_ctx = model.cfg.n_ctx if model is not None else None
    d_vocab = model.cfg.d_vocab if model is not None else None
    for i in range(n):
        if len(clean[i]) != len(corrupt[i]):
            raise TaskError(
                f"task {name!r}, {where[i]}: clean has {len(clean[i])} tokens but corrupt has {len(corrupt[i])}; "
                "they must be equal (interpkit rejects rather than pads, so positions stay aligned)"
            )
        if len(clean[i]) == 0:
            raise TaskError(f"task {name!r}, {where[i]}: the prompt has no tokens")
        if n_ctx is not None and len(clean[i]) > n_ctx:
            raise TaskError(
                f"task {name!r}, {where[i]}: {len(clean[i])} tokens is longer than the model context n_ctx={n_ctx}"
            )
        ids = [*clean[i], *corrupt[i], answer[i], wrong[i]]
        if d_vocab is not None and (min(ids) < 0 or max(ids) >= d_vocab):
            raise TaskError(
                f"task {name!r}, {where[i]}: token ids must lie in [0, {d_vocab}); got {min(ids)}..{max(ids)}"
            )
    width = max(len(c) for c in clean)
    pad = 0
    if model is not None and model.tokenizer is not None and model.tokenizer.pad_token_id is not None:
        pad = model.tokenizer.pad_token_id
    clean_t = torch.full((n, width), pad, dtype=torch.long)
    corrupt_t = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i in range(n):
        length = len(clean[i])
        clean_t[i, :length] = torch.tensor(list(clean[i]), dtype=torch.long)
        corrupt_t[i, :length] = torch.tensor(list(corrupt[i]), dtype=torch.long)
        mask[i, :length] = 1
    task = Task(
        name=name,
        clean=clean_t,
        corrupt=corrupt_t,
        answer=torch.tensor(list(answer), dtype=torch.long),
        wrong=torch.tensor(list(wrong), dtype=torch.long),
        answer_pos=mask.sum(1) - 1,
        attention_mask=mask,
        metric=metric,
        params=dict(params or {}),
        clean_text=clean_text,
        corrupt_text=corrupt_text,
    )
    return task.to(model.device) if model is not None else task


def from_texts(
    name: str,
    model: Model,
    clean: Sequence[str],
    corrupt: Sequence[str],
    answer: Sequence[str],
    wrong: Sequence[str],
    metric: str = "logit_diff",
    params: dict[str, Any] | None = None,
    where: Sequence[str] | None = None,
) -> Task:
    """Tokenize text examples with the model's BOS policy; answers must be single tokens."""
    model._need_tokenizer()
    bos = [model.tokenizer.bos_token_id] if model.prepend_bos else []
    enc = model.tokenizer
    where = list(where) if where is not None else [f"example {i}" for i in range(len(clean))]

    for field, texts in (("clean", clean), ("corrupt", corrupt), ("answer", answer), ("wrong", wrong)):
        for t, w in zip(texts, where, strict=True):
            check_text(t, f"task {name!r}, {w}: {field}", TaskError)

    def single(text: str, w: str, what: str) -> int:
        try:
            return model.to_single_token(text, what=what)
        except TaskError as exc:
            raise TaskError(f"task {name!r}, {w}: {exc}") from None

    return from_token_lists(
        name,
        model,
        [bos + enc.encode(t, add_special_tokens=False) for t in clean],
        [bos + enc.encode(t, add_special_tokens=False) for t in corrupt],
        [single(a, w, "answer") for a, w in zip(answer, where, strict=True)],
        [single(b, w, "wrong") for b, w in zip(wrong, where, strict=True)],
        metric=metric,
        params=params,
        clean_text=list(clean),
        corrupt_text=list(corrupt),
        where=where,
    )
