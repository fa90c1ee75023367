"""``attribute``: the attribution graph of one prompt (Ameisen et al. 2025, "Circuit Tracing").

1. One forward of the prompt records what the frozen model needs (patterns, norm inputs, MLP inputs
   and outputs, neuron activations) and the logits; :mod:`_frozen` builds the local replacement
   model and checks that it reproduces the run (``meta["replacement_check"]``, relative).
2. Logit targets: the top logits covering ``desired_logit_prob`` of the probability (at most
   ``max_n_logits``), or ``target_logits``; each as its demeaned logit (circuit-tracer's choice: a
   constant shift of all logits changes no probability).
3. Rows: the logits first, then features in order of their influence on the logits through the
   rows so far (re-ranked every few batches), until ``max_feature_nodes`` features have rows. Each
   batch of rows is one closed-form backward pass (:func:`_rows.compute_rows`); the batch size
   comes from free memory and halves on out-of-memory (the runtime's ``Batcher``).
4. Constants: the frozen model run with every source (features, errors, embeddings) removed gives
   each node's bias-only pre-activation, so incoming edges + constant + other = pre-activation.
5. The Graph, its scores (unpruned and pruned) and, unless ``verify=0``, the check of its top nodes
   by intervention in the real model (:func:`interpkit.graphs.verify`).

FLOPs: one row costs a backward through every attention layer's value/output path and one
product with each layer's active decoder rows; circuit-tracer's algorithm does the same contraction
through autograd on a replicated batch (see ``benchmarks/bench_graphs.py`` for the counts).

    >>> import interpkit as ik
    >>> from interpkit.models import boot_native
    >>> model = boot_native({"d_model": 16, "d_head": 4, "n_layers": 2, "n_ctx": 16, "n_heads": 4,
    ...     "d_vocab": 23, "d_mlp": 32, "act_fn": "gelu", "normalization_type": "LN"}, seed=0)
    >>> g = ik.graphs.attribute(model, [1, 5, 7, 2], max_feature_nodes=64, verify=0)
    >>> round(g.scores["replacement"], 6), round(g.scores["completeness"], 6)
    (1.0, 1.0)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from interpkit.graphs._frozen import GraphError

if TYPE_CHECKING:
    import torch

    from interpkit.graphs._graph import Graph
    from interpkit.models import Model


def attribute(
    model: Model,
    prompt: Any,
    features: Any = "neurons",
    *,
    max_feature_nodes: int = 2048,
    target_logits: Any = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    batch_size: int | None = None,
    update_interval: int = 4,
    row_budget_bytes: int = 256 << 20,
    skip_first_position: bool = True,
    verify: int = 10,
    dtype: Any = None,
) -> Graph:
    """The attribution graph of ``prompt`` (text or token ids) over ``features`` (see the module docstring).

    ``features``: ``"neurons"``, per-layer transcoders (``{layer: tc}``, a list) or a folder of
    them. ``dtype``: of the frozen model's arithmetic (float32 by default; float64 for exactness
    studies). ``row_budget_bytes``: memory for the stored rows; past it each row keeps only its
    largest feature entries (``meta["exact_rows"]`` says which; what the others add is in each
    node's ``other``). ``skip_first_position``: the first position's features and error are held
    as constants rather than nodes (circuit-tracer's ``zero_bos``; see ``_features``).

    >>> g = ik.graphs.attribute(model, "The capital of France is", max_feature_nodes=500)  # doctest: +SKIP
    """
    import torch

    from interpkit.graphs._assemble import assemble
    from interpkit.graphs._features import neuron_hooks, read_features, skip_weights, transcoder_map
    from interpkit.graphs._frozen import needed_hooks, read_frozen
    from interpkit.graphs._rows import Columns, RowStore

    start = time.perf_counter()
    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(max_feature_nodes, int) or max_feature_nodes < 0:
        raise GraphError(f"max_feature_nodes must be a non-negative int, got {max_feature_nodes!r}")
    if model.cfg.attn_only:
        raise GraphError(f"{model.name} is attention-only: attribution graphs need MLPs to hold the features")
    ids = _prompt_ids(model, prompt)
    neurons = isinstance(features, str) and features == "neurons"
    if not neurons:
        features = transcoder_map(model, features)
    hooks = needed_hooks(model) + (neuron_hooks(model) if neurons else [])
    store, logits = _capture(model, ids, hooks)
    frozen = read_frozen(model, store, skip_weights(model, features), dtype)
    layers = read_features(model, store, features, dtype, skip_first_position)
    embed = store[model.resolve_hook("blocks.0.hook_resid_pre")][0].to(dtype)
    check = _replacement_check(model, frozen, layers, embed, store, logits.to(dtype))
    logit_ids, probs = _logit_targets(model, logits, target_logits, max_n_logits, desired_logit_prob)
    dirs = (frozen.w_u[:, logit_ids] - frozen.w_u.mean(1, keepdim=True)).T  # demeaned unembedding columns
    cols = Columns(layers, len(ids), len(logit_ids))
    n_rows = len(logit_ids) + min(max_feature_nodes, cols.n_features)
    keep = max(1, row_budget_bytes // max(1, (4 + torch.finfo(dtype).bits // 8) * n_rows))
    store_rows = RowStore(cols, keep, torch.float64 if dtype == torch.float64 else torch.float32)
    visited, batcher = _visit(
        model, frozen, cols, embed, dirs, probs, store_rows, max_feature_nodes, batch_size, update_interval
    )
    timing = {"rows_s": time.perf_counter() - start}
    graph = assemble(model, ids, frozen, cols, store_rows, visited, logit_ids, probs, logits.to(dtype), embed)
    graph._features = None if neurons else features  # for interventions; not serialised
    graph.meta.update(
        features="neurons" if neurons else "transcoders",
        n_active_features=cols.n_features,
        exact_rows=store_rows.exact,
        skip_first_position=skip_first_position,
        replacement_check=check,
        batch_rows=batcher.rows,
        oom_halvings=batcher.halvings,
        dtype=str(dtype).removeprefix("torch."),
    )
    graph.scores = _scores(graph)
    if verify:
        from interpkit.graphs._intervene import verify as run_verify

        graph.verification = run_verify(model, graph, top=verify, features=features)
    graph.meta["seconds"] = {**timing, "total_s": time.perf_counter() - start}
    return graph


def _scores(graph: Graph) -> dict[str, float]:
    full = graph.graph_scores()
    pruned = graph.prune().graph_scores()
    return {**full, "pruned_replacement": pruned["replacement"], "pruned_completeness": pruned["completeness"]}


def _prompt_ids(model: Model, prompt: Any) -> torch.Tensor:
    if isinstance(prompt, str):
        ids = model.to_tokens(prompt)
    else:
        ids = model.check_tokens(prompt)
    if ids.shape[0] != 1:
        raise GraphError(f"an attribution graph is of one prompt; got a batch of {ids.shape[0]}")
    if ids.shape[1] < 1:
        raise GraphError("the prompt has no tokens")
    return ids[0]


def _capture(model: Model, ids: torch.Tensor, names: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward of the prompt: {resolved hook: activation} and the last position's logits."""
    import torch

    from interpkit.hooks import hooks

    store: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> None:
        store[hook.name] = act.detach().clone()

    canonical = sorted({model.resolve_hook(n) for n in names})
    with torch.inference_mode(), hooks(model, fwd=[(n, keep) for n in canonical]):
        logits = model.bridge(ids[None].to(model.device))
    missing = [n for n in canonical if n not in store]
    if missing:
        raise GraphError(f"hook points {missing[:4]} did not fire on {model.name}: its architecture is not supported")
    return store, logits[0, -1].detach().to(model.device)


def _logit_targets(
    model: Model, logits: torch.Tensor, target_logits: Any, max_n: int, mass: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the logit nodes and their probabilities."""
    import torch

    probs = torch.softmax(logits.double(), -1).float().cpu()
    if target_logits is None:
        top_p, top_i = torch.topk(probs, min(max_n, probs.shape[0]))
        cut = int(torch.searchsorted(torch.cumsum(top_p, 0), torch.tensor(mass))) + 1
        return top_i[:cut], top_p[:cut]
    items = [target_logits] if isinstance(target_logits, (str, int)) else list(target_logits)
    ids = []
    for item in items:
        if isinstance(item, str):
            tok = model.to_tokens(item, prepend_bos=False)[0]
            if tok.numel() != 1:
                raise GraphError(f"target logit {item!r} is {tok.numel()} tokens; give single tokens or ids")
            item = int(tok[0])
        if not 0 <= int(item) < model.cfg.d_vocab:
            raise GraphError(f"target logit id {item} is outside the vocabulary [0, {model.cfg.d_vocab})")
        ids.append(int(item))
    if not ids:
        raise GraphError("target_logits is empty")
    index = torch.tensor(ids)
    return index, probs[index]


def _visit(
    model: Model,
    frozen: Any,
    cols: Any,
    embed: torch.Tensor,
    dirs: torch.Tensor,
    probs: torch.Tensor,
    rows: Any,
    max_features: int,
    batch_size: int | None,
    update_interval: int,
) -> tuple[torch.Tensor, Any]:
    """Compute the logit rows, then feature rows in influence order; returns the visited mask."""
    import torch

    from interpkit.graphs._external import Batcher
    from interpkit.graphs._rows import compute_rows

    batcher = Batcher(batch_size or _auto_rows(model, cols, frozen))

    def run(codes: torch.Tensor) -> None:
        def chunk(a: int, b: int) -> None:
            with torch.no_grad():
                feats, rest = compute_rows(frozen, cols, embed, dirs, codes[a:b])
            rows.add(codes[a:b], feats, rest)

        batcher.run(0, len(codes), chunk)

    run(-torch.arange(len(probs)) - 1)
    visited = torch.zeros(cols.n_features, dtype=torch.bool)
    target = min(max_features, cols.n_features)
    while int(visited.sum()) < target:
        if target == cols.n_features:
            pending = (~visited).nonzero()[:, 0]
        else:
            score = rows.influence(probs)[: cols.n_features].masked_fill(visited, -1.0)
            size = min(update_interval * batcher.rows, target - int(visited.sum()))
            pending = torch.argsort(score, descending=True, stable=True)[:size]
        run(pending)
        visited[pending] = True
    return visited, batcher


def _auto_rows(model: Model, cols: Any, frozen: Any) -> int:
    """Rows per backward pass: a quarter of free memory (at most 512 MiB) over a generous per-row
    estimate (the gradient at every layer, one layer's decoder products, the dense row and its copies)."""
    from interpkit.graphs._external import free_memory_bytes

    item = frozen.w_u.element_size()
    widest = max([int(lf.idx.unique().numel()) for lf in cols.layers if lf.n] or [1])
    # gradients at every layer's output and a seed per layer a row may start in, plus temporaries
    per_row = cols.n_pos * (model.cfg.d_model * (2 * frozen.n_layers + 6) + widest) * item + cols.total * 16
    budget = min(free_memory_bytes(model.device) // 4, 512 << 20)
    return int(max(1, min(512, budget // per_row)))


def _replacement_check(
    model: Model,
    frozen: Any,
    layers: list[Any],
    embed: torch.Tensor,
    store: dict[str, torch.Tensor],
    logits: torch.Tensor,
) -> float:
    """How far the frozen model with every source in place misses the run (relative); refuses > 1e-3."""
    import torch

    mlp_out = []
    for lf in layers:
        out = torch.zeros_like(embed) if lf.error is None else lf.error.clone()
        if lf.n:
            out = out + lf.write(embed.shape[0]).to(out)
        out = out if lf.held is None else out + lf.held
        mlp_out.append(out if lf.dec_bias is None else out + lf.dec_bias)
    with torch.no_grad():
        streams = frozen.forward(embed, mlp_out)
        ours = frozen.logits(streams["final"][0])[-1]
    c = model.cfg
    real = [store[model.resolve_hook(f"blocks.{i}.hook_resid_pre")][0] for i in range(c.n_layers)]
    real.append(store[model.resolve_hook(f"blocks.{c.n_layers - 1}.hook_resid_post")][0])
    pairs = [*zip(streams["pre"] + streams["final"], real, strict=True), (ours, logits)]
    gap = max(float((a - b.to(a)).norm() / b.to(a).norm().clamp_min(1e-12)) for a, b in pairs)
    if gap > 1e-3:
        raise GraphError(
            f"the frozen replacement of {model.name} misses its run by {gap:.2e} (relative): this architecture "
            "writes to the residual stream in a way attribution graphs do not model"
        )
    return gap
