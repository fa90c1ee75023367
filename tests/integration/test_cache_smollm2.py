"""The cache on the embedded SmolLM2-135M: DLA against the model's own logits, and a small harvest."""

from __future__ import annotations

import pytest
import torch

import interpkit.cache as ikc

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_direct_logit_attribution_matches_the_model(smollm2):
    mary, john = smollm2.to_single_token(" Mary"), smollm2.to_single_token(" John")
    tokens = smollm2.to_tokens(PROMPT)
    with torch.inference_mode():
        logits = smollm2(tokens)[0, -1]
    cache = ikc.run(smollm2, tokens, positions=-1)
    dla = cache.logit_attrs(mary, john)
    true = float(logits[mary] - logits[john])
    assert true > 2  # the model gets IOI right
    assert float(dla.scores.sum(0)[0, 0]) == pytest.approx(true, abs=2e-3)
    parts = cache.decompose_resid()
    final = cache["L29.resid_post"]
    assert float((parts.scores.sum(0) - final).norm() / final.norm()) < 1e-4
    assert len(parts.labels["component"]) == 1 + 30 * 9 + 30  # embed, heads, MLPs (no biases, rotary)
    lens = cache.logit_lens()
    torch.testing.assert_close(lens.scores[-1, 0, 0], logits, atol=1e-3, rtol=1e-4)
    top = dla.top(3)
    assert all(label.startswith("component=L") for label, _ in top)


def test_harvest_matches_run(smollm2, tmp_path):
    texts = ["The capital of France is Paris.", "def add(a, b):\n    return a + b", "Hello there!"]
    store = ikc.harvest(smollm2, texts, ["L5.resid_post", "L17H3"], tmp_path / "acts", progress=False)
    assert store.n_examples == 3 and store.dtype == torch.float16
    cache = ikc.run(smollm2, texts[1], ["L5.resid_post", "L17H3"])
    ex = store.example(1)
    assert ex["tokens"].tolist() == cache.tokens[0].tolist()
    torch.testing.assert_close(ex["blocks.5.hook_resid_post"].float(), cache["L5.resid_post"][0], atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(ex["L17H3"].float(), cache["L17H3"][0], atol=2e-2, rtol=1e-2)
    store.verify()
