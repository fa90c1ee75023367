"""Path patching equals the literal freeze-everything-else procedure of Wang et al. (2022)."""

from __future__ import annotations

import pytest
import torch

from interpkit.errors import SiteError
from interpkit.hooks import hooks
from interpkit.metrics import METRICS
from interpkit.patching import path_patch
from patching_reference import run_cache
from tiny_models import random_task

ATOL = 1e-5


def _task(model, n=2, pos=5, seed=0):
    return random_task(model, n, pos, seed)


def literal_path_patch(model, task, sender, receivers, direction="noise"):
    """One sender (layer, head); receivers as (layer, kind, head) with kind in q/k/v/mlp."""
    c = model.cfg
    base_tokens, source_tokens = (task.clean, task.corrupt) if direction == "noise" else (task.corrupt, task.clean)
    frozen_names = [f"blocks.{layer}.attn.hook_z" for layer in range(c.n_layers)]
    frozen_names += [f"blocks.{layer}.hook_mlp_out" for layer in range(c.n_layers)]
    recv_names = {
        (layer, kind): f"blocks.{layer}.attn.hook_{kind}" if kind != "mlp" else f"blocks.{layer}.hook_mlp_out"
        for layer, kind, _ in receivers
    }
    base, _ = run_cache(model, base_tokens, frozen_names)
    source, _ = run_cache(model, source_tokens, frozen_names)
    clean_logits = model(task.clean).detach()
    clean_lp = clean_logits[torch.arange(len(task)), task.answer_pos].log_softmax(-1)
    s_layer, s_head = sender
    out = []
    for b in range(len(task)):
        # Step 1: sender from the source run, every other head output and MLP output frozen to base.
        def freeze(act, hook, b=b):
            new = base[hook.name][b : b + 1].clone()
            if hook.name == f"blocks.{s_layer}.attn.hook_z":
                new[0, :, s_head] = source[hook.name][b, :, s_head]
            return new

        captured = {}

        def keep(act, hook, captured=captured):
            captured[hook.name] = act.clone()

        fwd = [(n, freeze) for n in frozen_names if n not in recv_names.values()]
        fwd += [(n, keep) for n in recv_names.values()]
        with torch.no_grad(), hooks(model, fwd=fwd):
            model(base_tokens[b : b + 1])
        # Step 2: the base run with only the receivers' q/k/v (or MLP output) replaced.
        by_name = {}
        for layer, kind, head in receivers:
            by_name.setdefault(recv_names[(layer, kind)], []).append((kind, head))

        def put(act, hook, by_name=by_name, captured=captured):
            new = act.clone()
            for kind, head in by_name[hook.name]:
                if kind == "mlp":
                    new = captured[hook.name].clone()
                else:
                    index = head // c.group_size if kind in ("k", "v") else head
                    new[0, :, index] = captured[hook.name][0, :, index]
            return new

        with torch.no_grad(), hooks(model, fwd=[(n, put) for n in by_name]):
            logits = model(base_tokens[b : b + 1])
        final = logits[0, task.answer_pos[b]][None]
        out.append(METRICS["logit_diff"](final, task.answer[b : b + 1], task.wrong[b : b + 1], clean_lp[b : b + 1])[0])
    return torch.stack(out).mean()


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt2", "tiny_neox", "tiny_phi", "tiny_qwen3"])
@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_path_patching_equals_literal(model_name, direction, request):
    model = request.getfixturevalue(model_name)
    task = _task(model)
    last = model.cfg.n_layers - 1
    receivers = [(last, "q", 1), (last, "v", 2), (last, "mlp", None)]
    labels = [f"L{last}H1.q", f"L{last}H2.v", f"L{last}.mlp"]
    fast = path_patch(model, task, receivers=labels, senders="heads", direction=direction)
    assert fast.dims == ("layer", "head")
    # (last, 1): a head of the receivers' own layer reaches their MLP (unless the block is parallel)
    for sender in [(0, 0), (0, 3), (last - 1, 1), (last, 1)]:
        slow = literal_path_patch(model, task, sender, receivers, direction)
        assert fast.scores[sender].item() == pytest.approx(slow.item(), abs=ATOL)
    base = fast.clean_value if direction == "noise" else fast.corrupt_value
    same_layer = fast.scores[last] - base
    if model.cfg.parallel_attn_mlp:  # the MLP reads the block's input: its own heads never reach it
        assert torch.allclose(same_layer, torch.zeros_like(same_layer), atol=ATOL)
    else:
        assert same_layer.abs().max() > 1e-4
    # to head inputs alone, heads of the receivers' layer have no path: the base value
    heads_only = path_patch(model, task, receivers=labels[:2], senders="heads", direction=direction)
    assert torch.allclose(heads_only.scores[last], torch.full_like(heads_only.scores[last], base), atol=ATOL)


def test_receivers_in_two_layers(tiny_llama):
    task = _task(tiny_llama, seed=1)
    receivers = [(1, "k", 4), (2, "q", 0)]
    fast = path_patch(tiny_llama, task, ["L1H4.k", "L2H0.q"], senders=["L0H2", "L1H5"], direction="noise")
    assert fast.dims == ("sender",) and fast.labels["sender"] == ["L0H2", "L1H5"]
    for i, sender in enumerate([(0, 2), (1, 5)]):
        assert fast.scores[i].item() == pytest.approx(
            literal_path_patch(tiny_llama, task, sender, receivers).item(), abs=ATOL
        )


def test_direct_path_to_logits(tiny_gpt2):
    task = _task(tiny_gpt2, seed=2)
    fast = path_patch(tiny_gpt2, task, ["logits"], senders=["L0H1", "L1H3"], direction="noise")
    # Literal direct effect: add the sender's output change to the final residual only.
    names = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post"]
    base, _ = run_cache(tiny_gpt2, task.clean, names)
    src, _ = run_cache(tiny_gpt2, task.corrupt, names)
    bridge = tiny_gpt2.bridge
    for i, (layer, head) in enumerate([(0, 1), (1, 3)]):
        z = f"blocks.{layer}.attn.hook_z"
        delta = (src[z][:, :, head] - base[z][:, :, head]) @ bridge.blocks[layer].attn.W_O[head]
        resid = base["blocks.1.hook_resid_post"] + delta
        logits = bridge.unembed(bridge.ln_final(resid))
        rows = torch.arange(len(task))
        final = logits[rows, task.answer_pos]
        expected = (final[rows, task.answer] - final[rows, task.wrong]).mean()
        assert fast.scores[i].item() == pytest.approx(expected.item(), abs=ATOL)


def test_bad_receivers(tiny_llama):
    task = _task(tiny_llama)
    with pytest.raises(SiteError, match="receiver"):
        path_patch(tiny_llama, task, [], direction="noise")
    with pytest.raises(SiteError, match="not component inputs"):
        path_patch(tiny_llama, task, ["L2H1"], direction="noise")
    with pytest.raises(SiteError, match="not component outputs"):
        path_patch(tiny_llama, task, ["L2H1.q"], senders=["L0.resid_pre"], direction="noise")
