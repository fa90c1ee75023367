"""``ik.tasks.load(name_or_path, model, **params)``: built-in generators by name, or a JSONL file."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.errors import TaskError, unknown
from interpkit.tasks._task import Task

if TYPE_CHECKING:
    from interpkit.models import Model


def _generators() -> dict[str, Callable[..., Task]]:
    from interpkit.tasks.factual import factual
    from interpkit.tasks.greater_than import greater_than
    from interpkit.tasks.induction import induction
    from interpkit.tasks.ioi import ioi

    return {"induction": induction, "ioi": ioi, "factual": factual, "greater-than": greater_than}


GENERATORS = ("induction", "ioi", "factual", "greater-than")


def load(name_or_path: str | os.PathLike, model: Model, metric: str | None = None, **params: Any) -> Task:
    """A task by generator name (``induction``, ``ioi``, ``factual``, ``greater-than``) or JSONL path.

    >>> task = ik.tasks.load("ioi", model, n=16, seed=0)        # doctest: +SKIP
    >>> task = ik.tasks.load("my_task.jsonl", model)            # doctest: +SKIP
    """
    from interpkit.metrics import get as get_metric
    from interpkit.tasks.jsonl import load_jsonl

    if metric is not None:
        get_metric(metric)
    text = os.fspath(name_or_path)
    if text.endswith(".jsonl") or Path(text).is_file():
        if params:
            raise TaskError(f"task files take no generator parameters; got {sorted(params)}")
        if not Path(text).is_file():
            raise TaskError(f"task file {text!r} does not exist")
        return load_jsonl(text, model, metric=metric)
    generators = _generators()
    if text not in generators:
        raise unknown("task", text, [*generators, "<path>.jsonl"], TaskError)
    fn = generators[text]
    accepted = set(inspect.signature(fn).parameters) - {"model"}
    bad = sorted(set(params) - accepted)
    if bad:
        raise TaskError(f"task {text!r} does not take parameter(s) {bad}; it takes {sorted(accepted)}")
    task = fn(model, **params)
    if metric is not None:
        task.metric = metric
    return task
