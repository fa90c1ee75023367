"""Which tokens of each example a probe reads: position rules and the tokenisation they need.

A rule is one of

- ``"last"``: the last token of each example (the position that predicts the next token);
- ``"all"``: every token (after the BOS token when ``skip_bos``);
- ``"marked"``: the last token of each span written ``[[like this]]`` in the text (the markers
  are removed before tokenising; several spans per example give several positions);
- ``"match:REGEX"``: every token whose text, stripped of spaces, matches ``REGEX`` in full
  (``"match:(is|are)"``);
- a callable ``fn(str_tokens) -> list[int]``;
- an explicit list with one entry per example: an int or a list of ints (negative ints count
  from the end).

A rule that selects no token in some example raises a ProbeError naming the example.

    >>> from interpkit.probing._positions import select_positions
    >>> select_positions("match:(is|are)", [["The", " dogs", " are"]], n_bos=0)
    [[2]]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.probing._errors import ProbeError

if TYPE_CHECKING:
    from interpkit.models import Model

RULES = ("last", "all", "marked", "match:REGEX", "<callable>", "<list of positions per example>")
MARKER = ("[[", "]]")


def strip_marks(text: str, marker: tuple[str, str] = MARKER, where: str = "") -> tuple[str, list[tuple[int, int]]]:
    """``text`` without its markers, and the character span of each marked piece in the result."""
    open_, close = marker
    out, spans, i = [], [], 0
    while True:
        start = text.find(open_, i)
        if start < 0:
            out.append(text[i:])
            break
        end = text.find(close, start + len(open_))
        if end < 0:
            raise ProbeError(f"{where}: marker {open_!r} is not closed by {close!r} in {text!r}")
        out.append(text[i:start])
        begin = sum(len(p) for p in out)
        piece = text[start + len(open_) : end]
        out.append(piece)
        spans.append((begin, begin + len(piece)))
        i = end + len(close)
    return "".join(out), spans


def tokenize(
    model: Model, inputs: Sequence[Any], marked: bool, marker: tuple[str, str] = MARKER
) -> tuple[list[list[int]], list[str] | None, list[list[int]] | None, int]:
    """Token ids per example (BOS by the model's policy), texts without markers, marked token indices, n_bos."""
    if not inputs:
        raise ProbeError("no examples were given")
    if all(isinstance(x, str) for x in inputs):
        tok = model._need_tokenizer()
        bos = [tok.bos_token_id] if model.prepend_bos else []
        ids, texts, marks = [], [], []
        for i, raw in enumerate(inputs):
            text, spans = strip_marks(raw, marker, where=f"example {i}") if marked else (raw, [])
            if marked and not spans:
                raise ProbeError(
                    f"position rule 'marked' matches no token in example {i} ({raw!r}): "
                    f"mark the token to probe as {marker[0]}word{marker[1]}"
                )
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=bool(spans))
            row = list(enc["input_ids"])
            if not row:
                raise ProbeError(f"example {i} ({raw!r}) gives no tokens")
            ids.append(bos + row)
            texts.append(text)
            if spans:
                offsets = enc["offset_mapping"]
                picked = []
                for a, b in spans:
                    inside = [j for j, (s, e) in enumerate(offsets) if s < b and e > a]
                    if not inside:
                        raise ProbeError(f"marked span {text[a:b]!r} of example {i} covers no token")
                    picked.append(len(bos) + inside[-1])
                marks.append(picked)
        return ids, texts, (marks if marked else None), len(bos)
    if any(isinstance(x, str) for x in inputs):
        raise ProbeError("examples must be all texts or all token-id lists, not a mixture")
    if marked:
        raise ProbeError("position rule 'marked' needs texts; for token ids give explicit positions per example")
    ids = [[int(t) for t in row] for row in inputs]
    for i, row in enumerate(ids):
        if not row:
            raise ProbeError(f"example {i} has no tokens")
    return ids, None, None, 0


def _describe(rule: Any) -> str:
    return rule if isinstance(rule, str) else getattr(rule, "__name__", type(rule).__name__)


def select_positions(
    rule: str | Callable[[list[str]], Sequence[int]] | Sequence[Any],
    str_tokens: Sequence[Sequence[str]],
    n_bos: int = 0,
    marks: Sequence[Sequence[int]] | None = None,
    skip_bos: bool = True,
) -> list[list[int]]:
    """Token indices per example for ``rule`` (see the module docstring); ProbeError if one is empty."""
    n = len(str_tokens)
    first = n_bos if skip_bos else 0
    if isinstance(rule, str):
        if rule == "last":
            out = [[len(t) - 1] for t in str_tokens]
        elif rule == "all":
            out = [list(range(first, len(t))) for t in str_tokens]
        elif rule == "marked":
            if marks is None:
                raise ProbeError("position rule 'marked' needs texts with [[marked]] spans")
            out = [list(m) for m in marks]
        elif rule.startswith("match:"):
            try:
                pattern = re.compile(rule[len("match:") :])
            except re.error as exc:
                raise ProbeError(f"position rule {rule!r}: bad regular expression ({exc})") from None
            out = [[j for j in range(first, len(t)) if pattern.fullmatch(t[j].strip())] for t in str_tokens]
        else:
            raise ProbeError(f"unknown position rule {rule!r}; valid rules: {', '.join(RULES)}")
    elif callable(rule):
        out = [sorted({int(j) % len(t) for j in rule(list(t))}) for t in str_tokens]
    else:
        rule = list(rule)
        if len(rule) != n:
            raise ProbeError(f"explicit positions give {len(rule)} entries for {n} examples; give one per example")
        out = []
        for i, (entry, toks) in enumerate(zip(rule, str_tokens, strict=True)):
            entry = [entry] if isinstance(entry, int) else list(entry)
            bad = [p for p in entry if not -len(toks) <= int(p) < len(toks)]
            if bad:
                raise ProbeError(f"example {i}: positions {bad} are outside its {len(toks)} tokens")
            out.append(sorted({int(p) % len(toks) for p in entry}))
    for i, (picked, toks) in enumerate(zip(out, str_tokens, strict=True)):
        if not picked:
            shown = "".join(toks)
            raise ProbeError(
                f"position rule {_describe(rule)!r} matches no token in example {i} ({shown!r}; tokens {list(toks)})"
            )
    return out
