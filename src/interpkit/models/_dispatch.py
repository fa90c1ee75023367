"""Placing a model built in memory by a ``device_map``, and undoing it.

:func:`dispatch` moves every module of a plan (:func:`interpkit.models._device_map.resolve_plan`)
to its device and hooks it so that its inputs follow (:func:`hook_components`), and the whole
model so that its logits come back to the tokens' device; :func:`undispatch` removes those hooks
(or accelerate's, after ``from_pretrained(device_map=...)``), :func:`hook_placed` adds the bridge
components' hooks to a model accelerate placed, and :func:`record` notes the realised map in
``model.info`` and so in every result's provenance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from interpkit.errors import DeviceError
from interpkit.models._device_map import _inner, find_module, resolve_plan

if TYPE_CHECKING:
    import torch
    from torch import nn

    from interpkit.models._model import Model

_HANDLES = "_interpkit_device_hooks"  # on the wrapped model: the hooks a dispatch registered


def _skip_keys(root: nn.Module) -> list[str]:
    # Hugging Face names the arguments that must stay where they are (the KV cache object).
    return sorted(getattr(root, "_skip_keys_device_placement", None) or [])


def _move_inputs(device: torch.device, skip: list[str]) -> Any:
    from accelerate.utils import send_to_device

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return send_to_device(args, device), send_to_device(kwargs, device, skip_keys=skip)

    return pre_hook


def _keep(root: nn.Module, handles: list[Any]) -> None:
    vars(root).setdefault(_HANDLES, []).extend(handles)


def hook_components(root: nn.Module, plan: Mapping[str, torch.device]) -> None:
    """Move inputs to each mapped module's device, at the bridge component and the module it wraps.

    The component's hook runs before its hook points fire and covers components that compute
    from their wrapped module's raw weights (a norm); the wrapped module's hook covers a
    residual swapped in inside the component (``start_at_layer``) after the first hook ran.
    """
    skip = _skip_keys(root)
    handles = []
    for name, device in plan.items():
        if not name:
            continue
        module = find_module(root, name)
        assert module is not None  # resolve_plan checked every name
        for target in {id(m): m for m in (module, _inner(module))}.values():
            handles.append(target.register_forward_pre_hook(_move_inputs(device, skip), with_kwargs=True))
    _keep(root, handles)


def _return_outputs(root: nn.Module, default: torch.device) -> None:
    """Give the whole model's outputs back on the device its inputs came from (accelerate's ``io_same_device``)."""
    from accelerate.utils import find_device, send_to_device

    came_from = [default]  # one forward at a time; an aborted one (a hook stopping it) is overwritten

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        came_from[0] = find_device([args, kwargs]) or default

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return send_to_device(output, came_from[0], skip_keys=_skip_keys(root))

    _keep(
        root,
        [
            root.register_forward_pre_hook(pre_hook, with_kwargs=True),
            root.register_forward_hook(hook, with_kwargs=True),
        ],
    )


def undispatch(model: Model) -> None:
    """Remove the device hooks of an earlier dispatch (ours or accelerate's); the weights stay put."""
    from accelerate.hooks import remove_hook_from_module

    root = model.bridge.original_model
    if any(p.device.type == "meta" for p in root.parameters()):
        raise DeviceError(
            f"model {model.spec!r} has weights offloaded by accelerate (on the meta device): it cannot be "
            "moved as a whole; load it again with the device or device_map you want"
        )
    for handle in vars(root).pop(_HANDLES, []):
        handle.remove()
    # Not remove_hook_from_module(recurse=True): a bridge component forwards attribute lookups to the
    # module it wraps, so hasattr() sees that module's hook on the component and the removal fails.
    for module in root.modules():
        if "_hf_hook" in vars(module):
            remove_hook_from_module(module)
    model.info.pop("device_map", None)
    model.bridge.cfg.n_devices = 1


def record(model: Model, realised: Mapping[str, Any]) -> None:
    """Note a realised map in ``model.info`` (and so in provenance) and tell the bridge where tokens go."""
    import torch

    def name(device: Any) -> str:
        if isinstance(device, int) and not isinstance(device, bool):
            return f"cuda:{device}"
        try:
            return str(torch.device(device))
        except (RuntimeError, TypeError):
            return str(device)  # accelerate's "disk"

    model.info["device_map"] = {module: name(device) for module, device in realised.items()}
    model.bridge.cfg.device = str(model.device)
    model.bridge.cfg.n_devices = len(model.devices)
    model.anatomy.forget_weights()  # the weights moved


def dispatch(model: Model, device_map: Any) -> dict[str, torch.device]:
    """Place ``model`` (already in memory) by ``device_map``; returns the realised ``{module: device}``.

    ``device_map`` is what :func:`check_device_map` returns. Each mapped module moves to its
    device, and forward pre-hooks move its inputs there (:func:`hook_components`); the whole
    model's outputs go back to the device its inputs came from.
    """
    root = model.bridge.original_model
    plan = resolve_plan(root, model.cfg.n_layers, device_map)
    undispatch(model)
    for name in sorted(plan, key=lambda n: (n != "", n.count("."))):  # outer first: a more specific entry wins
        find_module(root, name).to(plan[name])  # type: ignore[union-attr]
    hook_components(root, plan)
    record(model, plan)
    _return_outputs(root, model.device)
    return plan


def hook_placed(model: Model, hf_model: Any) -> None:
    """After ``from_pretrained(device_map=...)`` and wrapping: the bridge components' input hooks too.

    accelerate hooked the Hugging Face modules; a bridge component that reads its module's
    weights directly (a norm) would otherwise see inputs still on the device before.
    """
    import torch

    root = model.bridge.original_model
    placed = getattr(hf_model, "hf_device_map", None) or {}
    plan = {}
    for name, device in placed.items():
        module = find_module(root, name)
        if module is not None and module is not _inner(module) and str(device) not in ("cpu", "disk", "meta"):
            plan[name] = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if plan:  # the outer component only: accelerate's hook on the module inside stays
        skip = _skip_keys(root)
        _keep(
            root,
            [
                find_module(root, n).register_forward_pre_hook(_move_inputs(d, skip), with_kwargs=True)  # type: ignore[union-attr]
                for n, d in plan.items()
            ],
        )
