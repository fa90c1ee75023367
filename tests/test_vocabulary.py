"""One vocabulary: site kinds, labels and wildcards mean the same in patching, caching and probing;
one default direction and ablation everywhere, with a warning where an omitted argument changed meaning."""

from __future__ import annotations

import warnings

import pytest
import torch

import interpkit as ik
from interpkit.errors import SiteError
from interpkit.probing._collect import resolve_sites
from interpkit.runtime import DEFAULT_ABLATION, DEFAULT_DIRECTION
from tiny_models import random_task


def test_kinds_labels_and_wildcards_in_patching(tiny_llama):
    task = random_task(tiny_llama, n=2, pos=5, seed=4)
    by_kind = ik.patch(tiny_llama, task, "resid_post")
    assert torch.equal(ik.patch(tiny_llama, task, "L*.resid_post").scores, by_kind.scores)
    one = ik.patch(tiny_llama, task, "L1.mlp")
    assert one.labels["layer"] == ["L1"]
    assert torch.equal(one.scores, ik.patch(tiny_llama, task, "mlp_out", layers=[1]).scores)
    heads = ik.patch(tiny_llama, task, "L[12]H*")
    assert heads.labels["layer"] == ["L1", "L2"]
    assert torch.equal(heads.scores, ik.patch(tiny_llama, task, "z", layers=[1, 2]).scores)  # sites' kind name
    kv = ik.patch(tiny_llama, task, "L0KV*.k")
    assert kv.labels["head"] == ["KV0", "KV1"] and kv.meta["kind"] == "kv_k"
    with pytest.raises(SiteError, match="some heads of a layer"):
        ik.patch(tiny_llama, task, "L1H2")
    with pytest.raises(SiteError, match="one kind of component"):
        ik.patch(tiny_llama, task, "L1*.*")
    with pytest.raises(SiteError, match="names layers"):
        ik.patch(tiny_llama, task, "L1.mlp", layers=[2])


def test_the_same_names_in_caching_and_probing(tiny_llama):
    tokens = random_task(tiny_llama, n=2, pos=5).clean
    by_kind = ik.cache.run(tiny_llama, tokens, sites=["resid_post"])
    by_label = ik.cache.run(tiny_llama, tokens, sites=[f"L{i}.resid_post" for i in range(3)])
    assert sorted(by_kind.keys()) == sorted(by_label.keys())
    heads = ik.cache.run(tiny_llama, tokens, sites=["head_out"])  # ik.patch's name for head outputs
    labels = [s.label for s in ik.sites.all_sites(tiny_llama, "z")]
    assert sorted(heads.keys()) == sorted(ik.cache.run(tiny_llama, tokens, sites=labels).keys())
    assert [s.label for s in resolve_sites(tiny_llama, ["mlp_out"])] == ["L0.mlp", "L1.mlp", "L2.mlp"]
    assert [s.label for s in resolve_sites(tiny_llama, ["L*.mlp"])] == ["L0.mlp", "L1.mlp", "L2.mlp"]


def test_one_default_direction_and_ablation(tiny_gpt2):
    assert (DEFAULT_DIRECTION, DEFAULT_ABLATION) == ("denoise", "counterfactual")
    task = random_task(tiny_gpt2, n=2, pos=5, seed=1)
    # the functions whose default changed warn when the argument is omitted, and use the new default
    with pytest.warns(FutureWarning, match="direction now defaults to 'denoise'"):
        res = ik.attribution.edge_scores(tiny_gpt2, task, "eap", check=0)
    assert res.meta["direction"] == "denoise"
    with pytest.warns(FutureWarning, match="direction now defaults"):
        path = ik.patching.path_patch(tiny_gpt2, task, ["logits"], senders=["L0H1"])
    assert path.meta["direction"] == "denoise"
    with pytest.warns(FutureWarning, match="ablation now defaults to 'counterfactual'"):
        abl = ik.patching.ablate(tiny_gpt2, task, ["L0H1"])
    assert abl.meta["ablation"] == "counterfactual"
    circ = ik.circuits.Circuit.full(tiny_gpt2)
    with pytest.warns(FutureWarning, match="ablation now defaults"):
        assert ik.faithfulness(tiny_gpt2, task, circ).meta["ablation"] == "counterfactual"
    # where the default did not change, or the argument is given, nothing warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ik.patch(tiny_gpt2, task, "resid_pre").meta["direction"] == "denoise"
        assert ik.attribution.atp(tiny_gpt2, task, check=0).meta["direction"] == "denoise"
        ik.attribution.edge_scores(tiny_gpt2, task, "eap", "noise", check=0)
        ik.patching.ablate(tiny_gpt2, task, ["L0H1"], "mean")
