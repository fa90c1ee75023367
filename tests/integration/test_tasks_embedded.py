"""The text task generators on the embedded SmolLM2: the model does the tasks, the corruptions undo it.

Run with ``-s`` to see the measured logit differences (mean over examples, clean and corrupt).
"""

from __future__ import annotations

import pytest

from interpkit.metrics import clean_and_corrupt
from interpkit.tasks.factual import factual
from interpkit.tasks.greater_than import greater_than
from interpkit.tasks.ioi import ioi

pytestmark = pytest.mark.integration


def _measure(model, task) -> tuple[float, float]:
    values = clean_and_corrupt(model, task)
    print(f"\n{task.name}: n={len(task)} clean logit diff {values['clean']:+.3f}, corrupt {values['corrupt']:+.3f}")
    return values["clean"], values["corrupt"]


def test_ioi_on_embedded(smollm2):
    task = ioi(smollm2, n=32, seed=0)
    clean, corrupt = _measure(smollm2, task)
    # DESIGN.md: an IOI prompt gives about +5 for the right name on this model.
    assert clean > 1.0
    assert clean > corrupt + 1.0


def test_factual_on_embedded(smollm2):
    task = factual(smollm2, seed=0)
    assert task.params["facts_kept"] >= 40
    clean, corrupt = _measure(smollm2, task)
    assert clean > 0.0 > corrupt


def test_greater_than_on_embedded(smollm2):
    task = greater_than(smollm2, n=32, seed=0)
    assert task.params["style"] == "one-digit"
    clean, corrupt = _measure(smollm2, task)
    assert clean > corrupt
