"""``ik.tasks.load(name_or_path, model, **params)``: built-in generators by name, or a JSONL file."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.errors import TaskError, check_int, unknown
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
MAX_EXAMPLES = 1_000_000  # a task is held in memory as token tensors; larger runs are several tasks
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes


def check_params(task: str, fn: Callable[..., Task], params: dict[str, Any]) -> None:
    """TaskError for a generator parameter of the wrong type or range (``--param seed=abc``, ``n=10**9``).

    Parameters annotated ``int`` (or ``int | None``) must be ints, never bools, floats or strings;
    ``n`` lies in 1..MAX_EXAMPLES and ``seed`` in 0..2**63-1.
    """
    signature = inspect.signature(fn).parameters
    for key, value in params.items():
        annotation = str(signature[key].annotation).replace(" ", "")
        if annotation not in ("int", "int|None") or (value is None and annotation == "int|None"):
            continue
        name = f"task {task!r} parameter {key}"
        check_int(value, name, TaskError)
        if key == "n" and not 1 <= value <= MAX_EXAMPLES:
            raise TaskError(
                f"{name}: needs n >= 1 examples and at most {MAX_EXAMPLES:,}, got n={value:,} (a task is held in "
                "memory as token tensors; for more, run several tasks with different seeds and combine the results)"
            )
        if key == "seed":
            check_int(value, f"{name} (seed)", TaskError, minimum=0, maximum=MAX_SEED)


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
    check_params(text, fn, params)
    task = fn(model, **params)
    if metric is not None:
        task.metric = metric
    return task
