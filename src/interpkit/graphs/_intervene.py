"""Interventions: does the graph predict what happens when its features are changed in the real model?

``intervene(model, graph, nodes, scale)`` sets each chosen feature's activation to ``scale`` times
its value on the prompt (0 ablates) and returns the change of the target logit (the graph's first
logit node, demeaned as its node is) three ways:

- ``predicted``: from the graph alone. Each feature's activation is linear in its pre-activation
  in the replacement model (``a = pre * a0 / pre0``), so a relative change ``ρ_s`` of source s moves
  target t's pre-activation by ``Σ_s A[t, s] ρ_s``; features downstream follow in layer order
  (``ρ_t = Δpre_t / pre0_t``), and the logit moves by ``Σ_s A[logit, s] ρ_s``.
- ``replacement``: the same propagation through every feature of the local replacement model,
  not only the graph's (:mod:`interpkit.graphs._replacement`): where ``predicted`` misses and this
  does not, the graph left out features that matter; where both miss, the linearisation does.
- ``actual_frozen``: the real model with the dictionaries spliced in (neurons: the model itself;
  transcoders: each MLP output replaced by its transcoder's reconstruction plus the prompt's error,
  so the unchanged prompt is reproduced exactly and later latents re-encode their new input),
  attention patterns held at the prompt's;
- ``actual_unfrozen``: the same with attention recomputed.

Norms and nonlinearities run for real in both. :func:`verify` does this for the top nodes by
influence, one ablation each, and summarises the agreement (Spearman rank correlation and the
fraction of matching signs); every Graph carries that summary (``graph.verification``), as edge
attribution carries its exact-patching check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.graphs._frozen import GraphError

if TYPE_CHECKING:
    import torch

    from interpkit.graphs._graph import Graph
    from interpkit.models import Model
    from interpkit.results import Result


def predict(graph: Graph, sets: list[list[int]], scale: float) -> torch.Tensor:
    """The graph's predicted change of the target logit for each set of feature nodes ``(sets,)``."""
    import torch

    a = graph.dense().double()
    kinds = graph.kinds()
    pre = torch.tensor([n.pre_activation if n.pre_activation is not None else float("nan") for n in graph.nodes])
    rho = torch.zeros(len(sets), len(graph.nodes), dtype=torch.float64)
    fixed = torch.zeros_like(rho, dtype=torch.bool)
    for s, members in enumerate(sets):
        rho[s, members] = scale - 1.0
        fixed[s, members] = True
    layers = torch.tensor([n.layer for n in graph.nodes])
    feature = torch.tensor([k in ("neuron", "feature") for k in kinds])
    for layer in sorted(set(layers[feature].tolist())):
        idx = (feature & (layers == layer)).nonzero()[:, 0]
        moved = (rho @ a[idx].T) / pre[idx].double()
        rho[:, idx] = torch.where(fixed[:, idx], rho[:, idx], moved)
    target = kinds.index("logit")
    return (rho @ a[target]).float()


def intervene(model: Model, graph: Graph, nodes: Any, scale: float = 0.0, *, features: Any = None) -> Result:
    """Scale the activations of ``nodes`` (ids or indices) by ``scale``: predicted vs actual change.

    ``features``: the transcoders the graph was built with (default: those it remembers, or
    neurons). Returns a Result over ``("predicted", "replacement", "actual_frozen", "actual_unfrozen")``.

    >>> ik.graphs.intervene(model, graph, [graph.top_nodes(1)[0].id], 0.0).scores   # doctest: +SKIP
    """
    import torch

    from interpkit.results import Result, make_provenance

    members = [graph.index(n) for n in ([nodes] if isinstance(nodes, (str, int)) else list(nodes))]
    bad = [graph.nodes[i].id for i in members if graph.nodes[i].kind not in ("neuron", "feature")]
    if bad or not members:
        raise GraphError(f"interventions act on feature or neuron nodes; got {bad or 'no nodes'}")
    features = _features_of(graph, features)
    from interpkit.graphs._replacement import replacement_changes

    predicted = predict(graph, [members], scale)
    replacement = replacement_changes(model, graph, [members], scale, features)
    frozen = actual_changes(model, graph, [members], scale, features, frozen_attention=True)
    free = actual_changes(model, graph, [members], scale, features, frozen_attention=False)
    values = torch.stack([predicted[0], replacement[0], frozen[0], free[0]])
    target = graph.nodes[graph.kinds().index("logit")]
    return Result(
        scores=values,
        dims=("estimate",),
        labels={"estimate": ["predicted", "replacement", "actual_frozen", "actual_unfrozen"]},
        metric="logit_change",
        kind="graph_intervention",
        meta={"nodes": [graph.nodes[i].id for i in members], "scale": scale, "target": target.id},
        provenance=make_provenance(model),
    )


def _features_of(graph: Graph, features: Any) -> Any:
    if features is not None:
        return features
    remembered = getattr(graph, "_features", None)
    if remembered is not None:
        return remembered
    if graph.meta.get("features", "neurons") != "neurons":
        raise GraphError("this graph was built from transcoders: pass them as features=... to intervene")
    return "neurons"


def verify(model: Model, graph: Graph, top: int = 10, *, features: Any = None) -> dict[str, Any]:
    """Ablate each of the ``top`` nodes by influence alone; compare predicted and actual changes."""
    import torch

    from interpkit.attribution import spearman

    features = _features_of(graph, features)
    chosen = graph.top_nodes(top)
    sets = [[graph.index(n)] for n in chosen]
    if not sets:
        return {"nodes": [], "note": "the graph has no feature nodes to verify"}
    from interpkit.graphs._replacement import replacement_changes

    predicted = predict(graph, sets, 0.0)
    replacement = replacement_changes(model, graph, sets, 0.0, features)
    out: dict[str, Any] = {"nodes": [n.id for n in chosen], "scale": 0.0, "predicted": predicted.tolist()}
    out["replacement"] = replacement.tolist()
    for name, frozen in (("frozen", True), ("unfrozen", False)):
        actual = actual_changes(model, graph, sets, 0.0, features, frozen_attention=frozen)
        out[f"actual_{name}"] = actual.tolist()
        for label, guess in (("", predicted), ("replacement_", replacement)):
            out[f"{label}spearman_{name}"] = spearman(guess, actual) if len(sets) > 1 else float("nan")
            out[f"{label}sign_agreement_{name}"] = float((torch.sign(guess) == torch.sign(actual)).float().mean())
    return out


def actual_changes(
    model: Model, graph: Graph, sets: list[list[int]], scale: float, features: Any, *, frozen_attention: bool
) -> torch.Tensor:
    """The real model's change of the target (demeaned) logit for each set, in batched rows."""
    import torch

    from interpkit.graphs._external import Batcher
    from interpkit.graphs._splice import Splice

    ids = torch.tensor(graph.tokens, device=model.device)[None]
    target = graph.nodes[graph.kinds().index("logit")].feature
    splice = Splice(model, ids, features, frozen_attention)
    base = splice.run(ids, [[]], graph, scale)
    clean = base[0, target] - base[0].mean()
    parts = Batcher(max(1, min(64, len(sets)))).run(
        0, len(sets), lambda a, b: splice.run(ids.expand(b - a, -1), sets[a:b], graph, scale)
    )
    logits = torch.cat(parts)
    return (logits[:, target] - logits.mean(-1) - clean).float().cpu()
