"""Factual recall: subject-relation-object prompts with subject-swapped corruptions.

Each fact is a subject, a relation template with ``{}`` for the subject, and the object that
completes it: ``("Eiffel Tower", "The {} is located in the city of", " Paris")``. This is the
prompt format of causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations
in GPT", section 2). Where causal tracing corrupts the subject with Gaussian noise, this task
uses symmetric token replacement (Zhang & Nanda 2024, "Towards Best Practices of Activation
Patching", section 3): the corrupt prompt is the same relation with *another subject* whose
object differs, chosen with the same token length so every position lines up. The answer is
the clean object and the wrong token the corrupt subject's object, so patching measures how
much of the subject's identity a site carries to the answer.

The facts ship as data in ``tasks/data/factual.jsonl`` (one ``{"subject", "relation",
"object"}`` per line; the object carries its leading space, as answers do in task files), and
a user can pass their own file in the same format. A fact is dropped for a given tokenizer when
its object is not a single token or no other subject of the same relation gives a prompt of
equal token length with a different object; ``params`` records how many were kept and why the
others were dropped.
"""

from __future__ import annotations

import json
import os
import random
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from interpkit.errors import TaskError
from interpkit.tasks._task import Task, from_texts, need_tokenizer

if TYPE_CHECKING:
    from interpkit.models import Model

KEYS = ("subject", "relation", "object")


def read_facts(path: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """The facts of a JSONL file (default: the curated set shipped with interpkit), validated."""
    if path is None:
        text = resources.files("interpkit.tasks").joinpath("data", "factual.jsonl").read_text(encoding="utf-8")
        name = "factual.jsonl"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TaskError(f"cannot read facts file {os.fspath(path)!r}: {exc}") from exc
        name = os.fspath(path)
    facts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{name}:{number}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k] for k in KEYS):
            raise TaskError(f"{name}:{number}: a fact needs non-empty string fields {list(KEYS)}, got {row!r}")
        if row["relation"].count("{}") != 1:
            raise TaskError(f"{name}:{number}: relation {row['relation']!r} must contain '{{}}' exactly once")
        facts.append({k: row[k] for k in KEYS})
    if not facts:
        raise TaskError(f"{name} holds no facts")
    return facts


def _prompt(fact: dict[str, str], subject: str | None = None) -> str:
    return fact["relation"].replace("{}", fact["subject"] if subject is None else subject)


def factual(model: Model, n: int | None = None, seed: int = 0, facts: str | os.PathLike | None = None) -> Task:
    """Subject-swapped factual prompts; ``n=None`` takes every fact usable with this tokenizer.

    >>> task = ik.tasks.load("factual", model, seed=0)                    # doctest: +SKIP
    >>> task.clean_text[0], task.corrupt_text[0]                          # doctest: +SKIP
    ('The capital of France is', 'The capital of Portugal is')
    """
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise TaskError(f"factual task needs n >= 1 examples (or n=None for all), got n={n!r}")
    tok = need_tokenizer(model, "factual")
    rows = read_facts(facts)
    object_ids = [tok.encode(f["object"], add_special_tokens=False) for f in rows]
    lengths = [len(tok.encode(_prompt(f), add_special_tokens=False)) for f in rows]
    single = [len(ids) == 1 for ids in object_ids]
    partners = [
        [
            j
            for j in range(len(rows))
            if j != i
            and single[j]
            and rows[j]["relation"] == rows[i]["relation"]
            and lengths[j] == lengths[i]
            and object_ids[j] != object_ids[i]
        ]
        for i in range(len(rows))
    ]
    kept = [i for i in range(len(rows)) if single[i] and partners[i]]
    dropped_object = sum(not s for s in single)
    dropped_partner = len(rows) - dropped_object - len(kept)
    summary = (
        f"{len(kept)} of {len(rows)} facts are usable with this tokenizer ({dropped_object} have an object that is not "
        f"one token, {dropped_partner} have no same-relation subject of equal token length with a different object)"
    )
    if not kept or (n is not None and n > len(kept)):
        asked = "any" if n is None else f"n={n}"
        raise TaskError(f"factual task cannot give {asked} examples: {summary}")
    rng = random.Random(seed)
    chosen = kept if n is None else rng.sample(kept, n)
    clean, corrupt, answer, wrong = [], [], [], []
    for i in chosen:
        j = rng.choice(partners[i])
        clean.append(_prompt(rows[i]))
        corrupt.append(_prompt(rows[i], rows[j]["subject"]))
        answer.append(rows[i]["object"])
        wrong.append(rows[j]["object"])
    params = {
        "n": len(chosen),
        "seed": seed,
        "facts": "builtin" if facts is None else os.fspath(facts),
        "facts_total": len(rows),
        "facts_kept": len(kept),
        "dropped_multi_token_object": dropped_object,
        "dropped_no_partner": dropped_partner,
    }
    where = [f"fact {i} ({rows[i]['subject']!r})" for i in chosen]
    return from_texts("factual", model, clean, corrupt, answer, wrong, params=params, where=where)
