"""The literal reference for attribution-graph edges: one perturbation per source, in the real model.

Each source node (a neuron, a transcoder latent, an error node, a token embedding) is removed from
the model's run, one per batch row: a feature's write (``activation * decoder row``) or an error is
subtracted from its layer's MLP output, an embedding from the residual stream entering block 0.
Everything the graph holds fixed is held fixed with hooks on the bridge itself: every attention
pattern and every norm's scale at the clean run's value, every MLP output at its clean value (less
the removed source), so only direct effects pass. A skip transcoder's skip term is recomputed from
the MLP's current input. The change of each target's pre-activation (a neuron's ``hook_pre`` /
``hook_pre_linear``, a latent's ``x @ W_enc.T + b_enc``, the demeaned logit) is that edge. One
more row with every source removed gives each target's constant.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from interpkit.hooks import hooks


def _names(model, transcoders: dict[int, Any] | None) -> list[str]:
    n = model.cfg.n_layers
    out = [h for h in model.hook_names() if h.endswith("hook_scale")]
    for i in range(n):
        out += [f"blocks.{i}.attn.hook_pattern", f"blocks.{i}.mlp.hook_out", f"blocks.{i}.mlp.hook_in"]
        if transcoders is None:
            gated = f"blocks.{i}.mlp.hook_pre_linear" in model.bridge.hook_dict
            out += [f"blocks.{i}.mlp.hook_post", f"blocks.{i}.mlp.hook_pre" + ("_linear" if gated else "")]
    return out


def _capture(model, ids, names):
    store = {}

    def keep(act, hook):
        store[hook.name] = act.detach().clone()

    with torch.inference_mode(), hooks(model, fwd=[(model.resolve_hook(n), keep) for n in names]):
        model.bridge(ids)
    return {n: store[model.resolve_hook(n)] for n in names}


def _writes(model, clean, node, transcoders):
    """``(layer or -1, position, vector)`` that removing ``node`` subtracts."""
    layer, pos, unit = node.layer, node.position, node.feature
    if node.kind == "embedding":
        return -1, pos, clean["resid0"][0, pos]
    if node.kind == "error":  # a skipped first position's error is held, not a source
        return layer, pos, clean["error"][layer][pos] * (0 if pos == 0 and clean["skip_first"] else 1)
    if transcoders is None:
        w_out = model.bridge.blocks[layer].mlp.W_out.detach()
        return layer, pos, clean[f"blocks.{layer}.mlp.hook_post"][0, pos, unit] * w_out[unit]
    tc = transcoders[layer]
    return layer, pos, clean["z"][layer][pos, unit] * tc.W_dec[unit]


def _skip(tc, x):
    w = getattr(tc, "W_skip", None)
    return 0 if w is None else x @ w.T


def _run_rows(model, ids, clean, removals, transcoders, targets):
    """One forward per row; row r removes ``removals[r]`` (a list of writes). Returns target values (rows, T)."""
    rows = len(removals)
    n_layers = model.cfg.n_layers
    seen = {}
    fwd = []
    for name, value in clean["hooked"].items():
        if name.endswith("hook_scale") or name.endswith("hook_pattern"):
            fwd.append((name, lambda act, hook, v=value: v.expand_as(act).to(act)))

    def remove_embed(act, hook):
        act = act.clone()
        for r, writes in enumerate(removals):
            for layer, pos, vec in writes:
                if layer == -1:
                    act[r, pos] -= vec
        return act

    fwd.append(("blocks.0.hook_resid_pre", remove_embed))
    for i in range(n_layers):

        def grab(act, hook, i=i):
            seen[i] = act.detach().clone()

        def replace(act, hook, i=i):
            out = clean[f"blocks.{i}.mlp.hook_out"].expand_as(act).clone()
            if transcoders is not None and i in transcoders:
                out = out + _skip(transcoders[i], seen[i]) - _skip(transcoders[i], clean[f"blocks.{i}.mlp.hook_in"])
            for r, writes in enumerate(removals):
                for layer, pos, vec in writes:
                    if layer == i:
                        out[r, pos] -= vec
            return out.to(act)

        fwd += [(f"blocks.{i}.mlp.hook_in", grab), (f"blocks.{i}.mlp.hook_out", replace)]
    pre_seen = {}
    for i in range(n_layers):
        if transcoders is None:
            gated = f"blocks.{i}.mlp.hook_pre_linear" in model.bridge.hook_dict
            name = f"blocks.{i}.mlp.hook_pre" + ("_linear" if gated else "")
            fwd.append((name, lambda act, hook, i=i: pre_seen.__setitem__(i, act.detach().clone())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bridge warns that edited scales change its numerics
        with torch.inference_mode(), hooks(model, fwd=fwd):
            logits = model.bridge(ids.expand(rows, -1)).double()
    values = []
    for node in targets:
        if node.kind == "logit":
            last = logits[:, -1]
            values.append(last[:, node.feature] - last.mean(-1))
        elif transcoders is None:
            values.append(pre_seen[node.layer][:, node.position, node.feature].double())
        else:
            tc = transcoders[node.layer]
            x = seen[node.layer][:, node.position].double()
            values.append(x @ tc.W_enc[node.feature].double() + tc.b_enc[node.feature].double())
    return torch.stack(values, 1)


def reference(model, graph, transcoders: dict[int, Any] | None = None, batch: int = 64):
    """``(edges, constants)``: the literal direct effects ``(targets, sources)`` of every source node
    on every target node (features and logits, in graph order) and each target's constant."""
    ids = torch.tensor(graph.tokens)[None]
    clean = _capture(model, ids, _names(model, transcoders))
    clean["hooked"] = {n: v for n, v in clean.items() if n.endswith(("hook_scale", "hook_pattern"))}
    clean["skip_first"] = bool(graph.meta.get("skip_first_position"))
    clean["resid0"] = _capture(model, ids, ["blocks.0.hook_resid_pre"])["blocks.0.hook_resid_pre"]
    if transcoders is not None:
        clean["z"], clean["error"] = {}, {}
        for layer in range(model.cfg.n_layers):
            x, out = clean[f"blocks.{layer}.mlp.hook_in"][0], clean[f"blocks.{layer}.mlp.hook_out"][0]
            tc = transcoders.get(layer)
            if tc is None:
                clean["error"][layer] = out
                continue
            z = tc.encode(x)
            clean["z"][layer] = z
            clean["error"][layer] = out - (z @ tc.W_dec + tc.b_dec + _skip(tc, x))
    sources = [n for n in graph.nodes if n.kind != "logit"]
    targets = [n for n in graph.nodes if n.pre_activation is not None]
    writes = [[_writes(model, clean, n, transcoders)] for n in sources]
    base = _run_rows(model, ids, clean, [[]], transcoders, targets)[0]
    parts = [
        _run_rows(model, ids, clean, writes[a : a + batch], transcoders, targets) for a in range(0, len(writes), batch)
    ]
    edges = (base[None] - torch.cat(parts)).T  # (targets, sources)
    everything = [w for ws in writes for w in ws]  # decoder biases stay; skip terms follow their inputs
    constant = _run_rows(model, ids, clean, [everything], transcoders, targets)[0]
    return edges, constant, base


