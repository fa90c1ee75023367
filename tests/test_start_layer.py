"""``forward_final`` from layer k computes blocks k.. only: the blocks below k apply none of their weights.

TransformerLens 4.3's ``start_at_layer`` still runs blocks 0..k-1 and discards their output
(issue 14, section 4); :func:`interpkit.runtime.forward_final` makes them pass their input
through. The block wrappers themselves are still entered (as a pass-through), so what is counted
here is every module of a block that owns parameters (projections, norms): a block whose weights
are never applied was not computed. The same counter sees every block in a forward from tokens,
so it can fail.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
import torch

from interpkit.runtime import capture, forward_final, skips_blocks

MODELS = ["tiny_llama", "tiny_gpt2", "tiny_neox", "toy"]


@contextlib.contextmanager
def block_calls(model):
    """A Counter ``{layer: calls of that block's parameterised modules}``, filled while the context is open."""
    calls: Counter[int] = Counter()
    handles = []
    for layer, block in enumerate(model.bridge.blocks):
        seen: set[int] = set()
        for module in block.modules():
            if id(module) in seen or next(module.parameters(recurse=False), None) is None:
                continue
            seen.add(id(module))
            handles.append(module.register_forward_hook(lambda *_, layer=layer: calls.update([layer])))
    assert len(handles) >= model.cfg.n_layers, "every block must have a module with weights to count"
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _start(model, layer, tokens):
    name = f"blocks.{layer}.hook_resid_pre"
    acts, logits = capture(model, tokens, [name])
    return acts[model.resolve_hook(name)], logits


@pytest.mark.parametrize("name", MODELS)
def test_forward_final_from_layer_k_skips_the_blocks_below_k(name, request):
    model = request.getfixturevalue(name)
    n_layers = model.cfg.n_layers
    tokens = model.check_tokens(torch.randint(1, min(model.cfg.d_vocab, 100), (3, 7)).tolist())
    answer_pos = torch.tensor([6, 4, 5])
    assert skips_blocks(model)  # the once-per-model verdict (its own full forwards run here, not below)
    for k in range(n_layers):
        start, logits = _start(model, k, tokens)
        with block_calls(model) as calls:
            out = forward_final(model, start, k, answer_pos)
        assert all(calls[i] == 0 for i in range(k)), f"{name}: blocks below {k} ran: {dict(calls)}"
        assert all(calls[i] > 0 for i in range(k, n_layers)), f"{name}: blocks from {k} on must run: {dict(calls)}"
        torch.testing.assert_close(out, logits[torch.arange(3), answer_pos], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny_llama", "toy"])
def test_the_counter_sees_every_block_of_a_forward_from_tokens(name, request):
    model = request.getfixturevalue(name)
    tokens = model.check_tokens([[5, 6, 7, 5, 6]])
    with block_calls(model) as calls:
        forward_final(model, tokens, None, torch.tensor([4]))
    assert sorted(calls) == list(range(model.cfg.n_layers))


def test_blocks_run_again_after_a_forward_from_layer_k(tiny_llama):
    """The pass-through lasts for the call only: the next plain forward computes every block."""
    model = tiny_llama
    tokens = model.check_tokens([[5, 6, 7, 5, 6]])
    start, _ = _start(model, model.cfg.n_layers - 1, tokens)
    forward_final(model, start, model.cfg.n_layers - 1, torch.tensor([4]))
    with block_calls(model) as calls, torch.no_grad():
        model(tokens)
    assert sorted(calls) == list(range(model.cfg.n_layers))
