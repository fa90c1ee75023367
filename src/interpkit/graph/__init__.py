"""The computational graph as data: nodes of open kinds, edges, and what engines need to run them.

Senders write into the residual stream (``embed``, every head ``L3H5``, every MLP ``L3.mlp``);
receivers read it (every head's query input ``L3H5.q``, key and value inputs ``L3H5.k`` / ``.v``
or, under grouped-query attention, the shared KV head's ``L3KV1.k`` / ``.v``; every MLP's input
``L3.mlp``; ``logits``). An edge ``u -> v`` exists where u writes before v reads: attention of
layer l reads what embed and layers < l wrote; a sequential block's MLP also reads its own
layer's heads (a parallel block's MLP, as in GPT-NeoX, GPT-J or Phi, does not); logits read
everything. Edge labels are ``"L0H3->L1H5.k"``.

Node kinds are a registry (:func:`register_kind`): a kind says where its output is read (senders)
or where its input is changed (receivers), how it writes into the residual stream, and how a
gradient at its hook maps to its input. EAP, EAP-IG, exact edge patching, circuit discovery and
faithfulness are generic over kinds, so a new kind (groups of MLP neurons, dictionary latents)
is one class:

    >>> import torch, interpkit as ik
    >>> from interpkit.graph import Node, SenderKind, build_graph, register_kind
    >>> class NeuronHalves(SenderKind):   # each MLP's output as the writes of two halves of its neurons
    ...     name, stage, component_kind = "mlp_halves", 1, "mlp"
    ...     def exists(self, cfg):
    ...         return not cfg.attn_only
    ...     def nodes(self, cfg, layer):
    ...         return [Node(f"L{layer}.mlp[{i}]", self.name, layer, i, 1, f"L{layer}.mlp") for i in (0, 1)]
    ...     def hook(self, layer):
    ...         return f"blocks.{layer}.mlp.hook_post"
    ...     def outputs(self, model, layer, act):          # (rows, pos, d_mlp) -> (rows, pos, 2, d_model)
    ...         w_out = model.anatomy.mlp(layer).W_out
    ...         return torch.einsum("bpgn,gnd->bpgd", act.unflatten(-1, (2, -1)), w_out.unflatten(0, (2, -1)))
    >>> _ = register_kind(NeuronHalves(), replace=True)
    >>> model = ik.models.boot_native({"d_model": 16, "d_head": 4, "n_layers": 2, "n_ctx": 16, "n_heads": 4,
    ...                                "d_vocab": 23, "d_mlp": 32, "act_fn": "gelu", "normalization_type": "LN"})
    >>> graph = build_graph(model, senders=["embed", "head", "mlp_halves"])
    >>> [n.label for n in graph.senders][-2:]
    ['L1.mlp[0]', 'L1.mlp[1]']
"""

from interpkit.graph._builtin import RECEIVERS as RECEIVERS
from interpkit.graph._builtin import SENDERS as SENDERS
from interpkit.graph._builtin import MLPs as MLPs
from interpkit.graph._endpoints import mode_context as mode_context
from interpkit.graph._endpoints import receiver_mode as receiver_mode
from interpkit.graph._endpoints import sender_hooks as sender_hooks
from interpkit.graph._endpoints import sender_outputs as sender_outputs
from interpkit.graph._graph import Graph as Graph
from interpkit.graph._graph import Group as Group
from interpkit.graph._graph import build_graph as build_graph
from interpkit.graph._neurons import neuron_senders as neuron_senders
from interpkit.graph._nodes import GraphError as GraphError
from interpkit.graph._nodes import Node as Node
from interpkit.graph._nodes import NodeKind as NodeKind
from interpkit.graph._nodes import ReceiverKind as ReceiverKind
from interpkit.graph._nodes import SenderKind as SenderKind
from interpkit.graph._nodes import get_kind as get_kind
from interpkit.graph._nodes import kinds as kinds
from interpkit.graph._nodes import register_kind as register_kind

__all__ = [
    "RECEIVERS",
    "SENDERS",
    "Graph",
    "GraphError",
    "Group",
    "MLPs",
    "Node",
    "NodeKind",
    "ReceiverKind",
    "SenderKind",
    "build_graph",
    "get_kind",
    "kinds",
    "mode_context",
    "neuron_senders",
    "receiver_mode",
    "register_kind",
    "sender_hooks",
    "sender_outputs",
]