def frozen_model_change(model, graph, node, scale):
    """The change of the graph's target (demeaned) logit when ``node`` (a neuron) is set to ``scale``
    times its activation, in the real model with every attention pattern and norm scale held at the
    prompt's and every other neuron linear at its frozen ratio ``post / pre`` (the local replacement
    model, literally, through hooks on the bridge)."""
    ids = torch.tensor(graph.tokens)[None]
    clean = _capture(model, ids, _names(model, None))
    fwd = [
        (n, lambda act, hook, v=v: v.expand_as(act).to(act))
        for n, v in clean.items()
        if n.endswith(("hook_scale", "hook_pattern"))
    ]
    seen = {}
    for i in range(model.cfg.n_layers):
        gated = f"blocks.{i}.mlp.hook_pre_linear" in model.bridge.hook_dict
        pre_name = f"blocks.{i}.mlp.hook_pre" + ("_linear" if gated else "")
        ratio = clean[f"blocks.{i}.mlp.hook_post"] / clean[pre_name]

        def post(act, hook, i=i, ratio=ratio):
            out = ratio * seen[i]
            if i == node.layer:
                out = out.clone()
                out[0, node.position, node.feature] = (
                    scale * clean[f"blocks.{i}.mlp.hook_post"][0, node.position, node.feature]
                )
            return out.to(act)

        fwd += [
            (pre_name, lambda act, hook, i=i: seen.__setitem__(i, act.detach().clone())),
            (f"blocks.{i}.mlp.hook_post", post),
        ]
    target = graph.nodes[graph.kinds().index("logit")].feature
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.inference_mode():
            before = model.bridge(ids)[0, -1].double()
            with hooks(model, fwd=fwd):
                after = model.bridge(ids)[0, -1].double()
    return float((after[target] - after.mean()) - (before[target] - before.mean()))
