"""The batched patching engine equals one-forward-per-patch patching and transformer_lens.patching."""

from __future__ import annotations

import pytest
import torch

import interpkit as ik
from interpkit.errors import SiteError, TaskError
from interpkit.patching import PatchingError, ablate, patch
from interpkit.runtime import derangement, mean_activation
from patching_reference import literal_patch, run_cache
from tiny_models import random_task, suffix_off

ATOL = 1e-5


def _task(model, n=3, pos=6, seed=0, ragged=False):
    return random_task(model, n, pos, seed, ragged)


SITES = [
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "head_out",
    "head_q",
    "head_k",
    "head_v",
    "head_pattern",
]


SUFFIX_SITES = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out"]


def _hook_engine(model, *args, **kwargs):
    """``patch`` with the suffix (prefix-reuse) path switched off: the hook engine alone."""
    with suffix_off(model):
        return patch(model, *args, **kwargs)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt2", "tiny_neox", "tiny_qwen3"])
def test_engine_equals_literal(site, model_name, request):
    model = request.getfixturevalue(model_name)
    task = _task(model)
    if site == "resid_mid" and model.cfg.parallel_attn_mlp:  # attention and MLP both read resid_pre
        with pytest.raises(SiteError, match="attention and MLP run in parallel on resid_pre"):
            patch(model, task, site)
        with pytest.raises(SiteError, match="attention and MLP run in parallel on resid_pre"):
            ik.cache.run(model, task.clean, sites=["L0.resid_mid"])
        return
    fast = patch(model, task, site)
    slow = literal_patch(model, task, site)
    assert fast.scores.shape == slow.shape
    assert torch.allclose(fast.scores, slow, atol=ATOL), (fast.scores - slow).abs().max()
    if site in SUFFIX_SITES:  # whole-sequence patches run on the suffix forward where it is implemented
        assert fast.meta["engine"] == ("hooks" if model_name == "tiny_neox" else "suffix")  # NeoX: parallel blocks
        hooked = _hook_engine(model, task, site)
        assert hooked.meta["engine"] == "hooks"
        assert torch.allclose(hooked.scores, slow, atol=ATOL), (hooked.scores - slow).abs().max()


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "head_out", "head_v"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_per_position_and_direction(site, direction, tiny_llama):
    task = _task(tiny_llama, n=2, pos=5, seed=1)
    fast = patch(tiny_llama, task, site, per_position=True, direction=direction, batch_size=7)
    slow = literal_patch(tiny_llama, task, site, per_position=True, direction=direction)
    assert torch.allclose(fast.scores, slow, atol=ATOL)


@pytest.mark.parametrize("site", SUFFIX_SITES)
@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt2", "tiny_qwen3"])
def test_per_position_prefix_reuse_equals_literal(site, model_name, request):
    """Sweeps run on the suffix forward (per position and whole-sequence, ragged prompts on Llama);
    they equal the literal loop and the hook engine."""
    model = request.getfixturevalue(model_name)
    task = _task(model, n=3, pos=6, seed=7, ragged=model_name == "tiny_llama")
    for direction, per_position in (("denoise", True), ("noise", True), ("noise", False)):
        fast = patch(model, task, site, per_position=per_position, direction=direction, batch_size=5)
        assert fast.meta["engine"] == "suffix"
        slow = literal_patch(model, task, site, per_position=per_position, direction=direction)
        assert torch.allclose(fast.scores, slow, atol=ATOL), (fast.scores - slow).abs().max()
        hooked = _hook_engine(model, task, site, per_position=per_position, direction=direction)
        assert hooked.meta["engine"] == "hooks"
        assert torch.allclose(fast.extras["per_example"], hooked.extras["per_example"], atol=ATOL)


@pytest.mark.parametrize("metric", ["logprob", "kl", "accuracy"])
def test_prefix_reuse_with_full_vocabulary_metrics(metric, tiny_gpt2):
    task = _task(tiny_gpt2, n=3, pos=5, seed=8)
    fast = patch(tiny_gpt2, task, "head_out", per_position=True, metric=metric, positions=[0, 2, 4], layers=[0, 1])
    slow = literal_patch(tiny_gpt2, task, "head_out", per_position=True, metric=metric)[:2, [0, 2, 4]]
    assert fast.meta["engine"] == "suffix"
    assert torch.allclose(fast.scores, slow, atol=ATOL)


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
@pytest.mark.parametrize("per_position", [True, False])
def test_prefix_reuse_ablations_equal_hook_engine(ablation, per_position, tiny_llama):
    task = _task(tiny_llama, n=4, pos=5, seed=9)
    for site in ("head_out", "mlp_out"):
        fast = patch(tiny_llama, task, site, per_position=per_position, ablation=ablation)
        hooked = _hook_engine(tiny_llama, task, site, per_position=per_position, ablation=ablation)
        assert (fast.meta["engine"], hooked.meta["engine"]) == ("suffix", "hooks")
        assert torch.allclose(fast.extras["per_example"], hooked.extras["per_example"], atol=ATOL)


