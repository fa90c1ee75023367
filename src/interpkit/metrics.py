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
    if not isinstance(name, str):
        raise TaskError(
            f"metric must be a name, got {name!r:.40} ({type(name).__name__}); choose one of {', '.join(METRICS)}"
        )
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


def check_finite_run(final: torch.Tensor, run: str, task: Task) -> None:
    """NonFiniteError when a run's answer-position logits ``(batch, d_vocab)`` hold NaN or infinity.

    Every metric of such a run is NaN: this says so once, naming the run and the first example,
    instead of a NaN result (or a patch blamed for it).
    """
    import torch

    from interpkit.errors import NonFiniteError

    bad = (~torch.isfinite(final)).any(-1).nonzero()
    if bad.numel():
        raise NonFiniteError(
            f"the {run} run of task {task.name!r} gives non-finite logits (NaN or inf) on {bad.numel()} of "
            f"{final.shape[0]} examples, first example {int(bad[0, 0])}: the model's weights, or its dtype "
            "(overflow in float16), produce them; every metric would be NaN"
        )


def clean_and_corrupt(model: Model, task: Task, metric: str | None = None) -> dict[str, object]:
    """Run the task's clean and corrupt prompts; per-example and mean metric for each.

    The prompts go in row chunks sized from free memory (halved on out-of-memory), and only
    the answer position's logits are kept, so memory does not grow with the task. A run with
    non-finite logits is a NonFiniteError.

    >>> vals = clean_and_corrupt(model, task)                     # doctest: +SKIP
    >>> vals["clean"], vals["corrupt"]                           # doctest: +SKIP
    (5.1, -0.3)
    """
    import torch

    from interpkit.batching import Batcher, auto_rows

    name = metric or task.metric
    fn = get(name)
    task = task.to(model.device)
    model.check_tokens(task.clean)
    batcher = Batcher(auto_rows(model, task.n_pos))

    def final(tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            parts = batcher.run(0, len(task), lambda a, b: model.answer_logits(tokens[a:b], task.answer_pos[a:b]))
        return torch.cat(parts)

    clean_final = final(task.clean)
    check_finite_run(clean_final, "clean", task)
    corrupt_final = final(task.corrupt)
    check_finite_run(corrupt_final, "corrupt", task)
    clean_lp = clean_final.float().log_softmax(-1)
    answer, wrong = task.answer.to(clean_final.device), task.wrong.to(clean_final.device)
    clean_values = fn(clean_final, answer, wrong, clean_lp)
    corrupt_values = fn(corrupt_final, answer, wrong, clean_lp)
    return {
        "metric": name,
        "clean": float(clean_values.mean()),
        "corrupt": float(corrupt_values.mean()),
        "clean_per_example": clean_values.cpu(),
        "corrupt_per_example": corrupt_values.cpu(),
    }


if TYPE_CHECKING:
    from interpkit.models import Model
