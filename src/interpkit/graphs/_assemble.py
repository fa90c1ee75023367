"""Turn computed rows into a :class:`~interpkit.graphs.Graph`: nodes, sparse adjacency, constants.

The graph keeps the visited features (those with rows), every error node, every embedding and the
logits. An edge from a feature outside the graph is not dropped silently: each row's sum of such
edges is its node's ``other``. Each node's ``constant`` is its pre-activation in the frozen model
with every source removed (biases, and the writes held constant at a skipped first position), so
``Σ incoming + constant + other = pre_activation``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.graphs._frozen import affine

if TYPE_CHECKING:
    import torch

    from interpkit.graphs._graph import Graph
    from interpkit.models import Model


def constants(
    frozen: Any, cols: Any, embed: torch.Tensor, logit_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bias-only pre-activation of every feature column ``(F,)`` and of every logit node ``(K,)``."""
    import torch

    zero_out = []
    for lf in cols.layers:
        bias = lf.dec_bias if lf.dec_bias is not None else torch.zeros(embed.shape[-1], dtype=embed.dtype)
        out = bias.to(embed).expand(embed.shape).clone()
        zero_out.append(out if lf.held is None else out + lf.held.to(out))
    with torch.no_grad():
        streams = frozen.forward(torch.zeros_like(embed), zero_out)
        feature_const = torch.zeros(cols.n_features, dtype=embed.dtype)
        start = 0
        for lf in cols.layers:
            if lf.n:
                lay = frozen.layers[lf.layer]
                reads = affine(lay.mlp_in, streams["mid"][lf.layer], lay.s2)  # (pos, d_in)
                units, where = lf.idx.unique(return_inverse=True)
                value = (reads @ lf.w_enc[units].T.to(reads))[lf.pos, where]
                if lf.b_enc is not None:
                    value = value + lf.b_enc[lf.idx].to(value)
                feature_const[start : start + lf.n] = value.cpu()
            start += lf.n
        final = affine(frozen.ln_final, streams["final"][0][-1], None if frozen.s_final is None else frozen.s_final[-1])
        w_u, b_u = frozen.w_u, frozen.b_u
        idx = logit_ids.to(w_u.device)
        logit_const = final @ (w_u[:, idx] - w_u.mean(1, keepdim=True)) + (b_u[idx] - b_u.mean())
    return feature_const, logit_const.cpu()


def assemble(
    model: Model,
    ids: torch.Tensor,
    frozen: Any,
    cols: Any,
    rows: Any,
    visited: torch.Tensor,
    logit_ids: torch.Tensor,
    probs: torch.Tensor,
    logits: torch.Tensor,
    embed: torch.Tensor,
) -> Graph:
    import torch

    from interpkit.graphs._graph import Graph

    selected = visited.nonzero()[:, 0]
    n_sel = len(selected)
    to_node = torch.full((cols.total,), -1, dtype=torch.long)
    to_node[selected] = torch.arange(n_sel)
    to_node[cols.error_start :] = n_sel + torch.arange(cols.total - cols.error_start)
    entries, row_nodes, others = [], [], []
    for batch in rows.batches:  # batch by batch: the stored rows can be large
        row_node, index, vals, other = _batch_entries(rows, batch, to_node, n_sel)
        entries.append((index, vals))
        row_nodes.append(row_node)
        others.append(other)
    index = torch.cat([e[0] for e in entries], 1)
    vals = torch.cat([e[1] for e in entries])
    n_nodes = n_sel + cols.total - cols.error_start
    adjacency = torch.sparse_coo_tensor(index, vals, (n_nodes, n_nodes), check_invariants=True).coalesce()
    row_node, other = torch.cat(row_nodes), torch.cat(others)
    feature_const, logit_const = constants(frozen, cols, embed, logit_ids)
    nodes = _nodes(model, ids, cols, selected, logit_ids, probs, logits, feature_const, logit_const)
    for node_index, value in zip(row_node.tolist(), other.tolist(), strict=True):
        nodes[node_index].other = value
    graph = Graph(
        nodes=nodes,
        adjacency=adjacency,
        tokens=ids.tolist(),
        token_strs=_token_strs(model, ids),
        meta={"model": model.name, "provenance": model.provenance(), "n_layers": model.cfg.n_layers},
    )
    for node, value in zip(graph.nodes, graph.influence().tolist(), strict=True):
        node.influence = value
    return graph


