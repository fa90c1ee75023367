"""Influence, pruning and the two graph scores, as pure functions of a dense adjacency matrix.

Ameisen et al. 2025, "Circuit Tracing", sections 4.2 and 5 (and circuit-tracer's published
algorithm): rows are targets and columns sources; each row is normalised to absolute values
summing to one, and a node's influence on the output is the sum over all paths, ``w (Â + Â² + ...)``
with ``w`` the logit nodes' probabilities (a finite sum: the graph is acyclic). Pruning keeps the
nodes carrying ``node_threshold`` of the total influence (tokens and logits always), then the
edges carrying ``edge_threshold`` of the influence-weighted edge mass, then drops feature and
error nodes left without outputs and features left without inputs, until nothing changes. The
replacement score is the share of influence reaching the tokens rather than the error nodes; the
completeness score the influence-weighted share of every node's input that is not error.

    >>> import torch
    >>> a = torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0]])   # 0 -> 1 -> 2 (2 is the logit)
    >>> influence(normalise(a), torch.tensor([0.0, 0, 1]))
    tensor([1., 1., 0.])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def normalise(a: torch.Tensor) -> torch.Tensor:
    """``|a|`` with each row scaled to sum to one (rows without inputs stay zero)."""
    m = a.abs()
    return m / m.sum(1, keepdim=True).clamp_min(1e-10)


def influence(normalised: torch.Tensor, weights: torch.Tensor, max_iter: int = 10_000) -> torch.Tensor:
    """``weights (Â + Â² + ...)``: every node's total influence on the weighted nodes."""
    from interpkit.graphs._frozen import GraphError

    step = weights.to(normalised) @ normalised
    total = step.clone()
    for _ in range(max_iter):
        if not bool(step.any()):
            return total
        step = step @ normalised
        total += step
    raise GraphError(f"influence did not converge in {max_iter} steps: the adjacency has a cycle")


def threshold_value(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The score at which the largest scores first add up to ``fraction`` of the total."""
    import torch

    ordered = torch.sort(scores.flatten(), descending=True).values
    cumulative = torch.cumsum(ordered, 0) / ordered.sum().clamp_min(1e-30)
    at = min(int(torch.searchsorted(cumulative, torch.tensor(fraction, dtype=cumulative.dtype))), len(ordered) - 1)
    return ordered[at]


def prune_masks(
    a: torch.Tensor, weights: torch.Tensor, kinds: list[str], node_threshold: float, edge_threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(node_mask, edge_mask)`` of the pruned graph (see the module docstring)."""
    import torch

    from interpkit.graphs._frozen import GraphError

    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise GraphError(f"{name} must lie in [0, 1], got {value}")
    kind = list(kinds)
    always = torch.tensor([k in ("embedding", "logit") for k in kind])
    feature = torch.tensor([k in ("feature", "neuron") for k in kind])
    inner = ~always  # feature and error nodes
    scores = influence(normalise(a), weights)
    node_mask = (scores >= threshold_value(scores, node_threshold)) | always
    pruned = a * node_mask[:, None] * node_mask[None, :]
    norm = normalise(pruned)
    edge_scores = norm * (influence(norm, weights) + weights.to(norm))[:, None]
    edge_mask = edge_scores >= threshold_value(edge_scores, edge_threshold)
    edge_mask &= edge_scores > 0
    while True:
        before = node_mask.clone()
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        node_mask &= ~inner | edge_mask.any(0)  # feature and error nodes need an output
        node_mask &= ~feature | edge_mask.any(1)  # features need an input
        if bool((node_mask == before).all()):
            return node_mask, edge_mask


def scores(a: torch.Tensor, weights: torch.Tensor, kinds: list[str]) -> dict[str, float]:
    """``replacement`` and ``completeness`` of the graph (1 each when it has no error nodes)."""
    import torch

    error = torch.tensor([k == "error" for k in kinds])
    token = torch.tensor([k == "embedding" for k in kinds])
    norm = normalise(a)
    node_influence = influence(norm, weights)
    from_tokens = float(node_influence[token].sum())
    from_errors = float(node_influence[error].sum())
    replacement = from_tokens / (from_tokens + from_errors) if from_tokens + from_errors > 0 else float("nan")
    non_error = 1 - norm[:, error].sum(1)
    output = node_influence + weights.to(node_influence)
    completeness = float((non_error * output).sum() / output.sum().clamp_min(1e-30))
    return {"replacement": replacement, "completeness": completeness}
