"""Turn user device and dtype arguments into torch objects, or a DeviceError naming the choices."""

from __future__ import annotations

from typing import Any

from interpkit.errors import DeviceError, unknown

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float64": "float64",
    "fp64": "float64",
}


def available_devices() -> list[str]:
    """Device names usable on this machine, best first."""
    import torch

    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return [*names, "cpu"]


def default_device() -> Any:
    import torch

    return torch.device(available_devices()[0])


def resolve_device(device: Any) -> Any:
    """A ``torch.device`` for ``device`` (None = best available), or a DeviceError."""
    import torch

    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"unknown device {device!r}; available here: {', '.join(available_devices())}") from exc
    if dev.type == "cpu":
        if dev.index not in (None, 0):  # torch accepts "cpu:99" and puts everything on the one CPU device
            raise DeviceError(
                f"device {device!r} does not exist: the CPU is one device ('cpu' or 'cpu:0'); "
                f"available here: {', '.join(available_devices())}"
            )
        return torch.device("cpu")
    if dev.type == "cuda":
        index = dev.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} is not available on this machine; available here: {', '.join(available_devices())}"
            )
        return torch.device("cuda", index)
    if dev.type == "mps" and "mps" in available_devices():
        return dev
    raise DeviceError(
        f"device {device!r} is not available on this machine; available here: {', '.join(available_devices())}"
    )


def resolve_dtype(dtype: Any, device: Any = None) -> Any:
    """A floating ``torch.dtype`` for ``dtype`` (name or torch dtype), or a DeviceError."""
    import torch

    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = DTYPES.get(dtype.lower().removeprefix("torch."))
        if name is None:
            raise unknown("dtype", dtype, sorted(set(DTYPES)), DeviceError)
    else:
        raise DeviceError(f"dtype must be a string or torch.dtype, got {dtype!r}; valid: {', '.join(sorted(DTYPES))}")
    if name not in set(DTYPES.values()):
        raise unknown("dtype", name, sorted(set(DTYPES.values())), DeviceError)
    resolved = getattr(torch, name)
    dev = resolve_device(device) if device is not None else None
    if resolved is torch.bfloat16 and dev is not None and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"dtype bfloat16 is not supported on {dev}; use float16 or float32")
    return resolved


def check_device_dtype(device: Any, dtype: Any) -> None:
    """Raise a DeviceError early when a device or dtype is unusable (used by loaders)."""
    if device is not None:
        resolve_device(device)
    if dtype is not None:
        resolve_dtype(dtype)
