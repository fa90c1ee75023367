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
# # interpkit quickstart
#
# Load a model, build a clean/corrupt task, read the model's internals with a cache and hooks,
# and plot what the heads do. Runs on the 2-layer `toy-induction` model in seconds; set
# `INTERPKIT_NOTEBOOK_MODEL=smollm2-135m` for the embedded SmolLM2 (no download).

# %%
import os

import torch

import interpkit as ik
from interpkit import plots
from interpkit.attribution.head_scores import head_patterns, induction_scores, previous_token_scores

model = ik.load_model(os.environ.get("INTERPKIT_NOTEBOOK_MODEL", "toy-induction"))
model

# %% [markdown]
# A task is a batch of clean prompts, corrupted prompts of the same length, and the answer and
# wrong token the metric compares. The induction task repeats a block of random tokens; the
# corrupted prompts replace the first block, so nothing can be copied.

# %%
task = ik.tasks.load("induction", model, n=16, seed=0)
values = ik.metrics.clean_and_corrupt(model, task)
print(f"logit difference: clean {values['clean']:+.2f}, corrupt {values['corrupt']:+.2f}")

# %% [markdown]
# `ik.cache.run` keeps only the activations asked for; labels like `L1H0` or `L1.resid_pre`
# name them. Here: the attention patterns, and the head scores read from them.

# %%
patterns = head_patterns(model, task.clean)  # (layer, batch, head, q_pos, k_pos)
induction = induction_scores(patterns, task.clean)
previous = previous_token_scores(patterns)
labels = {"layer": [f"L{i}" for i in range(model.cfg.n_layers)], "head": [f"H{h}" for h in range(model.cfg.n_heads)]}
plots.heatmap(ik.Result(induction, ("layer", "head"), labels, metric="induction score"), signed=False, zmax=1.0)

# %%
layer, head = divmod(int(induction.argmax()), model.cfg.n_heads)
plots.attention_pattern(
    patterns[:, 0].reshape(-1, *patterns.shape[-2:]),  # every head of the first prompt, with a head picker
    model.to_str_tokens(task.clean[0]),
    head_labels=[f"L{lay}H{h}" for lay in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)],
    scores=induction.flatten().tolist(),
    score_name="induction score",
)

# %% [markdown]
# Hooks use TransformerLens's signature `fn(activation, hook)` and are always removed on exit.
# Zeroing the strongest induction head's output:


# %%
def zero_head(z, hook):
    z = z.clone()
    z[:, :, head] = 0.0
    return z


with ik.hooks.hooks(model, fwd=[(f"blocks.{layer}.attn.hook_z", zero_head)]):
    ablated = ik.metrics.evaluate(model(task.clean), task).mean()
print(f"L{layer}H{head} zeroed: logit difference {float(ablated):+.2f} (clean {values['clean']:+.2f})")

# %% [markdown]
# Direct logit attribution: every head's (and MLP's) direct contribution to the logit
# difference at the answer position, from one cached run.

# %%
cache = ik.cache.run(model, task)
attrs = cache.logit_attrs(task.answer, task.wrong)  # (component, batch, pos)
at_answer = attrs.scores[:, torch.arange(len(task)), task.answer_pos]
dla = ik.Result(at_answer, ("component", "batch"), attrs.labels, metric="logit_diff", kind="direct logit attribution")
plots.dla_bars(dla, top=10)
