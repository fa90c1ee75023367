"""``Result``: every analysis returns one. A tensor with named dims, labels and provenance.

``to_json`` / ``from_json`` round-trip exactly: tensors are written with their dtype and shape
and their values as JSON numbers (float32 and bfloat16 values are exactly representable as the
float64 numbers JSON carries). The files are standard JSON, which has no NaN or infinity: inside
a tensor's values those are the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``, and a
bare float elsewhere becomes ``{"__float__": "NaN"}``; both read back as the floats.
:func:`json_text` writes other summaries (experiments' ``result.json``) as standard JSON with
non-finite floats as ``null``. Files are written atomically (temporary name, then rename).

    >>> import torch
    >>> from interpkit.results import Result
    >>> r = Result(torch.zeros(2, 3), ("layer", "pos"), {"layer": ["L0", "L1"]}, metric="logit_diff")
    >>> r.dims
    ('layer', 'pos')
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.errors import ResultError

if TYPE_CHECKING:
    import torch

FORMAT = "interpkit-result/1"


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on (read once per process: metadata parsing is slow)."""
    return dict(_package_versions())


@functools.cache
def _package_versions() -> tuple[tuple[str, str], ...]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("interpkit", "torch", "transformer-lens", "transformers", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return tuple(out.items())


def make_provenance(model: Any = None, task: Any = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance block: model, task, seed, package versions, time, plus ``extra``."""
    prov: dict[str, Any] = {}
    if model is not None:
        prov.update(model.provenance())
    if task is not None:
        prov.update(task.provenance())
    prov["seed"] = seed
    prov["versions"] = package_versions()
    prov["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    prov.update(extra)
    return prov


_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _float_name(x: float) -> str:
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def _map_floats(values: Any, fn: Any) -> Any:
    """``values`` (nested lists of numbers, as ``tolist`` gives) with ``fn`` applied to every leaf."""
    if isinstance(values, list):
        return [_map_floats(v, fn) for v in values]
    return fn(values)


def _encode_tensor(t: torch.Tensor) -> dict[str, Any]:
    import torch

    t = t.detach().cpu()
    if t.is_floating_point():
        values = t.double().tolist()
        if not bool(torch.isfinite(t).all()):
            values = _map_floats(values, lambda x: x if math.isfinite(x) else _float_name(x))
    else:
        values = t.tolist()
    return {"__tensor__": True, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "values": values}


def _decode_tensor(obj: dict[str, Any]) -> torch.Tensor:
    import torch

    dtype = getattr(torch, obj["dtype"], None) if isinstance(obj.get("dtype"), str) else None
    if not isinstance(dtype, torch.dtype):
        raise ResultError(f"unknown tensor dtype {obj.get('dtype')!r:.40} in result file")
    shape = obj.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ResultError(f"malformed tensor in result file: shape {shape!r:.60} is not a list of sizes")
    values = obj["values"]
    if dtype.is_floating_point:
        values = _map_floats(values, lambda x: _NON_FINITE.get(x, x) if isinstance(x, str) else x)
        t = torch.tensor(values, dtype=torch.float64).to(dtype)
    else:
        t = torch.tensor(values, dtype=dtype)
    return t.reshape(obj["shape"])


def _encode(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return _encode_tensor(value)
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": _float_name(value)}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("__tensor__"):
            return _decode_tensor(value)
        if set(value) == {"__float__"} and value["__float__"] in _NON_FINITE:
            return _NON_FINITE[value["__float__"]]
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def json_text(value: Any, indent: int | None = 2) -> str:
    """``value`` as standard JSON text: tensors as (nested) lists, non-finite floats as ``null``,
    paths and other objects as their ``str``; for summaries that other tools read (jq, a browser,
    pandas), where Python's bare ``NaN`` would make the whole file unreadable."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if hasattr(v, "tolist") and callable(v.tolist):  # tensors and numpy arrays / scalars
            return clean(v.tolist())
        return v

    return json.dumps(clean(value), indent=indent, allow_nan=False, default=str)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ResultError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a result is an ordinary file
        os.replace(tmp, path)
    except OSError as exc:  # disk full, quota, permissions: nothing half-written is left under the name
        Path(tmp).unlink(missing_ok=True)
        raise ResultError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _check_decoded(decoded: dict[str, Any]) -> None:
    """ResultError unless the decoded fields have the types a Result holds."""
    import torch

    if not isinstance(decoded["scores"], torch.Tensor):
        raise ResultError(f"malformed result: scores must be a tensor, got {type(decoded['scores']).__name__}")
    dims = decoded["dims"]
    if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
        raise ResultError(f"malformed result: dims must be a list of names, got {dims!r:.80}")
    labels = decoded.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in labels.values()
    ):
        raise ResultError("malformed result: labels must map each dim to a list of strings")
    for key in ("meta", "extras", "provenance"):
        if not isinstance(decoded.get(key, {}), dict):
            raise ResultError(f"malformed result: {key} must be an object")
    for key in ("metric", "kind"):
        if decoded.get(key) is not None and not isinstance(decoded[key], str):
            raise ResultError(f"malformed result: {key} must be a string")
    for key in ("clean_value", "corrupt_value"):
        value = decoded.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ResultError(f"malformed result: {key} must be a number")


@dataclasses.dataclass
class Result:
    """Scores with named dimensions, per-dimension labels, metric values and provenance."""

    scores: torch.Tensor
    dims: tuple[str, ...]
    labels: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    metric: str | None = None
    clean_value: float | None = None
    corrupt_value: float | None = None
    kind: str = "result"
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dims = tuple(self.dims)
        if self.scores.ndim != len(self.dims):
            raise ResultError(f"scores have {self.scores.ndim} dims but {len(self.dims)} names were given: {self.dims}")
        for dim, names in self.labels.items():
            if dim not in self.dims:
                raise ResultError(f"labels for unknown dim {dim!r}; dims are {self.dims}")
            size = self.scores.shape[self.dims.index(dim)]
            if len(names) != size:
                raise ResultError(f"dim {dim!r} has size {size} but {len(names)} labels")

    def normalised(self) -> torch.Tensor:
        """Scores mapped so that the clean run is 1 and the corrupt run is 0."""
        from interpkit.metrics import normalise

        if self.clean_value is None or self.corrupt_value is None:
            raise ResultError("this result has no clean/corrupt metric values to normalise by")
        return normalise(self.scores.double(), float(self.clean_value), float(self.corrupt_value)).to(self.scores.dtype)

    def label_of(self, index: tuple[int, ...]) -> str:
        """A readable label for one entry, e.g. ``layer=L3, head=H5``."""
        parts = []
        for dim, i in zip(self.dims, index, strict=True):
            names = self.labels.get(dim)
            parts.append(f"{dim}={names[i] if names else i}")
        return ", ".join(parts)

    def top(self, k: int = 10, by_abs: bool = True) -> list[tuple[str, float]]:
        """The ``k`` largest entries (by magnitude unless ``by_abs=False``) with their labels."""
        import torch

        flat = self.scores.detach().float().reshape(-1)
        key = flat.abs() if by_abs else flat
        order = torch.argsort(key, descending=True)[:k]
        shape = tuple(self.scores.shape)
        out = []
        for i in order.tolist():
            idx = tuple(int(x) for x in torch.unravel_index(torch.tensor(i), shape))
            out.append((self.label_of(idx), float(flat[i])))
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return _encode({"format": FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """The Result ``to_dict`` wrote; a ResultError naming what is malformed otherwise."""
        if not isinstance(data, dict):
            raise ResultError(f"not an interpkit result: a JSON {type(data).__name__}, not an object")
        if data.get("format") != FORMAT:
            raise ResultError(f"not an interpkit result (format {data.get('format')!r}, expected {FORMAT!r})")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("scores", "dims") if k not in data]
        if missing:
            raise ResultError(f"malformed result: missing {missing}")
        try:
            decoded = _decode({k: v for k, v in data.items() if k in fields})
        except ResultError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, OverflowError) as exc:
            raise ResultError(f"malformed result: a value cannot be read ({type(exc).__name__}: {exc})") from None
        _check_decoded(decoded)
        decoded["dims"] = tuple(decoded["dims"])
        return cls(**decoded)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the result as JSON (atomically); :meth:`from_json` reads it back exactly."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Result:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResultError(f"cannot read result file {str(path)!r}: {exc}") from exc
        except RecursionError:
            raise ResultError(f"cannot read result file {str(path)!r}: JSON nested too deeply") from None
        try:
            return cls.from_dict(data)
        except ResultError as exc:
            raise ResultError(f"result file {str(path)!r}: {exc}") from None
        except RecursionError:
            raise ResultError(f"result file {str(path)!r}: values nested too deeply") from None

    def figure(self, **kwargs: Any) -> Any:
        """A plotly figure of the scores: the one registered for this result's kind, else a heatmap (2-D) or bars (1-D)."""
        return figure_for(self, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # ablate and run_with_edges returned bare tensors before 0.2; their callers' tensor methods
        # (.mean(), .tolist(), .shape, ...) keep working on the scores, with a warning to say so.
        import torch

        if name.startswith("_") or not hasattr(torch.Tensor, name):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        warnings.warn(
            f"Result.{name}: this function returns a Result since 0.2 (it returned a tensor); "
            f"use result.scores.{name} for the tensor's",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(self.__dict__["scores"], name)

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.scores.shape)
        return f"Result({self.kind}: {shape} over {self.dims}, metric={self.metric})"


# Figures by result kind. interpkit.plots fills the table when it is imported (``import interpkit``
# does), so this module never imports the plotting layer above it.
FIGURES: dict[str, Callable[..., Any]] = {}


def register_figure(kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Make ``fn(result, **kwargs) -> Figure`` the figure of results of ``kind`` ("*": the default)."""
    FIGURES[kind] = fn
    return fn


def figure_for(obj: Any, kind: str | None = None, **kwargs: Any) -> Any:
    """The registered figure of ``obj`` (a Result, or another object under ``kind``, e.g. "circuit")."""
    kind = kind or getattr(obj, "kind", None)
    fn = FIGURES.get(kind) or FIGURES.get("*")
    if fn is None:
        raise ResultError("no figures are registered: import interpkit.plots (import interpkit does)")
    return fn(obj, **kwargs)
