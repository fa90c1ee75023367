"""Slow, literal activation patching: one full forward per (patch, example), plain hooks.

This is the reference the batched engine is tested against. It shares no code with the engine
beyond the hook context manager and the metric functions.
"""

from __future__ import annotations

import torch

from interpkit.hooks import hooks
from interpkit.metrics import METRICS

HOOKS = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "head_out": "blocks.{l}.attn.hook_z",
    "head_q": "blocks.{l}.attn.hook_q",
    "head_k": "blocks.{l}.attn.hook_k",
    "head_v": "blocks.{l}.attn.hook_v",
    "head_pattern": "blocks.{l}.attn.hook_pattern",
}


def run_cache(model, tokens, names):
    store = {}

    def keep(act, hook):
        store[hook.name] = act.clone()

    with torch.no_grad(), hooks(model, fwd=[(n, keep) for n in names]):
        logits = model(tokens)
    return store, logits


def literal_patch(
    model, task, site, per_position=False, direction="denoise", source_override=None, metric="logit_diff"
):
    """Scores with the same shape as ``ik.patch`` (layer[, pos][, head]), one forward per patch and example.

    ``source_override`` maps a hook name to a full (batch, ...) tensor of replacement values patched
    into the clean run (used to check ablations).
    """
    fn = METRICS[metric]
    c = model.cfg
    n_heads = c.n_kv_heads if site in ("head_k", "head_v") else c.n_heads
    is_head = site.startswith("head_")
    names = [HOOKS[site].format(l=lay) for lay in range(c.n_layers)]
    clean_cache, clean_logits = run_cache(model, task.clean, names)
    corrupt_cache, _ = run_cache(model, task.corrupt, names)
    clean_lp = clean_logits[torch.arange(len(task)), task.answer_pos].log_softmax(-1)
    if source_override is not None:
        target, source = task.clean, source_override
    elif direction == "denoise":
        target, source = task.corrupt, clean_cache
    else:
        target, source = task.clean, corrupt_cache
    positions = range(task.n_pos) if per_position else [None]
    heads = range(n_heads) if is_head else [None]
    out = torch.zeros(c.n_layers, len(positions), len(heads), len(task))
    for lay in range(c.n_layers):
        name = names[lay]
        for pi, pos in enumerate(positions):
            for hi, head in enumerate(heads):
                for b in range(len(task)):

                    def hook(act, hook, b=b, pos=pos, head=head, name=name):
                        new = act.clone()
                        src = source[name][b]
                        if site == "head_pattern":
                            new[0, head] = src[head]
                        elif head is None and pos is None:
                            new[0] = src
                        elif head is None:
                            new[0, pos] = src[pos]
                        elif pos is None:
                            new[0, :, head] = src[:, head]
                        else:
                            new[0, pos, head] = src[pos, head]
                        return new

                    with torch.no_grad(), hooks(model, fwd=[(name, hook)]):
                        logits = model(target[b : b + 1])
                    final = logits[0, task.answer_pos[b]][None]
                    out[lay, pi, hi, b] = fn(final, task.answer[b : b + 1], task.wrong[b : b + 1], clean_lp[b : b + 1])[
                        0
                    ]
    out = out.mean(-1)
    if not per_position:
        out = out[:, 0]
    if not is_head:
        out = out[..., 0]
    return out
