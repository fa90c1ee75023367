"""Run a model with only a circuit's edges live: every other edge carries its ablated value.

Because the residual stream is a sum of component outputs, each receiver input ``v`` (a head's
query, key or value input, an MLP's input, the final residual read by the unembedding) is
``x_v = Σ_u out_u + biases`` over the senders ``u`` that write before it. Ablating the edge
``u -> v`` alone replaces ``out_u`` by its ablated value *in v's input only*, so

    x_v  <-  x_v - Σ_{u : (u, v) not in the circuit} (out_u(this run) - out_u(ablation source))

(Hanna et al. 2024, "Have faith in faithfulness", §3; auto-circuit's patching, Miller et al.
2024). ``out_u(this run)`` is the sender's output in this very forward: a patch upstream of u
changes u's inputs and so its output, and the edges leaving u must carry that changed output.
The engine captures every sender's output with a forward hook as the forward proceeds
(``embed`` at ``blocks.0.hook_resid_pre``, head h at ``attn.hook_z @ W_O[h]``, MLPs at
``hook_mlp_out``) into one ``(rows, sender, pos, d_model)`` buffer of differences to the
source, and each receiver hook subtracts one batched matmul of the rows' removed edges against
that buffer (a layer's q, k and v inputs read the same senders and share one). ``split_inputs`` gives every head its own q/k/v input, so edges into different heads of
one layer differ; under grouped-query attention keys and values are per KV head. Where the
bridge has no per-head input hooks (the attention class of interpkit's native toys), the change
is applied after the projection instead, at ``attn.hook_q/k/v`` as ``change @ W_Q[h]`` etc.,
which is exact for attention-only models with no norm before attention (and refused otherwise).

The ablation sources are those of :mod:`interpkit.patching._sources`, applied to sender
outputs: ``counterfactual`` the paired corrupt prompt's outputs, ``mean`` the mean over the
task's corrupt prompts (per position), ``zero`` zeros, ``resample`` another example's clean
outputs (a seeded derangement). With every edge removed and ``counterfactual``, each input is
the corrupt run's input, so the run *is* the corrupt run.

Many circuits are rows of one batched forward: a row is (circuit, example), the rows' removed
edges are a ``(rows, senders, receivers)`` tensor, and the rows are split into as few forwards
as memory allows (halving on out-of-memory). The loop is over layers, never over edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.circuits._errors import CircuitError
from interpkit.graph import build_graph, mode_context, receiver_mode, sender_hooks, sender_outputs
from interpkit.metrics import final_logits
from interpkit.metrics import get as get_metric
from interpkit.results import Result, make_provenance
from interpkit.runtime import (
    Rows,
    ablation_source,
    auto_rows,
    capture,
    check_mode,
    free_memory_bytes,
    metric_rows,
)

if TYPE_CHECKING:
    import torch

    from interpkit.circuits._circuit import Circuit
    from interpkit.graph import Graph
    from interpkit.models import Model
    from interpkit.tasks import Task


def as_masks(model: Model, circuits: Any, graph: Graph | None = None) -> torch.Tensor:
    """``(n_circuits, n_senders, n_receivers)`` bool from a mask, a Circuit or a list of Circuits."""
    import torch

    from interpkit.circuits._circuit import Circuit

    if isinstance(circuits, Circuit):
        circuits = [circuits]
    if isinstance(circuits, Sequence) and not isinstance(circuits, torch.Tensor):
        for c in circuits:
            if not isinstance(c, Circuit):
                raise CircuitError(f"expected Circuit objects or an edge-mask tensor, got {type(c).__name__}")
            c.check_model(model)
        graph = graph or (circuits[0].graph if circuits else build_graph(model))
        other = [i for i, c in enumerate(circuits) if c.graph.hash() != graph.hash()]
        if other:
            raise CircuitError(
                f"circuits {other} are over another graph than circuit 0 (or the graph given): "
                "evaluate circuits of different graphs in separate calls"
            )
        masks = torch.stack([c.mask() for c in circuits]) if circuits else torch.zeros(0, *graph.mask.shape)
    else:
        graph = graph or build_graph(model)
        masks = circuits
    masks = masks.bool()
    if masks.ndim == 2:
        masks = masks[None]
    if tuple(masks.shape[1:]) != tuple(graph.mask.shape):
        raise CircuitError(
            f"edge masks have shape {tuple(masks.shape)}; {model.name} needs (n_circuits, {len(graph.senders)}, "
            f"{len(graph.receivers)}) (senders x receivers of interpkit.graph.build_graph)"
        )
    return masks


class EdgeRunner:
    """Sources and baselines of one (model, task, ablation, graph), to evaluate many circuits.

    >>> runner = EdgeRunner(model, task, "mean")                       # doctest: +SKIP
    >>> values = runner(masks)            # (n_circuits, n_examples)    # doctest: +SKIP
    """

    def __init__(
        self,
        model: Model,
        task: Task,
        ablation: str = "counterfactual",
        *,
        metric: str | None = None,
        seed: int = 0,
        graph: Graph | None = None,
    ) -> None:
        import torch

        check_mode("noise", ablation)
        self.model, self.ablation = model, ablation
        self.metric = metric or task.metric
        self.fn = get_metric(self.metric)
        self.task = task = task.to(model.device)
        self.graph = graph or build_graph(model)
        self.mode = receiver_mode(model, CircuitError)
        names = sender_hooks(self.graph)
        clean_acts, clean_logits = capture(model, task.clean, names)
        corrupt_acts, corrupt_logits = capture(model, task.corrupt, names)
        with torch.inference_mode():
            clean_out = sender_outputs(model, self.graph, clean_acts)
            corrupt_out = sender_outputs(model, self.graph, corrupt_acts)
            self.source = ablation_source(ablation, clean_out, corrupt_out, task, seed)  # (batch or 1, pos, S, d)
            self.clean_logprobs = final_logits(clean_logits, task.answer_pos).float().log_softmax(-1)
            self.clean_values = self._metric(final_logits(clean_logits, task.answer_pos), slice(None))
            self.corrupt_values = self._metric(final_logits(corrupt_logits, task.answer_pos), slice(None))

    def _metric(self, final: torch.Tensor, ex: Any) -> torch.Tensor:
        t = self.task
        return self.fn(final, t.answer[ex], t.wrong[ex], self.clean_logprobs[ex]).float()

    def __call__(self, masks: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """Per-example metric ``(n_circuits, n_examples)`` with only each mask's edges live."""
        import torch

        masks = as_masks(self.model, masks, self.graph).to(self.model.device)
        n_ex = len(self.task)
        out = torch.zeros(masks.shape[0], n_ex, device=self.model.device)
        if masks.shape[0] == 0:
            return out
        dtype = self.model.dtype if self.model.dtype.is_floating_point else torch.float32
        removed = (self.graph.mask.to(masks.device)[None] & ~masks).to(dtype)  # (C, S, R)
        n_circuits = masks.shape[0]
        items = [c for c in range(n_circuits) for _ in range(n_ex)]

        def hooks(a: int, b: int, ex: torch.Tensor) -> list[tuple[str, Any]]:
            idx = torch.tensor(items[a:b], device=masks.device)
            src = self.source[ex] if self.source.shape[0] > 1 else self.source
            return self._hooks(removed[idx], src, b - a)

        rows = Rows(None, items, list(range(n_ex)) * n_circuits, self.task.clean, hooks)
        with mode_context(self.model, self.mode):
            metric_rows(self.model, self.task, [rows], out, metric=self.metric, clean_logprobs=self.clean_logprobs,
                        batch_size=batch_size or self._auto_rows(len(self.graph.senders)))  # fmt: skip
        return out.float()

    def _auto_rows(self, n_senders: int) -> int:
        """The engine's rows per forward, capped so the (rows, pos, sender, d_model) buffers fit."""
        c = self.model.cfg
        itemsize = self.source.element_size()
        per_row = self.task.n_pos * n_senders * c.d_model * itemsize * 3  # buffer + matmul temporaries
        by_memory = free_memory_bytes(self.model.device) // 4 // max(per_row, 1)
        return int(max(1, min(auto_rows(self.model, self.task.n_pos), by_memory)))

    def _hooks(self, removed: torch.Tensor, src: torch.Tensor, n: int) -> list[tuple[str, Any]]:
        """Sender-capturing and receiver-patching hooks for ``n`` rows; ``removed`` (n, S, R)."""
        import torch

        model, graph = self.model, self.graph
        n_pos, d_model = self.task.n_pos, src.shape[3]
        # (rows, sender, pos, d_model): the senders before a receiver are one contiguous block, so each
        # receiver's change is one batched matmul over it, with no transposed copy of the buffer
        delta = torch.zeros(n, src.shape[2], n_pos, d_model, dtype=src.dtype, device=src.device)
        hooks: list[tuple[str, Any]] = []

        def n_before(group: Any) -> int:  # senders written before this receiver reads
            column = graph.mask[:, group.lo]
            return int(column.nonzero().max()) + 1 if bool(column.any()) else 0

        # receivers reading the same senders (a layer's q, k and v) share one matmul, computed by the first to fire
        spans: dict[int, tuple[int, int]] = {}
        for g in graph.receiver_groups:
            lo, hi = spans.get(n_before(g), (g.lo, g.hi))
            spans[n_before(g)] = (min(lo, g.lo), max(hi, g.hi))
        changes: dict[int, torch.Tensor] = {}

        # delta, src and removed sit on model.device; a split model's hooks fire on their layer's device
        def capture_senders(group: Any) -> Any:
            def hook(act: torch.Tensor, hook: Any) -> None:  # this run's output minus the ablated output
                out = group.kind.outputs(model, group.layer, act).to(delta.device)
                delta[:, group.lo : group.hi] = (out - src[:, :, group.lo : group.hi]).transpose(1, 2)

            return hook

        def patch_receivers(group: Any) -> Any:
            k = n_before(group)
            lo, hi = spans[k]

            def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
                if k not in changes:
                    changes.clear()  # one layer's change at a time
                    r = removed[:, :k, lo:hi].transpose(1, 2).to(delta.dtype)  # (rows, R, senders)
                    flat = torch.bmm(r, delta[:, :k].flatten(2))  # (rows, R, pos * d_model)
                    changes[k] = flat.view(n, hi - lo, n_pos, d_model).transpose(1, 2)
                change = changes[k][:, :, group.lo - lo : group.hi - lo]
                return group.kind.add(model, group.layer, act, -change, self.mode)

            return hook

        for g in graph.receiver_groups:
            hooks.append((g.kind.hook(model, g.layer, self.mode), patch_receivers(g)))
        for g in graph.sender_groups:
            hooks.append((g.kind.hook(g.layer), capture_senders(g)))
        return hooks


