"""Indirect object identification (Wang et al. 2022, "Interpretability in the Wild", section 2).

A sentence introduces two people and then has one of them, the subject S, give something to
the other, the indirect object IO: "When Mary and John went to the store, John gave a drink to"
-> " Mary". The answer is the IO name and the wrong token the S name, so the logit difference
reads how much the model prefers the right person. The templates are the paper's (its
``BABA_TEMPLATES``, plus the "When ... went to the ..." sentence above), with its places and
objects; names come from the paper's list of about 100 common first names, kept where
``" " + name`` is a single token for the model's tokenizer.

Both orders of the introduction are used, balanced: ABBA (IO first: "Mary and John ... John")
and BABA (S first: "John and Mary ... John"). The corruption is the paper's ABC distribution:
the same template, place and object with three distinct new names in the IO, S1 and S2 slots, so
the corrupt sentence carries no information about which clean name is the answer; answer and
wrong stay the clean IO and S ids. All names are single tokens after a space, so clean and
corrupt have equal token length.

A template is a ``str.format`` string with ``{A}`` and ``{B}`` (the two people as introduced),
``{S}`` (the subject's second mention) and optionally ``{place}`` and ``{object}``; it ends where
the IO name would follow. ABBA fills ``A=IO, B=S``; BABA fills ``A=S, B=IO``.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.errors import TaskError, unknown
from interpkit.tasks._task import Task, from_texts, need_tokenizer

if TYPE_CHECKING:
    from interpkit.models import Model

TEMPLATES = (
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "Then, {A} and {B} went to the {place}. {S} gave a {object} to",
    "Then, {A} and {B} had a lot of fun at the {place}. {S} gave a {object} to",
    "Then, {A} and {B} were working at the {place}. {S} decided to give a {object} to",
    "Then, {A} and {B} were thinking about going to the {place}. {S} wanted to give a {object} to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "After {A} and {B} went to the {place}, {S} gave a {object} to",
    "When {A} and {B} got a {object} at the {place}, {S} decided to give it to",
    "When {A} and {B} got a {object} at the {place}, {S} decided to give the {object} to",
    "While {A} and {B} were working at the {place}, {S} gave a {object} to",
    "While {A} and {B} were commuting to the {place}, {S} gave a {object} to",
    "After the lunch, {A} and {B} went to the {place}. {S} gave a {object} to",
    "Afterwards, {A} and {B} went to the {place}. {S} gave a {object} to",
    "Then, {A} and {B} had a long argument. Afterwards {S} said to",
    "The {place} {A} and {B} went to had a {object}. {S} gave it to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
)

PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")

# Common first names, from the list used by the paper's IOI dataset code (Wang et al. 2022).
# fmt: off
NAMES = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel", "David",
    "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah", "William",
    "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas", "Anthony", "Heather", "Eric", "Elizabeth", "Adam",
    "Megan", "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle", "Rachel", "Laura", "Lauren",
    "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy", "Crystal", "Michelle", "Tiffany",
    "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca", "Jacob", "Stephen", "Patrick", "Sean",
    "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin", "Paul", "Angela", "Tyler", "Scott",
    "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis", "Lisa", "Kenneth", "Bryan", "Lindsey", "Kristen",
    "Jose", "Alexander", "Jesse", "Katie", "Lindsay", "Shannon", "Vanessa", "Courtney", "Christine", "Alicia",
    "Cody", "Allison", "Bradley", "Samuel",
)
# fmt: on

ORDERS = ("ABBA", "BABA")
_FIELDS = {"A", "B", "S", "place", "object"}


def single_token_names(model: Model, names: Sequence[str] = NAMES) -> list[str]:
    """The names ``n`` for which ``" " + n`` is one token (distinct tokens, first occurrence kept)."""
    tok = need_tokenizer(model, "ioi")
    kept, seen = [], set()
    for name in names:
        ids = tok.encode(" " + name, add_special_tokens=False)
        if len(ids) == 1 and ids[0] not in seen:
            kept.append(name)
            seen.add(ids[0])
    return kept


def _check_template(template: str, where: str) -> str:
    if not isinstance(template, str):
        raise TaskError(f"ioi {where} must be a template string or an index, got {template!r}")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise TaskError(f"ioi {where} {template!r} is not a valid format string: {exc}") from None
    missing = {"A", "B", "S"} - fields
    extra = fields - _FIELDS
    if missing or extra:
        raise TaskError(
            f"ioi {where} {template!r} must use {{A}}, {{B}} and {{S}} (and optionally {{place}}, {{object}}); "
            f"missing {sorted(missing)}, unknown {sorted(extra)}"
        )
    for field in ("A", "B", "S"):
        # Names were checked as single tokens *with* a leading space.
        if f" {{{field}}}" not in template:
            raise TaskError(f"ioi {where} {template!r}: every name slot must follow a space, {{{field}}} does not")
    if template != template.rstrip():
        raise TaskError(f"ioi {where} {template!r} must not end in whitespace (the answer token carries the space)")
    return template


def _resolve_templates(templates: Any) -> tuple[list[str], tuple[str, ...], str]:
    """(template strings, orders to use, label for params)."""
    if isinstance(templates, str):
        if templates == "all":
            return list(TEMPLATES), ORDERS, "all"
        if templates in ORDERS:
            return list(TEMPLATES), (templates,), templates
        raise unknown("ioi templates value", templates, ["all", *ORDERS], TaskError)
    if not isinstance(templates, Sequence) or len(templates) == 0:
        raise TaskError(f"ioi templates must be 'all', 'ABBA', 'BABA' or a non-empty list; got {templates!r}")
    chosen = []
    for i, t in enumerate(templates):
        if isinstance(t, int) and not isinstance(t, bool):
            if not 0 <= t < len(TEMPLATES):
                raise TaskError(
                    f"ioi template index {t} is out of range: there are {len(TEMPLATES)} (0..{len(TEMPLATES) - 1})"
                )
            chosen.append(TEMPLATES[t])
        else:
            chosen.append(_check_template(t, f"template {i}"))
    return chosen, ORDERS, "custom"


def ioi(
    model: Model,
    n: int = 32,
    seed: int = 0,
    templates: str | Sequence[str | int] = "all",
    names: Sequence[str] | None = None,
) -> Task:
    """IOI prompts with ABC corruptions; ``templates``: "all", "ABBA", "BABA" or a list of indices/strings.

    >>> task = ik.tasks.load("ioi", model, n=16, seed=0)                # doctest: +SKIP
    >>> task.clean_text[0], task.corrupt_text[0]                          # doctest: +SKIP
    ('While Bradley and Steven were working at the restaurant, Steven gave a kiss to',
     'While Lisa and Allison were working at the restaurant, Sarah gave a kiss to')
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise TaskError(f"ioi task needs n >= 1 examples, got n={n!r}")
    need_tokenizer(model, "ioi")
    if isinstance(names, str):
        raise TaskError(f"ioi names must be a list of first names, got the string {names!r}")
    chosen, orders, label = _resolve_templates(templates)
    pool = single_token_names(model, NAMES if names is None else list(names))
    if len(pool) < 5:
        raise TaskError(
            f"ioi needs at least 5 first names that are single tokens after a space (2 for the clean "
            f"sentence, 3 new ones for the ABC corruption); only {len(pool)} of {len(names or NAMES)} are: {pool}"
        )
    rng = random.Random(seed)
    # Balanced orders: equal counts (one extra when n is odd), shuffled.
    order = [orders[i % len(orders)] for i in range(n)]
    rng.shuffle(order)
    clean, corrupt, answer, wrong, index = [], [], [], [], []
    for i in range(n):
        t = rng.randrange(len(chosen))
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        io, s = rng.sample(pool, 2)
        c1, c2, c3 = rng.sample([x for x in pool if x not in (io, s)], 3)
        first, second = (io, s) if order[i] == "ABBA" else (s, io)
        clean.append(chosen[t].format(A=first, B=second, S=s, place=place, object=obj))
        corrupt.append(chosen[t].format(A=c1, B=c2, S=c3, place=place, object=obj))
        answer.append(" " + io)
        wrong.append(" " + s)
        index.append(t)
    params = {
        "n": n,
        "seed": seed,
        "templates": label if label != "custom" else chosen,
        "corruption": "ABC",
        "n_names": len(pool),
        "order": order,
        "template_index": index,
    }
    where = [f"example {i} ({order[i]}, template {index[i]})" for i in range(n)]
    return from_texts("ioi", model, clean, corrupt, answer, wrong, params=params, where=where)
