"""Site labels: parse, print, validate against a model, enumerate."""

from __future__ import annotations

import pytest
import torch

from interpkit.errors import SiteError
from interpkit.hooks import hooks
from interpkit.sites import Site, all_sites, parse, resolve, validate

LABELS = [
    "embed",
    "logits",
    "L3.resid_pre",
    "L0.resid_mid",
    "L2.resid_post",
    "L1.attn",
    "L1.mlp",
    "L3H5",
    "L3H5.q",
    "L3H5.k",
    "L3H5.v",
    "L3H5.pattern",
    "L2KV1.k",
    "L2KV0.v",
]


@pytest.mark.parametrize("label", LABELS)
def test_label_roundtrip(label):
    assert parse(label).label == label


def test_aliases_normalise():
    assert parse("L1.attn_out") == parse("L1.attn") == Site("attn_out", 1)
    assert parse("L1.mlp_out").label == "L1.mlp"
    assert parse("L3H5.z") == parse("L3H5")


def test_hook_names():
    assert parse("L3.resid_pre").hook == "blocks.3.hook_resid_pre"
    assert parse("L3H5").hook == "blocks.3.attn.hook_z"
    assert parse("L3H5.pattern").head_axis() == 1
    assert parse("L3H5.k").hook_index(group_size=3) == 1
    assert parse("L3H5.q").hook_index(group_size=3) == 5


@pytest.mark.parametrize("bad", ["L3.resid", "H3L5", "L3H", "embedding", "L3H5.o", "", "L-1.mlp"])
def test_malformed_labels(bad):
    with pytest.raises(SiteError, match="Valid forms"):
        parse(bad)


def test_validate_against_model(tiny_llama, toy):
    assert validate("L2H5.k", tiny_llama) == Site("k", 2, 5)
    with pytest.raises(SiteError, match="out of range.*closest"):
        validate("L3H0", tiny_llama)
    with pytest.raises(SiteError, match="6 heads"):
        validate("L0H6", tiny_llama)
    with pytest.raises(SiteError, match="key/value head"):
        validate("L0KV2.k", tiny_llama)
    with pytest.raises(SiteError, match="attention-only"):
        validate("L0.mlp", toy)


def test_enumerate(tiny_llama, toy):
    assert len(all_sites(tiny_llama, "z")) == 3 * 6
    assert len(all_sites(tiny_llama, "kv_k")) == 3 * 2
    assert [s.label for s in all_sites(tiny_llama, "resid_pre")] == ["L0.resid_pre", "L1.resid_pre", "L2.resid_pre"]
    assert all_sites(toy, "mlp_out") == []
    every = all_sites(tiny_llama)
    assert every[0].label == "embed" and every[-1].label == "logits"
    with pytest.raises(SiteError, match="closest: resid_pre"):
        all_sites(tiny_llama, "resid_pr")


def test_every_enumerated_site_fires(tiny_llama):
    fired = set()

    def mark(act, hook):
        fired.add(hook.name)

    sites = all_sites(tiny_llama)
    hook_names = sorted({tiny_llama.resolve_hook(s.hook) for s in sites})
    with hooks(tiny_llama, fwd=[(n, mark) for n in hook_names]), torch.no_grad():
        tiny_llama(torch.tensor([[1, 2, 3]]))
    assert fired == set(hook_names)


def test_resolve_site_or_hook(tiny_llama):
    assert resolve(tiny_llama, "L1H2") == Site("z", 1, 2)
    assert resolve(tiny_llama, "blocks.1.hook_in") == "blocks.1.hook_resid_pre"
    with pytest.raises(SiteError, match="closest"):
        resolve(tiny_llama, "blocks.1.hook_resid_pr")
