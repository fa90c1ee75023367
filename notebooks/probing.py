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
# # Probing
#
# Does the model's residual stream say whether the current token has occurred before (what an
# induction head needs to know)? Linear probes on every layer, one batched fit, with a
# shuffled-label control (Hewitt and Liang 2019: a probe that also learns random labels proves
# little).

# %%
import os
import random

import interpkit as ik
from interpkit import plots
from interpkit.probing import collect, probe

model = ik.load_model(os.environ.get("INTERPKIT_NOTEBOOK_MODEL", "toy-induction"))

# %% [markdown]
# Inputs: prompts of the induction task. In the clean ones the last token repeats a token of the
# first block; in the corrupted ones (from another seed, so no prompt shares tokens with a
# clean one) the first block was replaced and the last token is new. Pairing a clean prompt
# with its own corruption would leak: both end in the same tokens with opposite labels.

# %%
n = 100
repeats = ik.tasks.load("induction", model, n=n, seed=0).clean.tolist()
news = ik.tasks.load("induction", model, n=n, seed=1).corrupt.tolist()
inputs, labels = repeats + news, ["repeat"] * n + ["new"] * n
ds = collect(model, inputs, labels, positions="last", seed=0)
ds

# %%
result = probe(ds, "logistic")
shuffled = random.Random(0).sample(labels, len(labels))
control = probe(collect(model, inputs, shuffled, positions="last", seed=0), "logistic")
plots.probe_accuracy(result, control=control)

# %%
for site, value in zip(result.labels["site"], result.scores[:, 0, 0].tolist(), strict=True):
    print(f"{site:<16} test accuracy {value:.2f}")
