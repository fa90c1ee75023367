"""The attribution package's error."""

from __future__ import annotations

from interpkit.errors import InterpkitError


class AttributionError(InterpkitError):
    """Attribution cannot be computed as asked (e.g. the metric has no gradient path)."""


def no_gradient(metric: str) -> AttributionError:
    return AttributionError(
        f"metric {metric!r} has no gradient path to the activations (e.g. accuracy); use logit_diff, logprob, prob or kl"
    )
