"""The one exception family interpkit raises for user mistakes.

Every message names the offending value and, where there is a finite set of valid choices, the
closest of them, so that a user never has to read a traceback from deep inside torch.

    >>> import interpkit as ik
    >>> try:
    ...     ik.load_model("no-such-model")
    ... except ik.InterpkitError as err:
    ...     print(type(err).__name__)
    ModelNotFoundError
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InterpkitError(Exception):
    """Base class of every error interpkit raises on bad input."""


class ModelNotFoundError(InterpkitError):
    """The model spec names no registry entry, file, directory or reachable hub id."""


class ModelLoadError(InterpkitError):
    """A model file exists but cannot be read (truncated, corrupt, wrong format)."""


class HubUnavailableError(ModelNotFoundError):
    """A Hugging Face hub id was given but the hub cannot be reached."""


class DeviceError(InterpkitError):
    """The requested device or dtype is not available on this machine."""


class SiteError(InterpkitError):
    """An unknown or malformed hook or site name."""


class TaskError(InterpkitError):
    """A task is malformed: lengths differ, answers are not single tokens, empty, too long."""


class ResultError(InterpkitError):
    """A result file or object is malformed."""


class PatchingError(InterpkitError):
    """A patching run cannot proceed (NaN metric, impossible ablation, bad positions)."""


def closest(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The valid choices nearest to ``name``, best first (``difflib`` similarity)."""
    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not found:
        found = [c for c in choices if name.lower() in c.lower()][:n]
    return found


def unknown(kind: str, name: str, choices: Iterable[str], error: type[InterpkitError]) -> InterpkitError:
    """An error for an unknown ``name`` of some ``kind``, listing the closest valid choices."""
    choices = list(choices)
    near = closest(name, choices)
    hint = f"; closest: {', '.join(near)}" if near else ""
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return error(f"unknown {kind} {name!r}{hint}. Valid {kind}s: {shown}")


class NonFiniteError(InterpkitError):
    """A model's weights or outputs are NaN or infinite (broken weights, or an overflowing dtype)."""


def check_int(
    value: object,
    name: str,
    error: type[InterpkitError] = InterpkitError,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """``value`` as an int, or ``error`` naming ``name``: bools, floats and strings are refused, not coerced.

    >>> check_int(4, "batch_size", minimum=1)
    4
    >>> check_int(True, "batch_size", minimum=1)
    Traceback (most recent call last):
    ...
    interpkit.errors.InterpkitError: batch_size must be an int, got True (bool)
    """
    import numbers

    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an int, got {value!r:.60} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise error(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise error(f"{name} must be at most {maximum:,}, got {value:,}")
    return value


def check_text(text: object, what: str, error: type[InterpkitError] = InterpkitError) -> str:
    """``text`` if it is a string a tokenizer can encode (UTF-8: no lone surrogates), else ``error``.

    >>> check_text("When Mary", "clean")
    'When Mary'
    >>> check_text("a \\udc80 b", "clean")
    Traceback (most recent call last):
    ...
    interpkit.errors.InterpkitError: clean is not valid Unicode text: a lone surrogate '\\udc80' at character 2
    """
    if not isinstance(text, str):
        raise error(f"{what} must be a string, got {type(text).__name__} {text!r:.60}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(
            f"{what} is not valid Unicode text: a lone surrogate {text[exc.start]!r} at character {exc.start}"
        ) from None
    return text