def _batch_entries(
    rows: Any, batch: dict[str, Any], to_node: torch.Tensor, n_sel: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stored batch as graph entries: ``(row nodes, (2, nnz) index, values, other)``."""
    import torch

    row_node = to_node[rows.node_of(batch["codes"])]
    f_node = to_node[rows._cols(batch).long()]  # (rows, keep): -1 where the feature is outside the graph
    inside = f_node >= 0
    values = batch["feature_vals"]
    kept = torch.where(inside, values, torch.zeros((), dtype=values.dtype))
    other = batch["feature_total"] - kept.double().sum(1)
    n_rows, n_rest = values.shape[0], batch["rest"].shape[1]
    r = torch.arange(n_rows)[:, None]
    row_idx = torch.cat([r.expand(-1, values.shape[1])[inside], r.expand(-1, n_rest).reshape(-1)])
    col_idx = torch.cat([f_node[inside], (n_sel + torch.arange(n_rest)).repeat(n_rows)])
    vals = torch.cat([values[inside], batch["rest"].reshape(-1)])
    nz = vals != 0
    return row_node, torch.stack([row_node[row_idx[nz]], col_idx[nz]]), vals[nz], other


def _token_strs(model: Model, ids: torch.Tensor) -> list[str]:
    tok = model.tokenizer
    if tok is None:
        return [f"<{int(i)}>" for i in ids]
    return [tok.decode([int(i)]) for i in ids]


def _nodes(
    model: Model,
    ids: torch.Tensor,
    cols: Any,
    selected: torch.Tensor,
    logit_ids: torch.Tensor,
    probs: torch.Tensor,
    logits: torch.Tensor,
    feature_const: torch.Tensor,
    logit_const: torch.Tensor,
) -> list[Any]:
    from interpkit.graphs._graph import Node

    kind = "neuron" if all(lf.error is None for lf in cols.layers) else "feature"
    strs = _token_strs(model, ids)
    nodes = []
    for j in selected.tolist():
        layer, pos, unit = int(cols.f_layer[j]), int(cols.f_pos[j]), int(cols.f_idx[j])
        lf, local = cols.layers[layer], int(cols.f_local[j])
        nodes.append(
            Node(
                id=f"{layer}_{unit}_{pos}",
                kind=kind,
                layer=layer,
                position=pos,
                feature=unit,
                activation=float(lf.act[local]),
                pre_activation=float(lf.pre[local]),
                constant=float(feature_const[j]),
                label=f"L{layer}/{unit} @ {strs[pos]!r}",
            )
        )
    for layer in cols.error_layers:
        nodes += [
            Node(f"err_{layer}_{p}", "error", layer, p, -1, label=f"error L{layer} @ {strs[p]!r}")
            for p in range(cols.n_pos)
        ]
    nodes += [Node(f"E_{int(t)}_{p}", "embedding", -1, p, int(t), label=strs[p]) for p, t in enumerate(ids.tolist())]
    n_layers, last = model.cfg.n_layers, cols.n_pos - 1
    centred = logits - logits.mean()
    for k, (t, p) in enumerate(zip(logit_ids.tolist(), probs.tolist(), strict=True)):
        text = model.tokenizer.decode([t]) if model.tokenizer is not None else f"<{t}>"
        nodes.append(
            Node(
                id=f"{n_layers + 1}_{t}_{last}",
                kind="logit",
                layer=n_layers,
                position=last,
                feature=t,
                pre_activation=float(centred[t]),
                constant=float(logit_const[k]),
                label=text,
                probability=float(p),
            )
        )
    return nodes
