"""The built-in node kinds: ``embed``, attention heads and MLPs write; head q/k/v inputs, MLP inputs
and ``logits`` read. Grouped-query attention keeps its KV heads: key and value inputs belong to
the shared KV head (``L3KV1.k``) and feed every query head that shares it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.graph._nodes import Node, ReceiverKind, SenderKind, register_kind

if TYPE_CHECKING:
    import torch


class Embed(SenderKind):
    """The token (and learned position) embeddings: the residual stream entering block 0."""

    name = "embed"
    component_kind = "embed"

    def layers(self, cfg: Any) -> list[int]:
        return [-1]

    def nodes(self, cfg: Any, layer: int) -> list[Node]:
        return [Node("embed", "embed", -1, component="embed")]

    def hook(self, layer: int) -> str:
        return "blocks.0.hook_resid_pre"

    def outputs(self, model: Any, layer: int, act: torch.Tensor) -> torch.Tensor:
        return act[:, :, None]


class Heads(SenderKind):
    """Each attention head's output, ``z_h @ W_O[h]`` (the attention output bias belongs to no head)."""

    name = "head"
    component_kind = "attn"

    def nodes(self, cfg: Any, layer: int) -> list[Node]:
        return [Node(f"L{layer}H{h}", "head", layer, h, 0, f"L{layer}H{h}") for h in range(cfg.n_heads)]

    def hook(self, layer: int) -> str:
        return f"blocks.{layer}.attn.hook_z"

    def outputs(self, model: Any, layer: int, act: torch.Tensor) -> torch.Tensor:
        import torch

        w_o = model.anatomy.attn(layer).W_O  # (head, d_head, d_model), on the layer's device
        return torch.einsum("bphd,hdm->bphm", act.to(w_o.device, w_o.dtype), w_o)


class MLPs(SenderKind):
    """Each MLP's whole output (``hook_mlp_out``); ``layers``: only those (a kind of another name).

    >>> MLPs(layers=[0, 2], name="mlp_02").layers(type("Cfg", (), {"n_layers": 4})())
    [0, 2]
    """

    stage = 1
    component_kind = "mlp"

    def __init__(self, layers: Any = None, name: str = "mlp") -> None:
        self.only = None if layers is None else sorted(int(lay) for lay in layers)
        self.name = name  # type: ignore[misc]

    def exists(self, cfg: Any) -> bool:
        return not cfg.attn_only

    def layers(self, cfg: Any) -> list[int]:
        return [lay for lay in range(cfg.n_layers) if self.only is None or lay in self.only]

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **({"layers": self.only} if self.only is not None else {})}

    def nodes(self, cfg: Any, layer: int) -> list[Node]:
        return [Node(f"L{layer}.mlp", "mlp", layer, None, 1, f"L{layer}.mlp")]

    def hook(self, layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_out"

    def outputs(self, model: Any, layer: int, act: torch.Tensor) -> torch.Tensor:
        return act[:, :, None]


class AttnInputs(ReceiverKind):
    """Each head's query input, or each KV head's key or value input (``side`` "q", "k" or "v")."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.name = side  # type: ignore[misc]

    def _count(self, cfg: Any) -> int:
        return cfg.n_heads if self.side == "q" else cfg.n_kv_heads

    def nodes(self, cfg: Any, layer: int) -> list[Node]:
        s = self.side
        if s == "q":
            return [Node(f"L{layer}H{h}.q", "q", layer, h, 0, feeds=(f"L{layer}H{h}",)) for h in range(cfg.n_heads)]
        group = cfg.n_heads // cfg.n_kv_heads
        gqa = group > 1
        out = []
        for g in range(cfg.n_kv_heads):
            label = f"L{layer}KV{g}.{s}" if gqa else f"L{layer}H{g}.{s}"
            feeds = tuple(f"L{layer}H{h}" for h in range(g * group, (g + 1) * group))
            out.append(Node(label, s, layer, g, 0, feeds=feeds))
        return out

    def hook(self, model: Any, layer: int, mode: str) -> str:
        if mode == "split":
            return f"blocks.{layer}.hook_{self.side}_input"
        return f"blocks.{layer}.attn.hook_{self.side}"

    def _weight(self, model: Any, layer: int) -> torch.Tensor:
        return model.anatomy.attn(layer).input_weight(self.side)  # (n, d_model, d_head)

    def add(self, model: Any, layer: int, act: torch.Tensor, change: torch.Tensor, mode: str) -> torch.Tensor:
        import torch

        if mode == "split":  # act (rows, pos, n, d_model)
            return act + change.to(act.device, act.dtype)
        # no per-head input copies: the input change projected by W_Q/W_K/W_V is the q/k/v change
        w = self._weight(model, layer)
        projected = torch.einsum("bpnd,nde->bpne", change.to(w.device, w.dtype), w)
        return act + projected.to(act.device, act.dtype)

    def gradient(self, model: Any, layer: int, grad: torch.Tensor, mode: str, resid: Any = None) -> torch.Tensor:
        import torch

        if mode == "split":
            return grad
        w = self._weight(model, layer)  # q = x W + b: dm/dx for node n is dm/dq_n W[n]^T
        g = torch.einsum("bphe,hde->bphd", grad.to(w.device, w.dtype), w)
        return model.anatomy.ln1(layer).vjp(resid, g) if mode == "normed" else g


class MLPInputs(ReceiverKind):
    """Each MLP's input (``hook_mlp_in``; a parallel block's MLP reads the block's input)."""

    name = "mlp"
    stage = 1

    def exists(self, cfg: Any) -> bool:
        return not cfg.attn_only

    def order(self, cfg: Any, layer: int) -> tuple[int, int]:
        return (layer, 0 if cfg.parallel_attn_mlp else 1)

    def nodes(self, cfg: Any, layer: int) -> list[Node]:
        return [Node(f"L{layer}.mlp", "mlp", layer, None, 1, feeds=(f"L{layer}.mlp",))]

    def hook(self, model: Any, layer: int, mode: str) -> str:
        return f"blocks.{layer}.hook_mlp_in"

    def add(self, model: Any, layer: int, act: torch.Tensor, change: torch.Tensor, mode: str) -> torch.Tensor:
        return act + change[:, :, 0].to(act.device, act.dtype)

    def gradient(self, model: Any, layer: int, grad: torch.Tensor, mode: str, resid: Any = None) -> torch.Tensor:
        return grad[:, :, None]


class Logits(ReceiverKind):
    """The final residual stream, read by the unembedding."""

    name = "logits"

    def layers(self, cfg: Any) -> list[int]:
        return [cfg.n_layers]

    def nodes(self, cfg: Any, layer: int) -> list[Node]:
        return [Node("logits", "logits", cfg.n_layers)]

    def hook(self, model: Any, layer: int, mode: str) -> str:
        return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"

    def add(self, model: Any, layer: int, act: torch.Tensor, change: torch.Tensor, mode: str) -> torch.Tensor:
        return act + change[:, :, 0].to(act.device, act.dtype)

    def gradient(self, model: Any, layer: int, grad: torch.Tensor, mode: str, resid: Any = None) -> torch.Tensor:
        return grad[:, :, None]

    def start_layer(self, cfg: Any, layer: int) -> int:
        return cfg.n_layers - 1


SENDERS = ("embed", "head", "mlp")
RECEIVERS = ("q", "k", "v", "mlp", "logits")

for _kind in (Embed(), Heads(), MLPs(), AttnInputs("q"), AttnInputs("k"), AttnInputs("v"), MLPInputs(), Logits()):
    register_kind(_kind)
