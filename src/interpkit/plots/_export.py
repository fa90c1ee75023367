"""Static PNG / SVG / PDF export of a figure, where kaleido and a Chromium are installed.

HTML reports need neither: they embed plotly's JavaScript. Static images go through kaleido
(an optional dependency: ``pip install kaleido``), which drives a headless Chromium; on Debian
``apt-get install chromium`` provides one, and ``BROWSER_PATH`` points kaleido at another.
Without either, :func:`save_static` raises a :class:`PlotExportError` saying what to install.

    >>> from interpkit.plots import save_static
    >>> save_static(res.figure(), "runs/x/heads.png")          # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from interpkit.errors import InterpkitError

FORMATS = ("png", "svg", "pdf", "jpeg", "webp")
_ATTEMPTS = 3
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


class PlotExportError(InterpkitError):
    """A figure could not be written as a static image (kaleido or Chromium missing, bad format)."""


def find_chromium() -> str | None:
    """The Chromium kaleido will use: ``BROWSER_PATH`` if set, else the first browser on ``PATH``."""
    if os.environ.get("BROWSER_PATH"):
        return os.environ["BROWSER_PATH"]
    for name in _BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def static_export_available() -> tuple[bool, str]:
    """Whether :func:`save_static` can work here, and if not, why (one line)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False, "static export needs kaleido: pip install kaleido (HTML reports do not need it)"
    if find_chromium() is None:
        return False, (
            "static export needs a Chromium for kaleido: apt-get install chromium (Debian), "
            "or set BROWSER_PATH to a Chrome/Chromium executable"
        )
    return True, "kaleido and a Chromium are installed"


def save_static(fig: Any, path: str | os.PathLike, width: int | None = None, height: int | None = None) -> Path:
    """Write ``fig`` as an image; the format comes from the suffix (png, svg, pdf, jpeg, webp)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise PlotExportError(f"cannot export {str(path)!r}: the suffix must be one of {', '.join(FORMATS)}")
    ok, why = static_export_available()
    if not ok:
        raise PlotExportError(why)
    chromium = find_chromium()
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(_ATTEMPTS):
        try:
            fig.write_image(str(path), format=fmt, width=width, height=height)
            return path
        except Exception as exc:  # kaleido and its browser driver raise many unrelated types
            # On a loaded machine kaleido sometimes talks to its page before the page's scripts ran
            # ("kaleido_scopes is not defined"); a fresh browser a moment later works.
            if attempt + 1 == _ATTEMPTS:
                raise PlotExportError(f"kaleido could not export {str(path)!r} with {chromium}: {exc}") from exc
            time.sleep(1.0)
    return path
