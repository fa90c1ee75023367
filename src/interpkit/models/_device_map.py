"""``device_map``: one model spread over several devices, each block whole on one of them.

``load_model(spec, device_map=...)`` takes what Hugging Face's ``from_pretrained`` takes, plus
an int:

* ``"auto"`` or ``"balanced"``: Hugging Face directories and hub ids get accelerate's own
  placement (``from_pretrained(device_map=...)``, sized from free memory). Models built in
  memory (the embedded GGUF, native directories, model objects) split their blocks evenly
  over every visible GPU, and stay on the CPU (or MPS) when there is none;
* an int ``n``: the blocks split over ``cuda:0`` .. ``cuda:{n-1}`` in contiguous ranges whose
  sizes differ by at most one (:func:`split_blocks`); the embeddings go on the first device,
  the final norm and the unembedding on the last, except an unembedding that shares the
  embedding's weight tensor, which stays with it (one tensor lives on one device);
* a device name (``"cpu"``, ``"cuda:1"``): every module on that device, through the same
  dispatch (the CPU case is how the tests exercise it);
* a dict ``{module name: device}`` in Hugging Face's module names (``model.embed_tokens``,
  ``model.layers.3``, ``lm_head``; a native model's ``tok_embed``, ``layers.3``, ``head``);
  ints are CUDA indices, and the most specific name covering a module wins.

Dispatch does what accelerate does for ``from_pretrained``: every module moves to its device
and gets an ``AlignDevicesHook`` that moves its inputs there, and the whole model gets one that
brings the logits back to the device the tokens came from. The hook sits on the Hugging Face
(or native) module inside the bridge's component, where ``from_pretrained`` puts it, so both
routes behave alike: a block's ``hook_resid_pre`` fires before its inputs move (on the device
of the block before), every hook inside the block sees tensors on the block's own device. Code
that writes into an activation therefore puts its tensor on ``act.device``, not ``model.device``.
This module plans and checks maps; :mod:`interpkit.models._dispatch` places a model by one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.errors import DeviceError, closest

if TYPE_CHECKING:
    import torch
    from torch import nn


STRATEGIES = ("auto", "balanced")
_WRAPPED = "_original_component"  # where a TransformerBridge component keeps the module it wraps
_FORMS = (
    "'auto', 'balanced', an int (the number of GPUs to split the blocks over), a device name "
    "or a dict {module name: device}"
)


# ---------------------------------------------------------------------------- plans (pure)
@dataclasses.dataclass(frozen=True)
class Layout:
    """A model's placeable modules around its blocks (Hugging Face names).

    ``before`` go with the first block, ``after`` with the last; ``tied`` maps a module to the
    earlier module it shares a weight tensor with.
    """

    before: tuple[str, ...]
    blocks: tuple[str, ...]
    after: tuple[str, ...]
    tied: Mapping[str, str] = dataclasses.field(default_factory=dict)


def split_blocks(n_layers: int, n_devices: int) -> list[int]:
    """Device index of each block: contiguous ranges whose sizes differ by at most one, larger first.

    >>> split_blocks(10, 4)
    [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    """
    if n_devices < 1:
        raise DeviceError(f"cannot split the blocks over {n_devices} devices: give at least 1")
    if n_layers < n_devices:
        raise DeviceError(f"cannot split {n_layers} blocks over {n_devices} devices: give at most {n_layers}")
    base, extra = divmod(n_layers, n_devices)
    return [d for d in range(n_devices) for _ in range(base + (d < extra))]


def split_plan(layout: Layout, devices: Sequence[str]) -> dict[str, str]:
    """``{module name: device}``: the blocks split by :func:`split_blocks`, what comes before them on
    the first device, what comes after on the last, a tied module with the module it shares with.

    >>> split_plan(Layout(("embed",), ("b0", "b1", "b2"), ("norm", "unembed")), ["cuda:0", "cuda:1"])
    {'embed': 'cuda:0', 'b0': 'cuda:0', 'b1': 'cuda:0', 'b2': 'cuda:1', 'norm': 'cuda:1', 'unembed': 'cuda:1'}
    """
    per_block = split_blocks(len(layout.blocks), len(devices))
    plan = dict.fromkeys(layout.before, devices[0])
    plan.update({name: devices[d] for name, d in zip(layout.blocks, per_block, strict=True)})
    plan.update(dict.fromkeys(layout.after, devices[-1]))
    for name, owner in layout.tied.items():
        plan[name] = plan[owner]
    return plan


# ---------------------------------------------------------------------------- checking the argument
CLI_HELP = (
    "spread the model over devices instead of --device: auto, balanced, N (split the blocks over "
    "cuda:0..N-1), a device, or a JSON dict {module: device}"
)


def parse_device_map(text: str | None) -> Any:
    """A ``--device-map`` command-line value as ``load_model`` takes it (digits: an int; ``{...}``: JSON).

    >>> parse_device_map("2"), parse_device_map('{"": "cpu"}'), parse_device_map("auto")
    (2, {'': 'cpu'}, 'auto')
    """
    import json

    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        return int(text)
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DeviceError(f"--device-map {text!r} is not valid JSON ({exc.msg}); give {_FORMS}") from None
    return text


def _device_names() -> str:
    from interpkit.models._devices import available_devices

    return ", ".join(available_devices())


def _entry_device(name: str, value: Any) -> torch.device:
    import torch

    from interpkit.models._devices import resolve_device

    if isinstance(value, bool):
        raise DeviceError(f"device_map[{name!r}] = {value!r} is not a device; available here: {_device_names()}")
    if isinstance(value, str) and value.lower() in ("disk", "meta"):
        raise DeviceError(
            f"device_map[{name!r}] = {value!r}: offloading to {value.lower()} is not supported; "
            f"every module needs a device that runs it. Available here: {_device_names()}"
        )
    try:
        return resolve_device(torch.device("cuda", value) if isinstance(value, int) else value)
    except DeviceError:
        raise DeviceError(
            f"device_map[{name!r}] = {value!r} names a device this machine lacks (ints are CUDA indices); "
            f"available here: {_device_names()}"
        ) from None


def check_device_map(value: Any) -> Any:
    """The device map as the loaders use it (a strategy name, an int, a device or a dict of devices).

    Raises a DeviceError naming the bad value and the valid forms: an unknown string, a device or
    GPU count this machine lacks, a module mapped to disk.
    """
    import torch

    from interpkit.models._devices import resolve_device

    if isinstance(value, bool) or not isinstance(value, (int, str, dict, torch.device)):
        raise DeviceError(f"device_map={value!r} is not a device map; give {_FORMS}")
    if isinstance(value, int):
        n_gpus = torch.cuda.device_count()
        if value < 1:
            raise DeviceError(f"device_map={value}: the number of GPUs to split over must be at least 1")
        if value > n_gpus:
            raise DeviceError(
                f"device_map={value} splits the blocks over cuda:0..cuda:{value - 1}, but this machine has "
                f"{n_gpus} CUDA device(s); available here: {_device_names()}"
            )
        return value
    if isinstance(value, dict):
        if not value:
            raise DeviceError(f"device_map is an empty dict; give {_FORMS}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise DeviceError(f"device_map keys must be module names (strings), got {bad[0]!r}")
        return {name: _entry_device(name, device) for name, device in value.items()}
    if isinstance(value, str) and value.lower() in STRATEGIES:
        return value.lower()
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        near = closest(value, STRATEGIES) if isinstance(value, str) else []
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise DeviceError(
            f"unknown device_map {value!r}.{hint} Give {_FORMS}; devices here: {_device_names()}"
        ) from None
    try:
        return resolve_device(value)
    except DeviceError:
        raise DeviceError(
            f"device_map {value!r} names a device this machine lacks; available here: {_device_names()} "
            f"(or give {_FORMS})"
        ) from None


# ---------------------------------------------------------------------------- module trees
def _inner(module: nn.Module) -> nn.Module:
    wrapped = module._modules.get(_WRAPPED)
    return module if wrapped is None else wrapped


def _holds_tensors(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None or next(module.buffers(), None) is not None


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    # A bridge component's hook points hold nothing; its real children are those of the module it wraps.
    return [(n, c) for n, c in _inner(module).named_children() if n != _WRAPPED and _holds_tensors(c)]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def clean_name(name: str) -> str:
    """A parameter or module name with the bridge's wrapper segments dropped (Hugging Face's name)."""
    return ".".join(part for part in name.split(".") if part != _WRAPPED)


def find_module(root: nn.Module, name: str) -> nn.Module | None:
    """The module at Hugging Face name ``name`` in a model, wrapped by a bridge or not."""
    node = root
    for part in name.split(".") if name else []:
        node = dict(_inner(node).named_children()).get(part)
        if node is None:
            return None
    return node


def _module_names(root: nn.Module) -> list[str]:
    names, pending = [], [("", root)]
    while pending:
        prefix, node = pending.pop()
        names.append(prefix)
        pending.extend((_join(prefix, n), c) for n, c in reversed(_children(node)))
    return names


def _find_blocks(root: nn.Module, n_layers: int | None) -> str:
    import torch

    lists = [
        (name, len(m))
        for name in _module_names(root)
        if isinstance(m := find_module(root, name), torch.nn.ModuleList) and len(m)
    ]
    exact = [name for name, n in lists if n == n_layers]
    if exact:
        return exact[0]
    if lists and n_layers is None:
        return max(lists, key=lambda item: item[1])[0]
    raise DeviceError(
        f"cannot find this model's {n_layers} blocks to split them; give device_map as a dict {{module name: device}}"
    )


def layout(root: nn.Module, n_layers: int | None) -> Layout:
    """The placeable modules of ``root`` around its list of ``n_layers`` blocks, and which share weights."""
    path = _find_blocks(root, n_layers)
    before: list[str] = []
    after: list[str] = []
    node, prefix = root, ""
    for part in path.split("."):
        kids = _children(node)
        names = [n for n, _ in kids]
        at = names.index(part)
        before += [_join(prefix, n) for n in names[:at]]
        after = [_join(prefix, n) for n in names[at + 1 :]] + after  # an outer module runs after the inner ones
        node, prefix = kids[at][1], _join(prefix, part)
    blocks = tuple(_join(prefix, n) for n, _ in _children(node))
    # A module without weights registered after the blocks (a rotary embedding's frequencies) runs
    # before them: keep it on the first device, not a hop away from the embeddings.
    moved = [n for n in after if next(find_module(root, n).parameters(), None) is None]  # type: ignore[union-attr]
    before += moved
    after = [n for n in after if n not in moved]
    owner_of: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name in (*before, *blocks, *after):
        for p in find_module(root, name).parameters():  # type: ignore[union-attr]
            if id(p) in owner_of and owner_of[id(p)] != name:
                tied.setdefault(name, owner_of[id(p)])
            owner_of.setdefault(id(p), name)
    return Layout(tuple(before), blocks, tuple(after), tied)


def _owner(name: str, keys: Sequence[str]) -> str | None:
    """The most specific key of a device map that covers module or parameter ``name``."""
    best = None
    for key in keys:
        if (key == "" or name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


def resolve_plan(root: nn.Module, n_layers: int | None, device_map: Any) -> dict[str, torch.device]:
    """The checked ``{module name: device}`` that ``device_map`` (as :func:`check_device_map` returns it) means.

    Raises a DeviceError for a dict naming a module the model lacks, leaving a parameter unplaced,
    or splitting a weight two modules share over two devices.
    """
    import torch

    from interpkit.models._devices import default_device

    if isinstance(device_map, torch.device):
        return {"": device_map}
    if isinstance(device_map, str):  # "auto" / "balanced" for a model already in memory
        n_gpus = torch.cuda.device_count()
        if not n_gpus:
            return {"": default_device()}
        device_map = min(n_gpus, len(layout(root, n_layers).blocks))
    if isinstance(device_map, int):
        plan = split_plan(layout(root, n_layers), [f"cuda:{i}" for i in range(device_map)])
        return {name: torch.device(dev) for name, dev in plan.items()}
    known = _module_names(root)
    for name in device_map:
        if name not in known:
            near = closest(name, known)
            hint = f"; closest: {', '.join(near)}" if near else ""
            top = [n for n in known if n and n.count(".") <= 2][:12]
            raise DeviceError(
                f"device_map names module {name!r}, which this model lacks{hint}. Modules: {', '.join(top)}"
            )
    where: dict[int, tuple[str, torch.device]] = {}
    for pname, p in root.named_parameters(remove_duplicate=False):
        pname = clean_name(pname)
        key = _owner(pname, list(device_map))
        if key is None:
            raise DeviceError(
                f'device_map places no module holding {pname!r}; cover every module ("" covers the whole model)'
            )
        device = device_map[key]
        if id(p) in where and where[id(p)][1] != device:
            other = where[id(p)][0]
            raise DeviceError(
                f"device_map puts {other!r} on {where[id(p)][1]} and {pname!r} on {device}, but they are one "
                "shared tensor (tied weights): map both modules to the same device"
            )
        where.setdefault(id(p), (pname, device))
    return dict(device_map)


# ---------------------------------------------------------------------------- Hugging Face loading
def hf_device_map(source: str, device_map: Any) -> Any:
    """What ``from_pretrained(source, device_map=...)`` gets: a strategy as is, else a checked dict.

    A dict, an int or a device is resolved against the model's skeleton, built from its config on
    the meta device (no weights read), so a bad name fails before anything loads.
    """
    if isinstance(device_map, str):
        return device_map
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    n_layers = getattr(config.get_text_config(), "num_hidden_layers", None)
    plan = resolve_plan(skeleton, n_layers, device_map)
    return {name: dev.index if dev.type == "cuda" else dev.type for name, dev in plan.items()}


def check_hf_placement(hf_model: Any) -> None:
    """A DeviceError when ``from_pretrained`` could not honour the map (tied weights split over devices)."""
    from transformer_lens.utilities.multi_gpu import find_misplaced_modules

    misplaced = find_misplaced_modules(hf_model)
    if misplaced:
        details = "; ".join(f"{name!r} mapped to {mapped} but loaded on {actual}" for name, mapped, actual in misplaced)
        raise DeviceError(
            f"device_map was not honoured: {details}. Modules that share a weight (tied embeddings) "
            "must be mapped to the same device"
        )
