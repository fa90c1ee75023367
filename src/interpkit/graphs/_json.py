"""Graphs in circuit-tracer's graph JSON schema (what its frontend and Neuronpedia read).

The document is ``{"metadata", "qParams", "nodes", "links"}``: ``metadata`` has ``slug``, ``scan``,
``transcoder_list``, ``prompt_tokens``, ``prompt``, ``node_threshold`` and ``schema_version``;
``qParams`` the frontend's pinned nodes and supernodes; each node ``node_id``, ``feature``,
``layer`` (a string: ``"E"`` for embeddings, ``n_layers + 1`` for logits), ``ctx_idx``,
``feature_type``, ``token_prob``, ``is_target_logit``, ``jsNodeId``, ``clerp``, ``influence`` (the
cumulative influence share, as circuit-tracer writes it) and ``activation``; each link ``source``,
``target``, ``weight``. Node ids follow circuit-tracer (``{layer}_{unit}_{pos}``, ``E_{token}_{pos}``,
``{n_layers + 1}_{token}_{pos}``) except error nodes, ``err_{layer}_{pos}``: circuit-tracer's
``0_{layer}_{pos}`` collides with layer-0 feature ids. Neurons have ``feature_type``
``"mlp neuron"``. Everything interpkit needs to read the graph back exactly rides along in
fields the schema does not use (``ik_*`` on nodes, ``metadata.interpkit``), which readers of the
schema ignore.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.graphs._frozen import GraphError

if TYPE_CHECKING:
    from interpkit.graphs._graph import Graph, Node

FORMAT = "interpkit-graph/1"
_TYPES = {
    "feature": "cross layer transcoder",
    "neuron": "mlp neuron",
    "error": "mlp reconstruction error",
    "embedding": "embedding",
    "logit": "logit",
}
_KINDS = {v: k for k, v in _TYPES.items()}


def _pp(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _node(node: Node, cumulative: float, n_layers: int, target: bool) -> dict[str, Any]:
    layer = "E" if node.kind == "embedding" else str(n_layers + 1 if node.kind == "logit" else node.layer)
    js = {
        "embedding": f"E_{node.feature}-{node.position}",
        "logit": f"L_{node.feature}-{node.position}",
        "error": f"{node.layer}_{node.position}-0",
    }.get(node.kind, f"{node.layer}_{node.feature}-0")
    feature = {"embedding": node.position, "logit": node.feature, "error": -1}.get(
        node.kind, _cantor(node.layer, node.feature)
    )
    clerp = node.label if node.kind != "logit" else f'Output "{node.label}" (p={node.probability or 0.0:.3f})'
    return {
        "node_id": node.id,
        "feature": feature,
        "layer": layer,
        "ctx_idx": node.position,
        "feature_type": _TYPES[node.kind],
        "token_prob": float(node.probability or 0.0),
        "is_target_logit": target,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": js,
        "clerp": clerp,
        "influence": cumulative,
        "activation": node.activation,
        "ik_layer": node.layer,
        "ik_unit": node.feature,
        "ik_influence": node.influence,
        "ik_pre_activation": node.pre_activation,
        "ik_constant": node.constant,
        "ik_other": node.other,
        "ik_label": node.label,
    }


def to_schema(graph: Graph, slug: str | None = None) -> dict[str, Any]:
    import torch

    influence = torch.tensor([n.influence or 0.0 for n in graph.nodes], dtype=torch.float64)
    order = torch.argsort(influence, descending=True)
    cumulative = torch.zeros_like(influence)
    cumulative[order] = torch.cumsum(influence[order], 0) / influence.sum().clamp_min(1e-30)
    n_layers = int(graph.meta.get("n_layers", max(n.layer for n in graph.nodes)))
    first_logit = next((i for i, n in enumerate(graph.nodes) if n.kind == "logit"), -1)
    a = graph.adjacency.coalesce()
    (targets, sources), weights = a.indices().tolist(), a.values().tolist()
    pruned = graph.meta.get("pruned") or {}
    nodes = [_node(n, float(cumulative[i]), n_layers, i == first_logit) for i, n in enumerate(graph.nodes)]
    return {
        "metadata": {
            "slug": slug or graph.meta.get("slug") or "interpkit-graph",
            "scan": str(graph.meta.get("scan") or graph.meta.get("model") or "interpkit"),
            "transcoder_list": list(graph.meta.get("transcoder_list", [])),
            "prompt_tokens": [_pp(t) for t in graph.token_strs],
            "prompt": "".join(graph.token_strs),
            "node_threshold": pruned.get("node_threshold"),
            "schema_version": 1,
            "interpkit": {
                "format": FORMAT,
                "tokens": graph.tokens,
                "token_strs": graph.token_strs,
                "meta": graph.meta,
                "scores": graph.scores,
                "verification": graph.verification,
            },
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": [
            {"source": graph.nodes[s].id, "target": graph.nodes[t].id, "weight": w}
            for t, s, w in zip(targets, sources, weights, strict=True)
        ],
    }


def from_schema(source: str | Path | dict[str, Any]) -> Graph:
    import torch

    from interpkit.graphs._graph import Graph

    if isinstance(source, dict):
        data = source
    else:
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise GraphError(f"cannot read graph file {str(source)!r}: {exc}") from exc
    missing = [k for k in ("metadata", "nodes", "links") if k not in data]
    if missing:
        raise GraphError(f"not a circuit-tracer graph document: it has no {', '.join(missing)}")
    extra = data["metadata"].get("interpkit") or {}
    nodes = [_read_node(d) for d in data["nodes"]]
    index = {n.id: i for i, n in enumerate(nodes)}
    links = [
        (index[x["target"]], index[x["source"]], float(x["weight"]))
        for x in data["links"]
        if x["target"] in index and x["source"] in index
    ]
    rows = torch.tensor([[t, s] for t, s, _ in links], dtype=torch.long).reshape(-1, 2).T
    values = torch.tensor([w for _, _, w in links], dtype=torch.float64)
    adjacency = torch.sparse_coo_tensor(rows, values, (len(nodes), len(nodes)), check_invariants=True).coalesce()
    strs = extra.get("token_strs") or list(data["metadata"].get("prompt_tokens", []))
    tokens = extra.get("tokens") or [n.feature for n in nodes if n.kind == "embedding"]
    return Graph(
        nodes=nodes,
        adjacency=adjacency,
        tokens=[int(t) for t in tokens],
        token_strs=list(strs),
        meta=dict(extra.get("meta") or {}),
        scores=dict(extra.get("scores") or {}),
        verification=extra.get("verification"),
    )


def _read_node(d: dict[str, Any]) -> Node:
    from interpkit.graphs._graph import Node

    kind = _KINDS.get(d.get("feature_type", ""), "feature")
    if "ik_layer" in d:
        layer, unit = int(d["ik_layer"]), int(d["ik_unit"])
    else:  # a document circuit-tracer wrote: recover the unit from the node id
        parts = str(d["node_id"]).split("_")
        layer = -1 if d["layer"] == "E" else int(d["layer"]) - (kind == "logit")  # logits: n_layers + 1 there
        unit = {"embedding": int(parts[1]), "logit": int(d["feature"]), "error": -1}.get(
            kind, int(parts[1]) if len(parts) == 3 else int(d["feature"])
        )
    return Node(
        id=str(d["node_id"]),
        kind=kind,
        layer=layer,
        position=int(d["ctx_idx"]),
        feature=unit,
        activation=d.get("activation"),
        influence=d.get("ik_influence"),
        pre_activation=d.get("ik_pre_activation"),
        constant=d.get("ik_constant"),
        other=d.get("ik_other"),
        label=d.get("ik_label", d.get("clerp", "")),
        probability=float(d["token_prob"]) if kind == "logit" else None,
    )
