"""AtP equals the derivative of the patched metric (finite differences), and tracks exact patching."""

from __future__ import annotations

import pytest
import torch

import interpkit as ik
from interpkit.attribution import AttributionError, atp, spearman
from interpkit.hooks import hooks
from interpkit.metrics import evaluate
from tiny_models import random_task


def _task(model, n=3, pos=6, seed=0):
    return random_task(model, n, pos, seed)


@pytest.mark.parametrize("site", ["head_out", "mlp_out", "resid_pre"])
def test_atp_is_the_directional_derivative(site, tiny_gpt2):
    """(m(target + eps*(source - target)) - m(target)) / eps -> AtP's linear change as eps -> 0."""
    model = tiny_gpt2
    task = _task(model)
    est = atp(model, task, site)
    hook = {
        "head_out": "blocks.1.attn.hook_z",
        "mlp_out": "blocks.1.hook_mlp_out",
        "resid_pre": "blocks.1.hook_resid_pre",
    }[site]
    store = {}

    def keep(act, hook):
        store[hook.name] = act.clone()

    with torch.no_grad():
        with hooks(model, fwd=[(hook, keep)]):
            model(task.clean)
        clean_act = store.pop(hook)
        with hooks(model, fwd=[(hook, keep)]):
            target_metric = evaluate(model(task.corrupt), task)
        corrupt_act = store.pop(hook)
    eps = 1e-3
    index = (1, 2) if site == "head_out" else (1,)

    def nudge(act, hook):
        new = act.clone()
        if site == "head_out":
            new[:, :, 2] = act[:, :, 2] + eps * (clean_act[:, :, 2] - corrupt_act[:, :, 2])
        else:
            new = act + eps * (clean_act - corrupt_act)
        return new

    with torch.no_grad(), hooks(model, fwd=[(hook, nudge)]):
        nudged = evaluate(model(task.corrupt), task)
    derivative = ((nudged - target_metric) / eps).double().mean()
    linear_change = est.scores[index].double() - target_metric.double().mean()
    assert linear_change.item() == pytest.approx(derivative.item(), rel=2e-2, abs=2e-3)


def test_atp_layout_matches_patch(tiny_llama):
    task = _task(tiny_llama)
    est = atp(tiny_llama, task, "head_out", per_position=True, check=1000)
    exact = ik.patch(tiny_llama, task, "head_out", per_position=True)
    assert est.dims == exact.dims and est.labels == exact.labels and est.scores.shape == exact.scores.shape
    assert est.clean_value == pytest.approx(exact.clean_value) and est.corrupt_value == pytest.approx(
        exact.corrupt_value
    )
    assert -1.0 <= est.extras["check"]["spearman"] <= 1.0
    assert est.extras["check"]["n"] == est.scores.numel()


def test_atp_tracks_exact_on_toy_induction_heads(toy):
    task = ik.tasks.load("induction", toy, n=16, seed=0)
    est = atp(toy, task, "head_out", layers=[1])
    exact = ik.patch(toy, task, "head_out", layers=[1])
    assert spearman(est.scores, exact.scores) > 0.7


def test_no_gradient_metric_is_an_error(tiny_llama):
    with pytest.raises(AttributionError, match="no gradient path"):
        atp(tiny_llama, _task(tiny_llama), "head_out", metric="accuracy")


def test_spearman():
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 35.0])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
