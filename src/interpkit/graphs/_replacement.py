"""What the whole local replacement model predicts for an intervention, not just the graph.

A graph keeps some features; the replacement model it was cut from has all of them, each linear
in its pre-activation at its frozen ratio (``a = pre * a0 / pre0``), with attention patterns and
norm scales frozen. Propagating an intervention through all of them separates the two ways a
graph's prediction can miss: the linearisation itself (this prediction misses too) or the
features left out of the graph (this one does not). :func:`replacement_changes` runs that
propagation for many interventions at once, one forward through the frozen model's linear part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.graphs._frozen import affine

if TYPE_CHECKING:
    import torch

    from interpkit.graphs._graph import Graph
    from interpkit.models import Model


def replacement_changes(model: Model, graph: Graph, sets: list[list[int]], scale: float, features: Any) -> torch.Tensor:
    """The change of the graph's target (demeaned) logit under each set's intervention, in the full
    replacement model ``(sets,)``; rebuilt from one forward of the prompt."""
    import torch

    from interpkit.graphs._attribute import _capture
    from interpkit.graphs._features import neuron_hooks, read_features, skip_weights
    from interpkit.graphs._frozen import needed_hooks, read_frozen

    dtype = torch.float64 if graph.meta.get("dtype") == "float64" else torch.float32
    neurons = isinstance(features, str)
    ids = torch.tensor(graph.tokens, device=model.device)
    store, _ = _capture(model, ids, needed_hooks(model) + (neuron_hooks(model) if neurons else []))
    frozen = read_frozen(model, store, skip_weights(model, features), dtype)
    layers = read_features(model, store, features, dtype, bool(graph.meta.get("skip_first_position", True)))
    fixed = _fixed(graph, sets, layers)
    n, d = len(graph.tokens), model.cfg.d_model
    dx = torch.zeros(len(sets), n, d, dtype=dtype, device=frozen.w_u.device)
    for i, (lay, lf) in enumerate(zip(frozen.layers, layers, strict=True)):
        a = frozen.attend(lay, dx, bias=False)
        reads = dx if frozen.parallel else dx + a
        raw = torch.zeros_like(dx)
        if lf.n or i in fixed:
            raw = _mlp_change(lay, lf, reads, fixed.get(i, []), scale)
        if i in frozen.skips:
            raw = raw + affine(lay.mlp_in, reads, lay.s2, bias=False) @ frozen.skips[i].T.to(raw)
        dx = dx + a + affine(lay.post_mlp, raw, lay.s_pm, bias=False)
    target = graph.nodes[graph.kinds().index("logit")].feature
    direction = frozen.w_u[:, target] - frozen.w_u.mean(1)
    final = affine(frozen.ln_final, dx, frozen.s_final, bias=False)
    return (final[:, -1] @ direction.to(final)).float().cpu()


def _fixed(graph: Graph, sets: list[list[int]], layers: list[Any]) -> dict[int, list[tuple[int, int]]]:
    """{layer: [(set, local feature index)]} of the intervened features."""
    out: dict[int, list[tuple[int, int]]] = {}
    for s, members in enumerate(sets):
        for i in members:
            node = graph.nodes[i]
            lf = layers[node.layer]
            hit = ((lf.pos == node.position) & (lf.idx == node.feature)).nonzero()
            if len(hit):
                out.setdefault(node.layer, []).append((s, int(hit[0, 0])))
    return out


def _mlp_change(lay: Any, lf: Any, reads: torch.Tensor, fixed: list[tuple[int, int]], scale: float) -> torch.Tensor:
    """The change of one MLP's raw output ``(sets, pos, d_out)`` from the change ``reads`` of its input."""
    import torch

    units, where = lf.idx.unique(return_inverse=True)
    into = affine(lay.mlp_in, reads, lay.s2, bias=False)  # (sets, pos, d_in)
    per_unit = into @ lf.w_enc[units].T.to(into)  # (sets, pos, units)
    d_pre = per_unit[:, lf.pos, where]  # (sets, k)
    d_act = d_pre * (lf.act / lf.pre).to(d_pre)
    for s, k in fixed:  # an intervened feature takes its set value whatever its input does
        d_act[s, k] = (scale - 1.0) * lf.act[k].to(d_act)
    dense = torch.zeros_like(per_unit)
    dense[:, lf.pos, where] = d_act
    return dense @ lf.w_dec[units].to(dense)
