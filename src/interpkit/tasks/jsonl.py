"""Task files: one JSON object per line, with text or token ids.

    {"clean": "When Mary and John ...", "corrupt": "When Alice and Bob ...", "answer": " Mary", "wrong": " John"}
    {"clean_ids": [5, 9, 2], "corrupt_ids": [5, 7, 2], "answer_id": 7, "wrong_id": 3}

Optional keys: ``"metric"`` on the first line sets the task's default metric. Text examples are
tokenized with the model's BOS policy; answers must be single tokens. Clean and corrupt must
have equal token length: interpkit rejects an example that does not (naming its line) rather
than padding it. Every error names the file and line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.errors import TaskError
from interpkit.tasks._task import Task, from_texts, from_token_lists

if TYPE_CHECKING:
    from interpkit.models import Model

TEXT_KEYS = ("clean", "corrupt", "answer", "wrong")
ID_KEYS = ("clean_ids", "corrupt_ids", "answer_id", "wrong_id")


def _read_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        raw = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"cannot read task file {str(path)!r}: {exc}") from exc
    rows = []
    for number, line in enumerate(raw, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise TaskError(f"{path}:{number}: each line must be a JSON object, got {type(obj).__name__}")
        rows.append((number, obj))
    if not rows:
        raise TaskError(f"task file {str(path)!r} is empty: it has no examples")
    return rows


def _check_keys(path: Path, number: int, obj: dict[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise TaskError(f"{path}:{number}: missing key(s) {missing}; a line needs {list(TEXT_KEYS)} or {list(ID_KEYS)}")


def load_jsonl(path: str | os.PathLike, model: Model, metric: str | None = None) -> Task:
    """Load a JSONL task file for ``model``."""
    path = Path(path)
    rows = _read_lines(path)
    by_ids = all(k in rows[0][1] for k in ID_KEYS)
    keys = ID_KEYS if by_ids else TEXT_KEYS
    where = [f"{path.name}:{number}" for number, _ in rows]
    for number, obj in rows:
        _check_keys(path, number, obj, keys)
    metric = metric or rows[0][1].get("metric", "logit_diff")
    params = {"path": str(path)}
    if by_ids:
        for number, obj in rows:
            ok = all(isinstance(obj[k], list) and all(isinstance(i, int) for i in obj[k]) for k in ID_KEYS[:2])
            if not ok or not all(isinstance(obj[k], int) for k in ID_KEYS[2:]):
                raise TaskError(
                    f"{path}:{number}: clean_ids/corrupt_ids must be lists of ints, answer_id/wrong_id ints"
                )
        cols = [[obj[k] for _, obj in rows] for k in ID_KEYS]
        return from_token_lists(path.stem, model, *cols, metric=metric, params=params, where=where)
    for number, obj in rows:
        if not all(isinstance(obj[k], str) for k in TEXT_KEYS):
            raise TaskError(f"{path}:{number}: clean, corrupt, answer and wrong must be strings")
    cols = [[obj[k] for _, obj in rows] for k in TEXT_KEYS]
    return from_texts(path.stem, model, *cols, metric=metric, params=params, where=where)


def save_jsonl(task: Task, path: str | os.PathLike) -> Path:
    """Write a task as a token-id JSONL file (round-trips through :func:`load_jsonl`)."""
    from interpkit.results import write_text_atomic

    lines = []
    for i in range(len(task)):
        n = int(task.attention_mask[i].sum())
        row = {
            "clean_ids": task.clean[i, :n].tolist(),
            "corrupt_ids": task.corrupt[i, :n].tolist(),
            "answer_id": int(task.answer[i]),
            "wrong_id": int(task.wrong[i]),
        }
        if i == 0:
            row["metric"] = task.metric
        lines.append(json.dumps(row))
    return write_text_atomic(path, "\n".join(lines) + "\n")
