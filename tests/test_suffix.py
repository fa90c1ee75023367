"""The suffix-only forward equals full bridge runs with the same patch written by a plain hook."""

from __future__ import annotations

import pytest
import torch

from interpkit.hooks import hooks
from interpkit.models import boot_native
from interpkit.runtime._suffix import SuffixRunner, SuffixUnsupported, unsupported_reason
from interpkit.runtime._suffix_sweep import suffix_sweep
from patching_reference import HOOKS
from tiny_models import random_task

MODELS = ["tiny_llama", "tiny_gpt2", "toy", "tiny_qwen3"]
SITES = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out"]


def _acts(model, tokens, name):
    store = {}

    def keep(act, hook):
        store["act"] = act.clone()

    with torch.no_grad(), hooks(model, fwd=[(name, keep)]):
        model(tokens)
    return store["act"]


def _literal(model, task, name, source, p, head):
    """Logits (batch, d_vocab) of the corrupt run with position p (and head) of ``name`` from ``source``."""

    def hook(act, hook):
        new = act.clone()
        if head is None:
            new[:, p] = source[:, p]
        else:
            new[:, p, head] = source[:, p, head]
        return new

    with torch.no_grad(), hooks(model, fwd=[(name, hook)]):
        logits = model(task.corrupt)
    return logits[torch.arange(len(task)), task.answer_pos]


@pytest.mark.parametrize("name", MODELS)
def test_forward_from_layer_zero_equals_bridge(name, request):
    model = request.getfixturevalue(name)
    task = random_task(model, n=3, pos=7, seed=1, ragged=True)
    runner = SuffixRunner(model)
    base = runner.capture(task.clean, task.answer_pos)
    ex = torch.arange(len(task))
    ref = model(task.clean)[ex, task.answer_pos]
    got = runner.run(base, 0, "pre", base.resid_pre[0], 0, ex)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    cols = torch.stack([task.answer, task.wrong], dim=1)
    torch.testing.assert_close(runner.run(base, 0, "pre", base.resid_pre[0], 0, ex, cols), ref.gather(1, cols))
    assert SuffixRunner.check(model)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("name", MODELS)
def test_sweep_equals_hooked_full_runs(name, site, request):
    model = request.getfixturevalue(name)
    if model.cfg.attn_only and site in ("resid_mid", "mlp_out"):
        pytest.skip("attention-only model")
    task = random_task(model, n=3, pos=6, seed=2, ragged=name == "tiny_llama")
    runner = SuffixRunner(model)
    base = runner.capture(task.corrupt, task.answer_pos)
    heads = range(model.cfg.n_heads) if site == "head_out" else [None]
    for layer in range(model.cfg.n_layers):
        hook = HOOKS[site].format(l=layer)
        source = _acts(model, task.clean, hook)
        got = suffix_sweep(runner, base, site, layer, source)  # (pos, head, batch, d_vocab)
        assert got.shape == (task.n_pos, len(heads), len(task), model.cfg.d_vocab)
        for p in range(task.n_pos):
            for hi, head in enumerate(heads):
                ref = _literal(model, task, hook, source, p, head)
                torch.testing.assert_close(got[p, hi], ref, atol=1e-5, rtol=1e-5, msg=f"{site} L{layer} p{p} h{head}")


def test_columns_pick_logits(tiny_llama):
    task = random_task(tiny_llama, n=2, pos=5, seed=3)
    runner = SuffixRunner(tiny_llama)
    base = runner.capture(task.corrupt, task.answer_pos)
    source = _acts(tiny_llama, task.clean, HOOKS["head_out"].format(l=1))
    cols = torch.stack([task.answer, task.wrong], dim=1)
    full = suffix_sweep(runner, base, "head_out", 1, source)
    some = suffix_sweep(runner, base, "head_out", 1, source, positions=[4, 2], columns=cols)
    torch.testing.assert_close(some, full[[4, 2]].gather(-1, cols[None, None].expand(2, 6, -1, -1)))


FIELDS = {"d_model": 16, "d_head": 4, "n_layers": 2, "n_ctx": 16, "n_heads": 4, "d_vocab": 23, "d_mlp": 32}


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"attn_scores_soft_cap": 30.0}, "attention soft-capping"),
        ({"output_logits_soft_cap": 30.0}, "logit soft-capping"),
        ({"positional_embedding_type": "rotary", "rotary_dim": 4}, "native rotary"),
        ({"normalization_type": "LNPre"}, "normalization"),
    ],
)
def test_unsupported_verdict(extra, why):
    model = boot_native({**FIELDS, "act_fn": "gelu", "normalization_type": "LN", **extra}, seed=0)
    assert why in unsupported_reason(model)
    with pytest.raises(SuffixUnsupported):
        SuffixRunner(model)
    assert SuffixRunner.check(model) is False
    assert model.anatomy.verdicts["suffix"] is False


def test_supported_native_layernorm_model_checks():
    model = boot_native({**FIELDS, "act_fn": "gelu", "normalization_type": "LN"}, seed=0)
    assert unsupported_reason(model) is None
    assert SuffixRunner.check(model)


def test_buckets_merge_small_runs_only():
    from interpkit.runtime._suffix_sweep import _buckets

    small = _buckets(list(range(12)), 12, rows=8, d_model=16)  # overhead-bound: few, larger runs
    assert [p for b in small for p in b] == list(range(12)) and len(small) < 12
    assert all(len(b) <= 1 + 0.4 * (12 - b[0]) for b in small)  # the recomputed prefix stays bounded
    assert all(b == list(range(b[0], b[0] + len(b))) for b in small)
    assert _buckets(list(range(12)), 12, rows=64, d_model=2048) == [[p] for p in range(12)]  # compute-bound
    assert _buckets([0, 2, 3], 12, rows=1, d_model=8) == [[0], [2, 3]]  # only consecutive positions merge
