"""The probing package's error: bad labels, positions, classes or splits (sites use SiteError)."""

from __future__ import annotations

from interpkit.errors import InterpkitError


class ProbeError(InterpkitError):
    """A probing input is unusable: one class, labels that do not match the examples, a position
    rule that matches no token, a split that leaves a class out, an unknown method."""