def run_with_edges(
    model: Model,
    task: Task,
    edge_masks: torch.Tensor | Circuit | Sequence[Circuit],
    ablation: str = "counterfactual",
    *,
    metric: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> Result:
    """Per-example metric of the clean run with only the circuits' edges live: a Result ``(circuit, example)``.

    ``edge_masks``: ``(n_circuits, n_senders, n_receivers)`` bool (True = edge kept), one
    ``(n_senders, n_receivers)`` mask, a Circuit or a list of Circuits. Every edge of the graph
    that a mask leaves out carries its ``ablation`` value (see the module docstring).

    >>> import interpkit as ik
    >>> from interpkit.circuits import Circuit, run_with_edges
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=4)
    >>> run_with_edges(model, task, [Circuit.full(model), Circuit(model, [])]).scores.shape
    torch.Size([2, 4])
    """
    from interpkit.circuits._circuit import Circuit

    graph = edge_masks.graph if isinstance(edge_masks, Circuit) else None
    if isinstance(edge_masks, Sequence) and edge_masks and isinstance(edge_masks[0], Circuit):
        graph = edge_masks[0].graph
    runner = EdgeRunner(model, task, ablation, metric=metric, seed=seed, graph=graph)
    masks = as_masks(model, edge_masks, runner.graph)
    values = runner(masks, batch_size=batch_size).cpu()
    return Result(
        scores=values,
        dims=("circuit", "example"),
        labels={"circuit": [f"{int(m.sum())} edges" for m in masks], "example": [str(i) for i in range(len(task))]},
        metric=runner.metric,
        clean_value=float(runner.clean_values.mean()),
        corrupt_value=float(runner.corrupt_values.mean()),
        kind="run_with_edges",
        meta={"ablation": ablation, "n_edges": [int(m.sum()) for m in masks], "n_edges_graph": runner.graph.n_edges},
        provenance=make_provenance(model, task, seed),
    )
