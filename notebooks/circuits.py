# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Circuits
#
# Score every edge of the model's graph (embed, each head's query/key/value input, MLPs,
# logits), keep the strongest, and measure how much of the behaviour that circuit carries on
# its own. Edge attribution patching (EAP, Syed et al. 2023) scores every edge from two forwards
# and one backward; EAP-IG (Hanna et al. 2024) integrates the gradient along the path between
# the two runs, which follows exact patching more closely where the model saturates.

# %%
import os

import interpkit as ik
from interpkit import circuits

model = ik.load_model(os.environ.get("INTERPKIT_NOTEBOOK_MODEL", "toy-induction"))
task = ik.tasks.load("induction", model, n=16, seed=0)

# %% [markdown]
# Edge scores: the change of the metric when one edge carries the corrupted run's value.
# `extras["check"]` holds their rank correlation with exact edge patching on a sample of edges,
# so you can see when the linear approximation fails.

# %%
scores = ik.attribute(model, task, method="eap-ig", level="edge", ig_steps=20, direction="noise")
print(scores.top(8))
scores.extras.get("check")

# %% [markdown]
# A circuit: the top edges, pruned to those on a path from the input to the logits.
# Faithfulness: the metric with every other edge ablated, normalised so that the full model is
# 1 and the fully ablated model is 0.

# %%
circ = ik.discover_circuit(model, task, scores=scores, n_edges=30)
rep = ik.faithfulness(model, task, circ, ablation="counterfactual")
print(f"{len(circ)} edges, faithfulness {float(rep.scores[0]):.3f}")
circ.figure()

# %% [markdown]
# How faithfulness grows with the circuit's size, and the areas MIB reports (CPR: area under
# the curve; CMD: area between the curve and 1).

# %%
curve = circuits.faithfulness_curve(model, task, scores, ablation="mean")
print(f"CPR {curve.meta['cpr']:.3f}, CMD {curve.meta['cmd']:.3f}")
circuits.curve_figure(curve)

# %% [markdown]
# Circuits save as JSON and load only for the model they were found on.

# %%
import tempfile
from pathlib import Path

path = circ.save(Path(tempfile.mkdtemp()) / "circuit.json")
assert ik.Circuit.load(path, model=model) == circ
print(path.read_text()[:300])
