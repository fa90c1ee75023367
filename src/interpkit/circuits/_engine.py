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
``hook_mlp_out``) into one ``(rows, pos, sender, d_model)`` buffer of differences to the
source, and each receiver hook subtracts one einsum of that buffer against the rows' removed
edges. ``split_inputs`` gives every head its own q/k/v input, so edges into different heads of
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

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.attribution._endpoints import _sender_names, sender_outputs, split_inputs, supports_split_inputs
from interpkit.attribution.graph import build_graph
from interpkit.circuits._errors import CircuitError
from interpkit.metrics import final_logits
from interpkit.metrics import get as get_metric
from interpkit.patching._engine import (
    auto_rows,
    capture,
    final_hook,
    forward_final,
    free_memory_bytes,
    run_chunked,
)
from interpkit.patching._sources import ablation_source, check_mode

if TYPE_CHECKING:
    import torch

    from interpkit.circuits._circuit import Circuit
    from interpkit.models import Model
    from interpkit.tasks import Task


def as_masks(model: Model, circuits: Any) -> torch.Tensor:
    """``(n_circuits, n_senders, n_receivers)`` bool from a mask, a Circuit or a list of Circuits."""
    import torch

    from interpkit.circuits._circuit import Circuit

    graph = build_graph(model)
    if isinstance(circuits, Circuit):
        circuits = [circuits]
    if isinstance(circuits, Sequence) and not isinstance(circuits, torch.Tensor):
        for c in circuits:
            if not isinstance(c, Circuit):
                raise CircuitError(f"expected Circuit objects or an edge-mask tensor, got {type(c).__name__}")
            c.check_model(model)
        masks = torch.stack([c.mask() for c in circuits]) if circuits else torch.zeros(0, *graph.mask.shape)
    else:
        masks = circuits
    masks = masks.bool()
    if masks.ndim == 2:
        masks = masks[None]
    if tuple(masks.shape[1:]) != tuple(graph.mask.shape):
        raise CircuitError(
            f"edge masks have shape {tuple(masks.shape)}; {model.name} needs (n_circuits, {len(graph.senders)}, "
            f"{len(graph.receivers)}) (senders x receivers of ik.attribution.graph.build_graph)"
        )
    return masks