@pytest.mark.parametrize("metric", ["logprob", "prob", "kl", "accuracy"])
def test_other_metrics(metric, tiny_gpt2):
    task = _task(tiny_gpt2, seed=2)
    fast = patch(tiny_gpt2, task, "head_out", metric=metric)
    slow = literal_patch(tiny_gpt2, task, "head_out", metric=metric)
    assert torch.allclose(fast.scores, slow, atol=ATOL)


def test_ragged_task(tiny_llama):
    task = _task(tiny_llama, n=3, pos=6, seed=3, ragged=True)
    assert not task.same_positions()
    for site in ("resid_post", "head_out"):
        assert torch.allclose(patch(tiny_llama, task, site).scores, literal_patch(tiny_llama, task, site), atol=ATOL)


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample", "counterfactual"])
def test_ablations_equal_literal(ablation, tiny_llama):
    task = _task(tiny_llama, n=4, seed=4)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(3)]
    clean, _ = run_cache(tiny_llama, task.clean, names)
    corrupt, _ = run_cache(tiny_llama, task.corrupt, names)
    perm = derangement(len(task), 0)
    source = {
        "zero": {n: torch.zeros_like(clean[n]) for n in names},
        "mean": {n: corrupt[n].mean(0, keepdim=True).expand_as(corrupt[n]) for n in names},
        "resample": {n: clean[n][perm] for n in names},
        "counterfactual": corrupt,
    }[ablation]
    fast = patch(tiny_llama, task, "head_out", ablation=ablation, seed=0)
    slow = literal_patch(tiny_llama, task, "head_out", source_override=source)
    assert torch.allclose(fast.scores, slow, atol=ATOL)
    assert fast.meta["direction"] == f"ablate ({ablation})"


def test_derangement_has_no_fixed_point():
    for seed in range(5):
        perm = derangement(7, seed)
        assert sorted(perm.tolist()) == list(range(7)) and (perm != torch.arange(7)).all()
    with pytest.raises(PatchingError, match="at least 2"):
        derangement(1, 0)


def test_mean_over_ragged_uses_real_tokens(tiny_llama):
    task = _task(tiny_llama, n=3, pos=6, ragged=True)
    act = torch.arange(3 * 6, dtype=torch.float32).reshape(3, 6, 1)
    expected = act[task.attention_mask.bool()].mean()
    assert torch.allclose(mean_activation(act, task), expected.expand(1, 6, 1))


def test_denoise_all_resid_pre_restores_clean(tiny_llama):
    task = _task(tiny_llama, seed=5)
    res = patch(tiny_llama, task, "resid_pre")
    # Patching the whole residual stream entering layer 0 turns the corrupt run into the clean run.
    assert res.scores[0].item() == pytest.approx(res.clean_value, abs=1e-5)
    assert torch.allclose(res.normalised()[0], torch.tensor(1.0), atol=1e-4)


def test_matches_transformer_lens_patching(tiny_llama):
    import transformer_lens.patching as tl_patching

    task = _task(tiny_llama, n=1, pos=5, seed=6)
    a, w = int(task.answer[0]), int(task.wrong[0])

    def metric(logits):
        return logits[0, -1, a] - logits[0, -1, w]

    _, clean_cache = tiny_llama.bridge.run_with_cache(task.clean)
    ours = patch(tiny_llama, task, "head_out", per_position=True).scores
    theirs = tl_patching.get_act_patch_attn_head_out_by_pos(tiny_llama.bridge, task.corrupt, clean_cache, metric)
    assert torch.allclose(ours, theirs.float(), atol=ATOL)
    ours = patch(tiny_llama, task, "resid_pre", per_position=True).scores
    theirs = tl_patching.get_act_patch_resid_pre(tiny_llama.bridge, task.corrupt, clean_cache, metric)
    assert torch.allclose(ours, theirs.float(), atol=ATOL)


