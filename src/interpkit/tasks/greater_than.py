"""Greater-than (Hanna et al. 2023, "How does GPT-2 compute greater-than?", section 2).

Prompt: "The war lasted from the year 17YY to the year 17"; a model that understands the
sentence puts its weight on end years greater than the start year. The event noun varies
("war", "siege", "reign", ...), drawn by the seed. Corrupt: the same sentence with the start
year's last two digits replaced by "01" (the paper's "01-dataset"), which leaves every end year
plausible; it must tokenize to the same length as the clean prompt.

The paper scores the probability mass on all years above YY against all years below. A task
here has one answer and one wrong token, and which tokens they are depends on how the tokenizer
splits years:

- two-digit style (GPT-2: " 1732" -> " 17", "32"; the next token is the whole two-digit year):
  YY is drawn from 02..98, answer ``f"{YY+1:02d}"``, wrong ``f"{YY-1:02d}"``: the nearest year
  on each side of the boundary, so the logit difference reads the comparison itself.
- one-digit style (SmolLM2, Llama-3-like tokenizers with single digits: " 1732" -> " ", "1",
  "7", "3", "2"; the next token is the tens digit): for a tens digit t in 2..8 and any units
  digit, answer ``str(t+1)`` and wrong ``str(t-1)``: a tens digit above t makes a later year
  whatever follows, one below makes an earlier year. (t itself is left out: it can go either
  way depending on the units digit still to come.)

Any other split raises a TaskError naming it.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from interpkit.errors import TaskError
from interpkit.tasks._task import Task, from_texts, need_tokenizer

if TYPE_CHECKING:
    from interpkit.models import Model

TEMPLATE = "The {noun} lasted from the year 17{yy} to the year 17"
CORRUPT_YY = "01"
NOUNS = (
    "war",
    "siege",
    "reign",
    "dynasty",
    "expedition",
    "rebellion",
    "voyage",
    "occupation",
    "drought",
    "famine",
    "strike",
    "trial",
    "pilgrimage",
    "plague",
)


def year_style(tokenizer: Any) -> str:
    """``"two-digit"`` or ``"one-digit"``: what follows the century token(s) of a year."""

    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    century, year = enc(" 17"), enc(" 1732")
    rest = year[len(century) :]
    if year[: len(century)] == century:
        if len(rest) == 1 and rest == enc("32"):
            return "two-digit"
        if len(rest) == 2 and [rest[0]] == enc("3") and [rest[1]] == enc("2"):
            return "one-digit"
    pieces = [tokenizer.decode([i]) for i in year]
    raise TaskError(
        f"greater-than needs years that split as ' 17' + two digits (one token or one per digit); "
        f"this tokenizer splits ' 1732' into {pieces}"
    )


def _answers(style: str, yy: int) -> tuple[str, str]:
    if style == "two-digit":
        return f"{yy + 1:02d}", f"{yy - 1:02d}"
    tens = yy // 10
    return str(tens + 1), str(tens - 1)


def _valid(tokenizer: Any, style: str, yy: int) -> bool:
    """Clean and corrupt of equal length, and answer/wrong each one token right after the prompt."""

    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    clean = TEMPLATE.format(noun=NOUNS[0], yy=f"{yy:02d}")
    if len(enc(clean)) != len(enc(TEMPLATE.format(noun=NOUNS[0], yy=CORRUPT_YY))):
        return False
    base = enc(clean)
    for text in _answers(style, yy):
        ids = enc(text)
        if len(ids) != 1 or enc(clean + text) != base + ids:
            return False
    return True


def greater_than(model: Model, n: int = 32, seed: int = 0) -> Task:
    """Hanna et al.'s greater-than prompts with the "01" corruption, for either year tokenization.

    >>> task = ik.tasks.load("greater-than", model, n=16, seed=0)        # doctest: +SKIP
    >>> task.clean_text[0], task.corrupt_text[0]                          # doctest: +SKIP
    ('The plague lasted from the year 1769 to the year 17', 'The plague lasted from the year 1701 to the year 17')
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise TaskError(f"greater-than task needs n >= 1 examples, got n={n!r}")
    tok = need_tokenizer(model, "greater-than")
    style = year_style(tok)
    candidates = range(2, 99) if style == "two-digit" else range(20, 90)
    years = [yy for yy in candidates if _valid(tok, style, yy)]
    if not years:
        raise TaskError(
            f"greater-than ({style} years): no start year 17YY gives single-token answers and a corrupt "
            f"prompt ('17{CORRUPT_YY}') of the clean prompt's token length with this tokenizer"
        )
    rng = random.Random(seed)
    clean, corrupt, answer, wrong, starts = [], [], [], [], []
    for _ in range(n):
        noun, yy = rng.choice(NOUNS), rng.choice(years)
        clean.append(TEMPLATE.format(noun=noun, yy=f"{yy:02d}"))
        corrupt.append(TEMPLATE.format(noun=noun, yy=CORRUPT_YY))
        good, bad = _answers(style, yy)
        answer.append(good)
        wrong.append(bad)
        starts.append(yy)
    params = {"n": n, "seed": seed, "style": style, "corruption": CORRUPT_YY, "yy": starts}
    return from_texts("greater-than", model, clean, corrupt, answer, wrong, params=params)
