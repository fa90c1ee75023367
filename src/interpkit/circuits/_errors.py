"""The error circuit code raises for user mistakes."""

from __future__ import annotations

from interpkit.errors import InterpkitError


class CircuitError(InterpkitError):
    """A circuit is malformed, belongs to another model, or a discovery option is invalid."""
