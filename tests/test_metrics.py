"""Metric values on hand-made logits, normalisation, and errors."""

from __future__ import annotations

import math

import pytest
import torch

from interpkit.errors import TaskError
from interpkit.metrics import METRICS, evaluate, final_logits, get, normalise
from interpkit.tasks import from_token_lists

LOGITS = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 1.0, 0.0]], [[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]]])


@pytest.fixture
def task():
    # Example 0 reads position 1, example 1 (one token shorter) reads position 0.
    return from_token_lists("t", None, [[0, 1], [2]], [[1, 1], [0]], answer=[0, 1], wrong=[1, 2])


def test_final_logits_reads_answer_pos(task):
    assert torch.equal(final_logits(LOGITS, task.answer_pos), torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5]]))


def test_values(task):
    assert torch.allclose(evaluate(LOGITS, task, "logit_diff"), torch.tensor([2.0, 1.5]))
    lp0 = 3.0 - math.log(math.exp(3) + math.exp(1) + 1)
    assert evaluate(LOGITS, task, "logprob")[0].item() == pytest.approx(lp0, abs=1e-6)
    assert evaluate(LOGITS, task, "prob")[0].item() == pytest.approx(math.exp(lp0), abs=1e-6)
    assert torch.equal(evaluate(LOGITS, task, "accuracy"), torch.tensor([1.0, 1.0]))
    assert torch.allclose(evaluate(LOGITS, task, "kl", clean_logits=LOGITS), torch.zeros(2), atol=1e-7)
    other = LOGITS.clone()
    other[0, 1] = torch.tensor([0.0, 3.0, 0.0])
    assert evaluate(other, task, "kl", clean_logits=LOGITS)[0] > 0.5


def test_normalise():
    assert normalise(5.0, 5.0, 1.0) == 1.0
    assert normalise(1.0, 5.0, 1.0) == 0.0
    assert normalise(3.0, 5.0, 1.0) == 0.5
    with pytest.raises(TaskError, match="same on clean and corrupt"):
        normalise(1.0, 2.0, 2.0)


def test_unknown_metric():
    with pytest.raises(TaskError, match="logit_diff"):
        get("logit_dif")
    assert set(METRICS) == {"logit_diff", "logprob", "prob", "kl", "accuracy"}


def test_kl_needs_clean(task):
    with pytest.raises(TaskError, match="clean"):
        evaluate(LOGITS, task, "kl")
