"""Task metrics: logit difference, answer log-prob and probability, KL to clean, accuracy.

Every metric reads the logits at each example's ``answer_pos`` and returns one value per
example, shape ``(batch,)``; take ``.mean()`` for the batch value. The normalised form maps the
clean run to 1 and the corrupt run to 0 (Wang et al. 2022; Heimersheim and Nanda 2024):
``(m - m_corrupt) / (m_clean - m_corrupt)``.

Metrics are plain functions ``fn(final_logits, answer, wrong, clean_logprobs) -> (batch,)`` in
one table, so the patching engine can evaluate them on final-position logits of any batch of
patched rows without a Task object.

    >>> import torch
    >>> from interpkit.metrics import METRICS
    >>> logits = torch.tensor([[2.0, 0.5, 0.0]])
    >>> METRICS["logit_diff"](logits, torch.tensor([0]), torch.tensor([1]), None)
    tensor([1.5000])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from interpkit.errors import TaskError, unknown

if TYPE_CHECKING:
    import torch

# An interpkit.tasks.Task: metrics sit below tasks in the layering (tasks check metric names), so
# the class is not imported here.
Task = Any

MetricFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor | None"], "torch.Tensor"]


def _pick(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return values.gather(-1, ids[:, None])[:, 0]


def logit_diff(
    final: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor, clean_logprobs: torch.Tensor | None = None
) -> torch.Tensor:
    """logit(answer) - logit(wrong)."""
    return _pick(final, answer) - _pick(final, wrong)


def answer_logprob(
    final: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor, clean_logprobs: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(answer)."""
    return _pick(final.float().log_softmax(-1), answer)


def answer_prob(
    final: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor, clean_logprobs: torch.Tensor | None = None
) -> torch.Tensor:
    """p(answer)."""
    return _pick(final.float().softmax(-1), answer)


def kl_to_clean(
    final: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor, clean_logprobs: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(clean || run) of the next-token distribution at the answer position (0 on the clean run)."""
    if clean_logprobs is None:
        raise TaskError("metric 'kl' needs the clean run's log-probabilities")
    logprobs = final.float().log_softmax(-1)
    return (clean_logprobs.exp() * (clean_logprobs - logprobs)).sum(-1)


def accuracy(
    final: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor, clean_logprobs: torch.Tensor | None = None
) -> torch.Tensor:
    """1.0 where the top-1 prediction is the answer, else 0.0."""
    return (final.argmax(-1) == answer).float()


METRICS: dict[str, MetricFn] = {
    "logit_diff": logit_diff,
    "logprob": answer_logprob,
    "prob": answer_prob,
    "kl": kl_to_clean,
    "accuracy": accuracy,
}
# Where a larger value means "more like clean" (KL is the other way round: 0 is clean).
HIGHER_IS_CLEAN = {"logit_diff": True, "logprob": True, "prob": True, "kl": False, "accuracy": True}


def get(name: str) -> MetricFn:
    """The metric function called ``name``; TaskError listing the choices otherwise."""
    if name not in METRICS:
        raise unknown("metric", name, METRICS, TaskError)
    return METRICS[name]


def final_logits(logits: torch.Tensor, answer_pos: torch.Tensor) -> torch.Tensor:
    """Logits ``(batch, d_vocab)`` at each example's answer position."""
    import torch

    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, answer_pos.to(logits.device)]


def evaluate(
    logits: torch.Tensor, task: Task, metric: str | None = None, clean_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example metric ``(batch,)`` of full logits ``(batch, pos, d_vocab)`` on ``task``."""
    name = metric or task.metric
    fn = get(name)
    clean_lp = None
    if clean_logits is not None:
        clean_lp = final_logits(clean_logits, task.answer_pos).float().log_softmax(-1)
    return fn(
        final_logits(logits, task.answer_pos), task.answer.to(logits.device), task.wrong.to(logits.device), clean_lp
    )


def normalise(
    value: torch.Tensor | float, clean: torch.Tensor | float, corrupt: torch.Tensor | float
) -> torch.Tensor | float:
    """``(value - corrupt) / (clean - corrupt)``: 1 at clean, 0 at corrupt."""
    denominator = clean - corrupt
    if isinstance(denominator, float) and denominator == 0.0:
        raise TaskError("cannot normalise: the metric is the same on clean and corrupt runs")
    return (value - corrupt) / denominator


def clean_and_corrupt(model: Model, task: Task, metric: str | None = None) -> dict[str, object]:
    """Run the task's clean and corrupt prompts; per-example and mean metric for each.

    >>> vals = clean_and_corrupt(model, task)                     # doctest: +SKIP
    >>> vals["clean"], vals["corrupt"]                           # doctest: +SKIP
    (5.1, -0.3)
    """
    import torch

    name = metric or task.metric
    get(name)
    with torch.inference_mode():
        clean_logits = model(task.clean, attention_mask=task.attention_mask)
        corrupt_logits = model(task.corrupt, attention_mask=task.attention_mask)
        clean_values = evaluate(clean_logits, task, name, clean_logits)
        corrupt_values = evaluate(corrupt_logits, task, name, clean_logits)
    return {
        "metric": name,
        "clean": float(clean_values.mean()),
        "corrupt": float(corrupt_values.mean()),
        "clean_per_example": clean_values.cpu(),
        "corrupt_per_example": corrupt_values.cpu(),
    }


if TYPE_CHECKING:
    from interpkit.models import Model
