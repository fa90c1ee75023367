"""ACDC: automatic circuit discovery by removing edges one at a time (Conmy et al. 2023).

Algorithm 1 of "Towards Automated Circuit Discovery for Mechanistic Interpretability":
start from the full graph H = G; visit the receivers in reverse topological order (``logits``
first); for each edge u -> v into the receiver (latest sender first), remove it from H, run the
model with every edge outside H ablated, and keep it removed if the metric got worse by less
than ``tau``:

* with the default metric ``"kl"`` (KL divergence of the answer-position distribution from the
  full model's), the test is ACDC's ``KL(H without e) - KL(H) < tau``: a removal that lowers the
  KL is always accepted;
* with a task metric (logit difference, log-prob, ...), ``|m(H without e) - m(H)| < tau``.

A receiver whose component has no remaining path to ``logits`` loses its incoming edges without
a test: its output is ablated on every edge that leaves it, so its inputs cannot matter.

The decisions are sequential (each test sees the removals before it), but one receiver's tests
share forwards: a forward evaluates, as rows, H, H without each candidate edge (valid while the
tests keep their edges) and H without each prefix of the candidates (valid while they remove
them). The walk uses the rows that stay valid and starts a new forward only where a run of
keeps turns into a removal or back, so the result is exactly the sequential algorithm's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from interpkit.circuits._circuit import Circuit, feeds, reaches_logits
from interpkit.circuits._engine import EdgeRunner

if TYPE_CHECKING:
    from interpkit.graph import Graph
    from interpkit.models import Model
    from interpkit.tasks import Task


def acdc(
    model: Model,
    task: Task,
    *,
    tau: float,
    metric: str | None = None,
    ablation: str = "counterfactual",
    seed: int = 0,
    batch_size: int | None = None,
    graph: Graph | None = None,
) -> Circuit:
    """ACDC's circuit for ``task`` at threshold ``tau``; each kept edge scores the metric change its removal caused.

    >>> circ = acdc(model, task, tau=0.05)                            # doctest: +SKIP
    """
    import torch

    metric = metric or "kl"
    runner = EdgeRunner(model, task, ablation, metric=metric, seed=seed, graph=graph)
    graph = runner.graph
    fed = feeds(graph)
    current = graph.mask.clone()
    effect = torch.zeros(graph.mask.shape)  # metric change measured when each edge was tried
    n_forwards = 0
    signed = metric == "kl"

    def small(new: float, ref: float) -> bool:
        change = new - ref if signed else abs(new - ref)
        return change < tau

    for r in reversed(range(len(graph.receivers))):
        if not bool(reaches_logits(graph, current, fed)[r]):
            current[:, r] = False
            continue
        senders = [s for s in reversed(range(len(graph.senders))) if bool(current[s, r])]
        i = 0
        while i < len(senders):
            cand = torch.tensor(senders[i:])
            k = len(cand)
            singles = current[None].repeat(k, 1, 1)
            singles[torch.arange(k), cand, r] = False
            prefixes = current[None].repeat(k, 1, 1)
            prefixes[:, cand, r] = ~(torch.arange(k)[:, None] >= torch.arange(k)[None, :]) & prefixes[:, cand, r]
            values = runner(torch.cat([current[None], singles, prefixes]), batch_size=batch_size).mean(1).double().cpu()
            n_forwards += 1
            base, single, prefix = float(values[0]), values[1 : 1 + k], values[1 + k :]
            mode = None
            j = 0
            while j < k:
                if mode == "remove":
                    ref, new = float(prefix[j - 1]), float(prefix[j])
                else:
                    ref, new = base, float(single[j])
                decision = "remove" if small(new, ref) else "keep"
                effect[int(cand[j]), r] = new - ref
                if decision == "remove":
                    current[int(cand[j]), r] = False
                j += 1
                if mode is not None and decision != mode:
                    break  # the next test needs a circuit this forward did not evaluate
                mode = decision
            i += j
    meta = {
        "select": "acdc",
        "method": "acdc",
        "tau": tau,
        "metric": metric,
        "ablation": ablation,
        "task": task.name,
        "n_forwards": n_forwards,
    }
    return Circuit.from_mask(model, current, effect, meta).prune()
