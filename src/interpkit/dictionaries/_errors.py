"""The dictionaries' own error class (part of interpkit's one exception family)."""

from __future__ import annotations

from interpkit.errors import InterpkitError


class DictionaryError(InterpkitError):
    """A dictionary request is wrong: bad width, unknown kind or layout, corrupt file, k > n_latents."""
