"""Hooks are the only registration path and never outlive a call."""

from __future__ import annotations

import pytest
import torch

from interpkit.errors import SiteError
from interpkit.hooks import active_hook_count, hooks, run_with_hooks


def test_zero_hooks_after_exception_in_patched_run(tiny_llama):
    def zero(act, hook):
        return torch.zeros_like(act)

    tokens = torch.tensor([[1, 2, 3, 4]])
    with (
        pytest.raises(RuntimeError, match="boom"),
        hooks(tiny_llama, fwd=[("blocks.1.attn.hook_z", zero), ("blocks.0.hook_resid_post", zero)]),
    ):
        assert active_hook_count(tiny_llama) == 2
        tiny_llama(tokens)
        raise RuntimeError("boom")
    assert active_hook_count(tiny_llama) == 0
    assert all(not p.fwd_hooks for p in tiny_llama.bridge.hook_dict.values())


def test_hook_changes_output_and_is_removed(tiny_llama):
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        base = tiny_llama(tokens)
        patched = run_with_hooks(tiny_llama, tokens, fwd=[("blocks.2.attn.hook_z", lambda act, hook: act * 0)])
        after = tiny_llama(tokens)
    assert not torch.allclose(base, patched)
    assert torch.equal(base, after)


def test_hooks_see_classic_shapes(tiny_llama):
    shapes = {}

    def keep(act, hook):
        shapes[hook.name] = tuple(act.shape)

    names = ["blocks.0.attn.hook_z", "blocks.0.attn.hook_k", "blocks.0.attn.hook_pattern", "blocks.0.hook_in"]
    with hooks(tiny_llama, fwd=[(n, keep) for n in names]), torch.no_grad():
        tiny_llama(torch.tensor([[1, 2, 3, 4, 5]]))
    assert shapes["blocks.0.attn.hook_z"] == (1, 5, 6, 8)
    assert shapes["blocks.0.attn.hook_k"] == (1, 5, 2, 8)
    assert shapes["blocks.0.attn.hook_pattern"] == (1, 6, 5, 5)
    assert len(shapes) == 4


def test_gradient_hooks(tiny_llama):
    grads = {}

    def keep(grad, name):
        grads[name] = grad.detach().clone()

    tokens = torch.tensor([[1, 2, 3, 4]])
    with hooks(tiny_llama, grad=[("blocks.1.attn.hook_z", keep), ("blocks.0.hook_resid_pre", keep)]):
        tiny_llama(tokens)[0, -1, 5].backward()
    assert grads["blocks.1.attn.hook_z"].shape == (1, 4, 6, 8)
    assert grads["blocks.0.hook_resid_pre"].shape == (1, 4, 48)
    assert grads["blocks.1.attn.hook_z"].abs().sum() > 0
    assert active_hook_count(tiny_llama) == 0
    tiny_llama.bridge.zero_grad(set_to_none=True)


def test_unknown_hook_registers_nothing(tiny_llama):
    with (
        pytest.raises(SiteError, match="closest"),
        hooks(
            tiny_llama,
            fwd=[("blocks.0.hook_resid_pre", lambda a, h: None), ("blocks.0.hook_rsid_post", lambda a, h: None)],
        ),
    ):
        pass
    assert active_hook_count(tiny_llama) == 0
