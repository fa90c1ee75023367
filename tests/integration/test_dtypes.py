"""Patching the embedded model in bfloat16 and float16 stays within a documented tolerance of float32.

Measured on SmolLM2-135M, two IOI prompts (docs/benchmarks.md, "Half precision"): the largest
score difference was about 1.2% of the clean-corrupt logit-difference span in bfloat16 and 0.2%
in float16 (float32 arithmetic inside the metric); the tolerances below leave about 3x headroom.
"""

from __future__ import annotations

import copy

import pytest
import torch

import interpkit as ik

# Largest |score(dtype) - score(float32)| as a fraction of |clean - corrupt| in float32.
TOLERANCE = {"bfloat16": 0.04, "float16": 0.01}


@pytest.fixture(scope="module")
def float32_run(smollm2):
    task = ik.tasks.load("ioi", smollm2, n=2)
    return task, ik.patch(smollm2, task, site="mlp_out", layers=[0, 15, 29])


@pytest.mark.integration
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_patching_matches_float32(smollm2, float32_run, dtype):
    task, want = float32_run
    half = copy.deepcopy(smollm2).to(dtype=dtype)
    assert half.dtype == getattr(torch, dtype)
    got = ik.patch(half, task, site="mlp_out", layers=[0, 15, 29])
    span = abs(want.clean_value - want.corrupt_value)
    assert span > 1.0  # IOI separates clean from corrupt on this model
    tol = TOLERANCE[dtype] * span
    assert abs(got.clean_value - want.clean_value) <= tol
    assert abs(got.corrupt_value - want.corrupt_value) <= tol
    worst = float((got.scores - want.scores).abs().max())
    print(f"{dtype}: max |score - float32 score| = {worst:.4f} = {worst / span:.4f} of the span {span:.3f}")
    assert worst <= tol
    assert torch.isfinite(got.extras["per_example"]).all()
