"""The one style every interpkit figure shares, applied per figure (never as a global template).

- Signed effects (patching, attribution, logit differences): a diverging scale centred on zero,
  red for negative, blue for positive, symmetric bounds so colour strength compares across cells.
- Non-negative quantities (attention, probabilities): a sequential scale from white.
- Hover text gives the exact value with the component label and the token.
- Titles say what was measured, with which metric and, for patching, in which direction:
  denoising (clean activations patched into the corrupt run) or noising (the reverse).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interpkit.results import Result

DIVERGING = "RdBu"
SEQUENTIAL = "Blues"
POSITIVE = "#2166ac"
NEGATIVE = "#b2182b"
LINE_COLOURS = ("#2166ac", "#d6604d", "#4d9221", "#762a83", "#e08214", "#35978f")
FONT = {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 13}

_DIRECTIONS = {
    "denoise": "denoising: clean activations patched into the corrupt run",
    "noise": "noising: corrupt activations patched into the clean run",
}


def style(fig: Any, title: str, height: int | None = None, **layout: Any) -> Any:
    """Apply the shared layout to ``fig`` (in place) and return it; ``layout`` overrides the defaults."""
    layout.setdefault("margin", {"l": 70, "r": 30, "t": 70, "b": 60})
    fig.update_layout(
        template="plotly_white",
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        font=FONT,
        hoverlabel={"font": {"family": "ui-monospace, monospace", "size": 12}},
        **({"height": height} if height else {}),
        **layout,
    )
    return fig


def direction_text(direction: str | None) -> str | None:
    """The readable form of a patching direction ("denoise", "noise", "ablate (mean)")."""
    if not direction:
        return None
    return _DIRECTIONS.get(direction, direction)


def title_for(result: Result, title: str | None = None, what: str | None = None, metric: str | None = None) -> str:
    """A title naming the measurement, the metric and the direction: ``patch · metric: logit_diff · denoising``.

    ``metric``: what the figure shows, when not the result's metric itself (``change in logit_diff``).
    """
    if title:
        return title
    meta = result.meta or {}
    parts = [what or _kind_text(result)]
    shown = metric or result.metric
    if shown and shown.lower() != parts[0].lower():
        parts.append(f"{'metric' if shown == result.metric else 'shown'}: {shown}")
    direction = direction_text(meta.get("direction"))
    if direction:
        parts.append(direction)
    return " · ".join(parts)


def _kind_text(result: Result) -> str:
    meta = result.meta or {}
    if result.kind == "patch" and meta.get("site"):
        return f"Activation patching of {meta['site']}"
    return result.kind.replace("_", " ").capitalize()


def token_text(token: str) -> str:
    """A token as shown on an axis: newlines and tabs made visible, an empty token marked."""
    if token == "":
        return "∅"
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def unique_labels(labels: Sequence[str]) -> list[str]:
    """Labels made distinct by position where they repeat (plotly merges equal category labels)."""
    shown = [token_text(str(lab)) for lab in labels]
    return [f"{lab} ({i})" if shown.count(lab) > 1 else lab for i, lab in enumerate(shown)]


def symmetric_bound(values: Any) -> float:
    """The largest finite magnitude in ``values`` (1.0 for an all-zero or empty array)."""
    import numpy as np

    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    bound = float(np.abs(finite).max()) if finite.size else 0.0
    return bound or 1.0
