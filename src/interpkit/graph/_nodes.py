"""Nodes and node kinds: what a node is, and what a kind must tell the engines.

A *sender* kind writes into the residual stream: given the activation at its hook (one hook per
layer), it says what each of its nodes adds to the residual stream, ``(rows, pos, n, d_model)``.
A *receiver* kind reads it: it names the hook where its nodes' inputs can be changed (or their
gradient read), adds a change ``(rows, pos, n, d_model)`` to each node's input, and maps the
gradient at that hook back to each node's residual-stream input. An edge ``u -> v`` exists where u
writes before v reads (:meth:`NodeKind.order`). Everything else (EAP, EAP-IG, exact edges,
circuits, faithfulness) is generic over kinds, so a new kind is one class and one
:func:`register_kind` call.

Receiver *modes* are the ways a bridge lets engines reach a head's own input: ``"split"`` (per-head
copies of the residual stream, TransformerLens's ``use_split_qkv_input``), ``"projected"`` (no
copies: the change goes in after ``W_Q/W_K/W_V``, exact only without a norm before attention) and,
for gradients alone, ``"normed"`` (read at ``hook_q/k/v`` of one ordinary forward and mapped back
through the projection and the norm's Jacobian).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from interpkit.errors import InterpkitError, unknown

if TYPE_CHECKING:
    import torch


class GraphError(InterpkitError):
    """A graph cannot be built or used as asked (unknown node kind, overlapping kinds, wrong model)."""


@dataclasses.dataclass(frozen=True)
class Node:
    """One node: a sender (writes to the residual stream) or a receiver (reads it).

    ``kind`` is the node kind's name; ``layer`` is -1 for ``embed`` and ``n_layers`` for
    ``logits``; ``index`` the head, KV head or other index within the layer's group. ``component``
    is what a sender belongs to (``L3H5``, ``L3.mlp``); ``feeds`` the sender components a receiver
    is an input of (a KV head's key input feeds every query head sharing it).
    """

    label: str
    kind: str
    layer: int
    index: int | None = None
    stage: int = 0
    component: str = ""
    feeds: tuple[str, ...] = ()

    @property
    def order(self) -> tuple[int, int]:
        """(layer, stage): where in the residual stream the node writes or reads."""
        return (self.layer, self.stage)


class NodeKind:
    """A kind of node. Subclass :class:`SenderKind` or :class:`ReceiverKind`."""

    name: ClassVar[str] = ""
    role: ClassVar[str] = ""
    stage: int = 0  # 0: the attention side of a block, 1: its MLP side

    def layers(self, cfg: Any) -> Iterable[int]:
        """The layers this kind has nodes in (``cfg``: a model config)."""
        return range(cfg.n_layers)

    def nodes(self, cfg: Any, layer: int) -> list[Node]:
        """The nodes of ``layer``, in the order of their hook's node axis."""
        raise NotImplementedError

    def exists(self, cfg: Any) -> bool:
        """Whether a model of ``cfg`` has nodes of this kind (an attention-only model has no MLPs)."""
        return True

    def order(self, cfg: Any, layer: int) -> tuple[int, int]:
        """(layer, stage) of this kind's nodes in ``layer``; edges go from earlier to later."""
        return (layer, self.stage)

    def spec(self) -> dict[str, Any]:
        """What a circuit file records of this kind (its name and parameters)."""
        return {"name": self.name}


class SenderKind(NodeKind):
    """Nodes that write into the residual stream."""

    role = "sender"
    component_kind: ClassVar[str] = ""  # the residual contribution it decomposes ("attn", "mlp", "embed")

    def hook(self, layer: int) -> str:
        """The hook whose activation gives this layer's outputs."""
        raise NotImplementedError

    def outputs(self, model: Any, layer: int, act: torch.Tensor) -> torch.Tensor:
        """Each node's write to the residual stream, ``(rows, pos, n_nodes, d_model)``, from ``act`` at :meth:`hook`.

        Must be differentiable in ``act`` and computed on ``act``'s device.
        """
        raise NotImplementedError


class ReceiverKind(NodeKind):
    """Nodes that read the residual stream."""

    role = "receiver"

    def hook(self, model: Any, layer: int, mode: str) -> str:
        """The hook where this layer's inputs are changed (and their gradient read) in ``mode``."""
        raise NotImplementedError

    def add(self, model: Any, layer: int, act: torch.Tensor, change: torch.Tensor, mode: str) -> torch.Tensor:
        """``act`` (at :meth:`hook`) with ``change`` ``(rows, pos, n_nodes, d_model)`` added to each node's input."""
        raise NotImplementedError

    def gradient(self, model: Any, layer: int, grad: torch.Tensor, mode: str, resid: Any = None) -> torch.Tensor:
        """The gradient at :meth:`hook` as a gradient of each node's input, ``(rows, pos, n_nodes, d_model)``.

        ``resid``: the residual stream entering ``layer`` (the norm's input), for ``"normed"``.
        """
        raise NotImplementedError

    def start_layer(self, cfg: Any, layer: int) -> int:
        """The layer a forward that changes this layer's inputs can start at."""
        return layer

    def modes(self) -> tuple[str, ...]:
        """The receiver modes this kind implements."""
        return ("split", "projected", "normed")


_KINDS: dict[str, dict[str, NodeKind]] = {"sender": {}, "receiver": {}}


def register_kind(kind: NodeKind, *, replace: bool = False) -> NodeKind:
    """Make ``kind`` available to :func:`build_graph` under ``kind.name`` (per role); returns it.

    >>> from interpkit.graph import kinds
    >>> {"embed", "head", "mlp"} <= set(kinds("sender"))      # the built-in senders
    True
    """
    if kind.role not in _KINDS or not kind.name:
        raise GraphError(f"a node kind needs a name and the role 'sender' or 'receiver', got {kind!r}")
    table = _KINDS[kind.role]
    if kind.name in table and not replace and table[kind.name] is not kind:
        raise GraphError(f"a {kind.role} kind named {kind.name!r} is already registered (pass replace=True)")
    table[kind.name] = kind
    return kind


def kinds(role: str) -> dict[str, NodeKind]:
    """The registered kinds of ``role`` ("sender" or "receiver"), by name."""
    if role not in _KINDS:
        raise unknown("node role", role, tuple(_KINDS), GraphError)
    return dict(_KINDS[role])


def get_kind(role: str, name: str | NodeKind) -> NodeKind:
    """The registered kind ``name`` of ``role`` (a kind object is returned as it is)."""
    if isinstance(name, NodeKind):
        if name.role != role:
            raise GraphError(f"{name.name!r} is a {name.role} kind, not a {role} kind")
        return name
    table = _KINDS[role]
    if name not in table:
        raise unknown(f"{role} kind", name, tuple(table), GraphError)
    return table[name]
