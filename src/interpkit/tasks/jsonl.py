"""Task files: one JSON object per line, with text or token ids.

    {"clean": "When Mary and John ...", "corrupt": "When Alice and Bob ...", "answer": " Mary", "wrong": " John"}
    {"clean_ids": [5, 9, 2], "corrupt_ids": [5, 7, 2], "answer_id": 7, "wrong_id": 3}

Optional keys: ``"metric"`` on the first line sets the task's default metric. A UTF-8 byte order
mark at the start of the file is skipped, as harvest data files skip it. Text examples are
tokenized with the model's BOS policy; answers must be single tokens. Clean and corrupt must
have equal token length: interpkit rejects an example that does not (naming its line) rather
than padding it. Every error names the file and line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.errors import TaskError, check_text
from interpkit.tasks._task import Task, from_texts, from_token_lists

if TYPE_CHECKING:
    from interpkit.models import Model

TEXT_KEYS = ("clean", "corrupt", "answer", "wrong")
ID_KEYS = ("clean_ids", "corrupt_ids", "answer_id", "wrong_id")


def _read_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TaskError(f"cannot read task file {str(path)!r}: {exc}") from exc
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark is not part of the first line
    rows = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TaskError(
                f"{path}:{number}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
            ) from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise TaskError(f"{path}:{number}: malformed JSON (nested too deeply)") from None
        if not isinstance(obj, dict):
            raise TaskError(f"{path}:{number}: each line must be a JSON object, got {type(obj).__name__}")
        rows.append((number, obj))
    if not rows:
        raise TaskError(f"task file {str(path)!r} is empty: it has no examples")
    return rows


def _check_keys(path: Path, number: int, obj: dict[str, Any], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        form = "token-id" if keys == ID_KEYS else "text"
        raise TaskError(f"{path}:{number}: missing key(s) {missing} of the {form} form {', '.join(keys)}")


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true/false are not token ids


def load_jsonl(path: str | os.PathLike, model: Model, metric: str | None = None) -> Task:
    """Load a JSONL task file for ``model``."""
    from interpkit.metrics import get as get_metric

    path = Path(path)
    rows = _read_lines(path)
    by_ids = any(k in rows[0][1] for k in ID_KEYS)  # the form a line has begun to give decides what it lacks
    keys = ID_KEYS if by_ids else TEXT_KEYS
    where = [f"{path.name}:{number}" for number, _ in rows]
    for number, obj in rows:
        _check_keys(path, number, obj, keys)
    if metric is None:
        metric = rows[0][1].get("metric", "logit_diff")
        try:
            get_metric(metric)
        except TaskError as exc:
            raise TaskError(f"{path}:{rows[0][0]}: {exc}") from None
    params = {"path": str(path)}
    if by_ids:
        for number, obj in rows:
            ok = all(isinstance(obj[k], list) and all(_is_id(i) for i in obj[k]) for k in ID_KEYS[:2])
            if not ok or not all(_is_id(obj[k]) for k in ID_KEYS[2:]):
                raise TaskError(
                    f"{path}:{number}: clean_ids/corrupt_ids must be lists of ints, answer_id/wrong_id ints "
                    "(not true/false or decimals)"
                )
        cols = [[obj[k] for _, obj in rows] for k in ID_KEYS]
        return from_token_lists(path.stem, model, *cols, metric=metric, params=params, where=where)
    for number, obj in rows:
        if not all(isinstance(obj[k], str) for k in TEXT_KEYS):
            raise TaskError(f"{path}:{number}: clean, corrupt, answer and wrong must be strings")
        for k in TEXT_KEYS:
            check_text(obj[k], f"{path}:{number}: {k}", TaskError)
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