class EdgeRunner:
    """Sources and baselines of one (model, task, ablation), to evaluate many circuits.

    >>> runner = EdgeRunner(model, task, "mean")                       # doctest: +SKIP
    >>> values = runner(masks)            # (n_circuits, n_examples)    # doctest: +SKIP
    """

    def __init__(
        self, model: Model, task: Task, ablation: str = "counterfactual", *, metric: str | None = None, seed: int = 0
    ) -> None:
        import torch

        check_mode("noise", ablation)
        self.model, self.ablation = model, ablation
        self.metric = metric or task.metric
        self.fn = get_metric(self.metric)
        self.task = task = task.to(model.device)
        self.graph = build_graph(model)
        self.split = supports_split_inputs(model)
        if not self.split and (model.cfg.normalization is not None or not model.cfg.attn_only):
            raise CircuitError(
                f"{model.name}'s bridge has no per-head q/k/v input hooks (set_use_split_qkv_input is unsupported "
                "for its attention class), so edges into single heads can only be patched in attention-only "
                "models without a norm before attention (where the q/k/v change is the projected input change)"
            )
        names = _sender_names(model)
        clean_acts, clean_logits = capture(model, task.clean, names)
        corrupt_acts, corrupt_logits = capture(model, task.corrupt, names)
        with torch.inference_mode():
            clean_out, corrupt_out = sender_outputs(model, clean_acts), sender_outputs(model, corrupt_acts)
            self.source = ablation_source(ablation, clean_out, corrupt_out, task, seed)  # (batch or 1, pos, S, d)
            self.clean_logprobs = final_logits(clean_logits, task.answer_pos).float().log_softmax(-1)
            self.clean_values = self._metric(final_logits(clean_logits, task.answer_pos), slice(None))
            self.corrupt_values = self._metric(final_logits(corrupt_logits, task.answer_pos), slice(None))

    def _metric(self, final: torch.Tensor, ex: Any) -> torch.Tensor:
        t = self.task
        return self.fn(final, t.answer[ex], t.wrong[ex], self.clean_logprobs[ex]).float()

    def __call__(self, masks: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Per-example metric ``(n_circuits, n_examples)`` with only each mask's edges live."""
        import torch

        masks = as_masks(self.model, masks).to(self.model.device)
        n_ex = len(self.task)
        n_rows = masks.shape[0] * n_ex
        if n_rows == 0:
            return torch.zeros(masks.shape[0], n_ex, device=self.model.device)
        dtype = self.model.dtype if self.model.dtype.is_floating_point else torch.float32
        removed = (self.graph.mask.to(masks.device)[None] & ~masks).to(dtype)  # (C, S, R)
        n_senders = len(self.graph.senders)
        rows = batch_size or self._auto_rows(n_senders)

        def run(start: int, stop: int) -> torch.Tensor:
            idx = torch.arange(start, stop, device=masks.device)
            ex = idx % n_ex
            src = self.source[ex] if self.source.shape[0] > 1 else self.source
            fwd = self._hooks(removed[idx // n_ex], src, stop - start)
            final = forward_final(self.model, self.task.clean[ex], None, self.task.answer_pos[ex], fwd)
            return self._metric(final, ex)

        with torch.inference_mode(), split_inputs(self.model) if self.split else contextlib.nullcontext():
            values = run_chunked(n_rows, rows, run)
        return torch.cat(values).reshape(masks.shape[0], n_ex)

    def _auto_rows(self, n_senders: int) -> int:
        """The engine's rows per forward, capped so the (rows, pos, sender, d_model) buffers fit."""
        c = self.model.cfg
        itemsize = self.source.element_size()
        per_row = self.task.n_pos * n_senders * c.d_model * itemsize * 3  # buffer + einsum temporaries
        by_memory = free_memory_bytes(self.model.device) // 4 // max(per_row, 1)
        return int(max(1, min(auto_rows(self.model, self.task.n_pos), by_memory)))

    def _hooks(self, removed: torch.Tensor, src: torch.Tensor, n: int) -> list[tuple[str, Any]]:
        """Sender-capturing and receiver-patching hooks for ``n`` rows; ``removed`` (n, S, R)."""
        import torch

        model, c = self.model, self.model.cfg
        delta = torch.zeros(n, self.task.n_pos, src.shape[2], src.shape[3], dtype=src.dtype, device=src.device)
        mlp = 0 if c.attn_only else 1
        hooks: list[tuple[str, Any]] = []

        # delta, src and removed sit on model.device; a split model's hooks fire on their layer's device
        def put(lo: int, hi: int, out: torch.Tensor) -> None:
            delta[:, :, lo:hi] = out.to(delta.device) - src[:, :, lo:hi]  # this run's output minus the ablated output

        def patch_heads(lo: int, n_before: int) -> Any:
            def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:  # act (rows, pos, head, d_model)
                r = removed[:, :n_before, lo : lo + act.shape[2]]
                return act - torch.einsum("bpsd,bsh->bphd", delta[:, :, :n_before], r).to(act.device, act.dtype)

            return hook

        def patch_one(r_index: int, n_before: int) -> Any:
            def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:  # act (rows, pos, d_model)
                r = removed[:, :n_before, r_index]
                return act - torch.einsum("bpsd,bs->bpd", delta[:, :, :n_before], r).to(act.device, act.dtype)

            return hook

        def patch_projected(lo: int, n_before: int, w: torch.Tensor) -> Any:
            # No per-head input hook: the input change, projected by W_Q/W_K/W_V, is the q/k/v change
            # (exact only without a norm before attention, which EdgeRunner checks).
            def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:  # act (rows, pos, head, d_head)
                r = removed[:, :n_before, lo : lo + act.shape[2]]
                change = torch.einsum("bpsd,bsh->bphd", delta[:, :, :n_before], r)
                return act - torch.einsum("bphd,hde->bphe", change.to(w.device, w.dtype), w).to(act.device, act.dtype)

            return hook

        hooks.append(("blocks.0.hook_resid_pre", lambda act, hook: put(0, 1, act[:, :, None])))
        s, r = 1, 0  # running sender / receiver offsets in graph order
        for layer in range(c.n_layers):
            attn = model.bridge.blocks[layer].attn
            offsets = {"q": r, "k": r + c.n_heads, "v": r + c.n_heads + c.n_kv_heads}
            for kind, lo in offsets.items():
                if self.split:
                    hooks.append((f"blocks.{layer}.hook_{kind}_input", patch_heads(lo, s)))
                else:
                    w = getattr(attn, f"W_{kind.upper()}")  # (head, d_model, d_head)
                    hooks.append((f"blocks.{layer}.attn.hook_{kind}", patch_projected(lo, s, w)))
            w_o = attn.W_O  # (head, d_head, d_model)

            def heads_out(act: torch.Tensor, hook: Any, lo: int = s, w_o: Any = w_o) -> None:
                put(lo, lo + c.n_heads, torch.einsum("bphd,hdm->bphm", act.to(w_o.device, w_o.dtype), w_o))

            hooks.append((f"blocks.{layer}.attn.hook_z", heads_out))
            r += c.n_heads + 2 * c.n_kv_heads
            s += c.n_heads
            if mlp:
                hooks.append((f"blocks.{layer}.hook_mlp_in", patch_one(r, s)))
                hooks.append((f"blocks.{layer}.hook_mlp_out", lambda act, hook, lo=s: put(lo, lo + 1, act[:, :, None])))
                r += 1
                s += 1
        hooks.append((final_hook(model), patch_one(r, s)))
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
) -> torch.Tensor:
    """Per-example metric ``(n_circuits, n_examples)`` of the clean run with only the circuits' edges live.

    ``edge_masks``: ``(n_circuits, n_senders, n_receivers)`` bool (True = edge kept), one
    ``(n_senders, n_receivers)`` mask, a Circuit or a list of Circuits. Every edge of the graph
    that a mask leaves out carries its ``ablation`` value (see the module docstring).

    >>> import interpkit as ik
    >>> from interpkit.circuits import Circuit, run_with_edges
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=4)
    >>> run_with_edges(model, task, [Circuit.full(model), Circuit(model, [])]).shape
    torch.Size([2, 4])
    """
    return EdgeRunner(model, task, ablation, metric=metric, seed=seed)(edge_masks, batch_size)
