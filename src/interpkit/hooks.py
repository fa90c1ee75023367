"""The only place interpkit registers hooks: context managers that always remove them.

A hook function has TransformerLens's signature ``fn(activation, hook) -> activation | None``
and sees activations in the classic shapes, with ``hook.name`` the canonical name of the point
(``model.hook_names()``) (``attn.hook_z`` as ``(batch, pos, head, d_head)``),
because registration goes through the bridge's ``HookPoint.add_hook``, which applies the
bridge's shape conversions. Returning a tensor replaces the activation; returning None keeps it.
On a model loaded with ``device_map`` the activation is on its layer's device, and a returned
tensor must be too (``value.to(act.device)``, free when it already is).

Gradient hooks are registered as forward hooks that pass the activation through unchanged and
attach a tensor hook to it, so they see gradients in the same classic shape as the forward
activation and vanish with the autograd graph, never outliving the call.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> seen = {}
    >>> def keep(act, hook):
    ...     seen[hook.name] = act.shape
    >>> with ik.hooks.hooks(model, fwd=[("blocks.0.attn.hook_z", keep)]):
    ...     _ = model(model.check_tokens([[1, 2, 3]]))
    >>> seen["blocks.0.attn.hook_z"]
    torch.Size([1, 3, 4, 32])
    >>> ik.hooks.active_hook_count(model)
    0
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Any object with ``bridge`` and ``resolve_hook`` (an ``interpkit.Model``); hooks sit below models
# in the layering (models use them for their own checks), so the class is not imported here.
Model = Any

HookFn = Callable[..., Any]
GradFn = Callable[["torch.Tensor", str], Any]


def _grad_forward_hook(name: str, fn: GradFn) -> HookFn:
    def forward_hook(act: Any, hook: Any) -> Any:
        if act.requires_grad:
            act.register_hook(lambda grad: fn(grad, name))
        return act

    return forward_hook


@contextlib.contextmanager
def hooks(
    model: Model,
    fwd: Iterable[tuple[str, HookFn]] = (),
    grad: Iterable[tuple[str, GradFn]] = (),
) -> Iterator[None]:
    """Register forward hooks ``(name, fn(act, hook))`` and gradient hooks ``(name, fn(grad, name))``.

    Every hook is removed on exit, also when the body raises. Hook names may be any alias of a
    hook point; unknown names raise a SiteError before anything is registered. The body holds
    ``model.lock``, so another thread's forward on the same model waits for it (and never sees
    these hooks).
    """
    planned = [(model.resolve_hook(name), fn) for name, fn in fwd]
    planned += [(model.resolve_hook(name), _grad_forward_hook(model.resolve_hook(name), fn)) for name, fn in grad]
    registered: list[tuple[Any, Any]] = []
    with getattr(model, "lock", None) or contextlib.nullcontext():
        try:
            for name, fn in planned:
                point = model.hook_point(name)
                # alias_names makes hook.name the canonical name, not the bridge's structural one.
                registered.append((point, point.add_hook(fn, dir="fwd", alias_names=[name])))
            yield
        finally:
            for point, handle in reversed(registered):
                handle.hook.remove()
                point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]


def run_with_hooks(
    model: Model,
    tokens: torch.Tensor,
    fwd: Iterable[tuple[str, HookFn]] = (),
    attention_mask: torch.Tensor | None = None,
    **forward_kwargs: Any,
) -> torch.Tensor:
    """One forward pass with temporary forward hooks; returns the logits (on ``model.device``)."""
    mask = None if attention_mask is None else attention_mask.to(model.device)
    with hooks(model, fwd=fwd):
        return model.bridge(model.check_tokens(tokens), attention_mask=mask, **forward_kwargs).to(model.device)


def active_hook_count(model: Model) -> int:
    """Hooks currently registered on any hook point of the model (0 outside ``hooks``)."""
    seen: set[int] = set()
    count = 0
    for point in model.bridge.hook_dict.values():
        if id(point) in seen:
            continue
        seen.add(id(point))
        count += len(getattr(point, "_forward_hooks", {})) + len(getattr(point, "_backward_hooks", {}))
        count += len(getattr(point, "_forward_pre_hooks", {}))
    return count
