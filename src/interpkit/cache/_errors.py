"""The cache's own error and warning classes (both part of interpkit's one exception family)."""

from __future__ import annotations

from interpkit.errors import InterpkitError


class CacheError(InterpkitError):
    """A cache request or an on-disk activation store is wrong: unknown site, bad folder, corrupt shard."""


class CacheWarning(UserWarning):
    """Something was done that the user should know of: texts truncated, values overflowing float16."""
