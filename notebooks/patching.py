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
# # Activation patching
#
# Patch one component at a time between a clean and a corrupted run and watch the metric
# (Heimersheim and Nanda 2024, "How to use and interpret activation patching").
# *Denoising* puts clean activations into the corrupted run: which components are enough to
# restore the behaviour? *Noising* puts corrupted activations into the clean run: which are
# necessary? Every sweep is batched: one call, every layer, head and position.

# %%
import os

import interpkit as ik
from interpkit import plots

model = ik.load_model(os.environ.get("INTERPKIT_NOTEBOOK_MODEL", "toy-induction"))
task = ik.tasks.load("induction", model, n=16, seed=0)

# %% [markdown]
# The residual stream, per layer and position: where does the information that the answer
# needs sit? The prompt's tokens are on the x axis; hover for exact and normalised values.

# %%
resid = ik.patch(model, task, site="resid_pre", per_position=True, direction="denoise")
resid.figure()

# %% [markdown]
# Each head's output, denoising and noising. The previous-token head in layer 0 only shows up
# because the corrupted prompts change the *first* block (its input).

# %%
heads = ik.patch(model, task, site="head_out", direction="denoise")
heads.figure(normalised=True)

# %%
noised = ik.patch(model, task, site="head_out", direction="noise")
plots.heatmap(noised, normalised=True)

# %% [markdown]
# Ablations replace a component in the clean run with a reference value (zero, the mean over
# the corrupted prompts, another example's activation). `ik.patching.ablate` ablates a set of
# components together:

# %%
top = [label.replace("layer=", "").replace(", head=", "") for label, _ in heads.top(2, by_abs=False)]
together = ik.patching.ablate(model, task, top, ablation="mean").scores.mean()
print(f"mean-ablating {top}: logit difference {float(together):+.2f} (clean {heads.clean_value:+.2f})")

# %% [markdown]
# Results save and load exactly, with their provenance (model hash, task hash, seed, versions).

# %%
print(heads)
heads.provenance["model"], heads.provenance["task_hash"][:12]
