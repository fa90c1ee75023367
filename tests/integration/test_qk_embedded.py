"""QK attribution on the embedded SmolLM2 (GQA 9/3, RoPE): the terms sum to the model's score."""

from __future__ import annotations

import torch

import interpkit as ik


def test_qk_terms_sum_to_the_score_on_smollm2(smollm2):
    text = "The cat sat on the mat. The dog ran in the park. The cat sat on the"
    for layer, head in [(3, 0), (17, 4), (29, 8)]:
        res = ik.attribution.qk(smollm2, text, layer, head, query_pos=-1)
        total = res.extras["per_example"].double().sum((1, 2))
        assert torch.allclose(total, res.extras["actual"].double(), rtol=1e-4, atol=1e-5), (layer, head)
        assert len(res.labels["query_term"]) == 1 + layer * 10 + 1  # embed, 9 heads + MLP per layer, bias
    fig = res.figure()
    assert fig.data[0].z.shape == (17, 17)