def test_ablate_sets_of_components(tiny_llama):
    task = _task(tiny_llama, n=4, seed=7)
    both = ablate(tiny_llama, task, ["L0H1", "L2.mlp", "L1KV1.v"], ablation="zero")
    names = ["blocks.0.attn.hook_z", "blocks.2.hook_mlp_out", "blocks.1.attn.hook_v"]

    def zero(act, hook):
        act = act.clone()
        if hook.name == names[0]:
            act[:, :, 1] = 0
        elif hook.name == names[1]:
            act[:] = 0
        else:
            act[:, :, 1] = 0
        return act

    with torch.no_grad(), ik.hooks.hooks(tiny_llama, fwd=[(n, zero) for n in names]):
        logits = tiny_llama(task.clean)
    expected = ik.metrics.evaluate(logits, task)
    assert torch.allclose(both.scores, expected, atol=ATOL) and both.dims == ("example",)
    assert ablate(tiny_llama, task, [], ablation="mean").scores.shape == (4,)
    with pytest.warns(FutureWarning, match="returns a Result since 0.2"):  # old call sites keep working
        assert torch.equal(both.mean(), both.scores.mean())


def test_result_labels_and_figure(toy):
    task = ik.tasks.load("induction", toy, n=4, length=5)
    res = patch(toy, task, "head_out", per_position=True, layers=[1])
    assert res.dims == ("layer", "pos", "head") and res.scores.shape == (1, task.n_pos, 4)
    assert res.labels["layer"] == ["L1"] and res.labels["head"] == ["H0", "H1", "H2", "H3"]
    fig = res.figure()
    assert fig.data[0].type == "heatmap"
    gqa = patch(toy, task, "head_k", layers=[0])
    assert gqa.labels["head"] == ["KV0", "KV1", "KV2", "KV3"]


def test_gqa_kv_labels_say_shared(tiny_llama):
    res = patch(tiny_llama, _task(tiny_llama), "head_k")
    assert res.labels["head"] == ["KV0", "KV1"] and "shared by 3 query heads" in res.meta["note"]


def test_bad_input(tiny_llama, toy):
    task = _task(tiny_llama)
    with pytest.raises(SiteError, match="head_out"):
        patch(tiny_llama, task, "head_outt")
    with pytest.raises(SiteError, match="out of range"):
        patch(tiny_llama, task, "resid_pre", per_position=True, positions=[0, 9])
    with pytest.raises(SiteError, match="layers"):
        patch(tiny_llama, task, "resid_pre", layers=[5])
    with pytest.raises(SiteError, match="attention-only"):
        patch(toy, ik.tasks.load("induction", toy, n=2), "mlp_out")
    with pytest.raises(PatchingError, match="noise"):
        patch(tiny_llama, task, "resid_pre", direction="sideways")
    with pytest.raises(PatchingError, match="resample"):
        patch(tiny_llama, task, "resid_pre", ablation="resampled")
    with pytest.raises(PatchingError, match="at least 2"):
        patch(tiny_llama, task.subset([0]), "resid_pre", ablation="resample")
    with pytest.raises(TaskError, match="logit_diff"):
        patch(tiny_llama, task, "resid_pre", metric="logit-diff")


def test_nan_metric_names_the_example(tiny_llama, monkeypatch):
    import interpkit.runtime._rows as api

    task = _task(tiny_llama, n=2)

    def nan_second(final, answer, wrong, clean_lp):
        out = final[:, 0].clone()
        out[answer == task.answer[1]] = float("nan")
        return out

    monkeypatch.setitem(ik.metrics.METRICS, "nan_metric", nan_second)
    monkeypatch.setattr(api, "get_metric", lambda name: nan_second)
    with pytest.raises(PatchingError, match="NaN .* on example 1"):
        patch(tiny_llama, task, "resid_pre", metric="nan_metric")


def test_out_of_memory_halves_and_keeps_chunks(tiny_llama, monkeypatch):
    import interpkit.runtime._rows as engine

    calls = []
    real = engine.forward_final

    def flaky(model, start, *args, **kwargs):
        calls.append(start.shape[0])
        if start.shape[0] > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, start, *args, **kwargs)

    api = engine
    monkeypatch.setattr(api, "forward_final", flaky)
    task = _task(tiny_llama, n=3)
    res = _hook_engine(tiny_llama, task, "head_out", batch_size=16)
    assert max(c for c in calls if c <= 4) <= 4 and 16 in calls
    monkeypatch.setattr(api, "forward_final", real)
    assert torch.allclose(res.scores, patch(tiny_llama, task, "head_out").scores, atol=ATOL)
