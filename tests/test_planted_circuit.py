"""A hand-built induction circuit with one-hot positional keys and saturated attention.

Layer 0's head attends from each position to the one before it through one-hot positional
queries and keys, and copies that token into a "previous token" subspace; layer 1's head matches
the current token against that subspace and copies the matched position's token into an output
subspace the unembedding reads. Attention is saturated (scores of about 35): adding one vector to
every key (or every query, for one-hot keys) leaves every pattern unchanged to the last bit, the
invariance that made a perturbation-based liveness check call ``hook_k``/``hook_q`` unread.
"""

from __future__ import annotations

import pytest
import torch

import interpkit as ik
from interpkit.attribution.edge_exact import dead_hooks
from interpkit.hooks import hooks
from interpkit.tasks import from_token_lists

V, N, BIG = 8, 8, 100.0
TOK, POS, PREV, OUT = 0, V, V + N, V + N + V  # the residual stream's four subspaces
PLANTED = {
    "embed->L0H0.q",  # position (query side of the previous-token head)
    "embed->L0H0.k",  # position (key side)
    "embed->L0H0.v",  # the token it copies
    "embed->L1H0.q",  # the current token
    "L0H0->L1H0.k",  # the previous token the induction head matches on
    "embed->L1H0.v",  # the token it copies
    "L1H0->logits",
}


@pytest.fixture(scope="module")
def planted():
    model = ik.models.boot_native(
        {"d_model": OUT + V, "d_head": V, "n_layers": 2, "n_ctx": N, "n_heads": 1, "d_vocab": V, "attn_only": True,
         "normalization_type": None, "positional_embedding_type": "standard"},
    )  # fmt: skip
    sd = {k: torch.zeros_like(v) for k, v in model.bridge.state_dict().items()}
    eye = torch.eye(V)
    sd["embed.weight"][:, TOK : TOK + V] = eye
    sd["pos_embed.weight"][:, POS : POS + N] = torch.eye(N)
    for p in range(1, N):  # layer 0: position p queries position p - 1 (one-hot keys)
        sd["blocks.0.attn.q.weight"][p - 1, POS + p] = BIG
    sd["blocks.0.attn.k.weight"][:, POS : POS + N] = torch.eye(N)
    sd["blocks.0.attn.v.weight"][:, TOK : TOK + V] = eye
    sd["blocks.0.attn.o.weight"][PREV : PREV + V, :] = eye
    sd["blocks.1.attn.q.weight"][:, TOK : TOK + V] = BIG * eye  # layer 1: the current token ...
    sd["blocks.1.attn.k.weight"][:, PREV : PREV + V] = eye  # ... against the previous token
    sd["blocks.1.attn.v.weight"][:, TOK : TOK + V] = eye
    sd["blocks.1.attn.o.weight"][OUT : OUT + V, :] = eye
    sd["unembed.weight"][:, OUT : OUT + V] = 10 * eye
    model.bridge.load_state_dict(sd)
    g = torch.Generator().manual_seed(0)
    clean, corrupt, answer, wrong = [], [], [], []
    for _ in range(8):  # [a b c d] [a b c] -> d; the corrupt prompt's first half is other tokens
        first = torch.randperm(V, generator=g)[:4].tolist()
        other = [t for t in range(V) if t not in first]
        clean.append(first + first[:3])
        corrupt.append(other + first[:3])
        answer.append(first[3])
        wrong.append(other[3])
    task = from_token_lists("planted induction", model, clean, corrupt, answer, wrong)
    return model, task


def test_the_planted_model_is_saturated_and_shift_invariant(planted):
    model, task = planted
    base = model(task.clean)
    assert ik.metrics.clean_and_corrupt(model, task)["clean"] > 5  # it does induction
    for name in ("blocks.0.attn.hook_k", "blocks.1.attn.hook_q"):
        with torch.no_grad(), hooks(model, fwd=[(name, lambda act, hook: act + act.std() + 1.0)]):
            assert torch.equal(model(task.clean), base), name  # a shift of every key changes nothing


def test_liveness_is_structural(planted):
    model, task = planted
    names = [f"blocks.{layer}.attn.hook_{k}" for layer in range(2) for k in "qkv"]
    assert dead_hooks(model, names, task.clean[:1]) == []


def test_discovery_with_the_default_check_finds_the_planted_circuit(planted):
    model, task = planted
    circ = ik.discover_circuit(model, task, "eap-ig", direction="noise", n_edges=7)  # default exactness check on
    assert set(circ.edges) == PLANTED
    exact = ik.attribution.edge_scores(model, task, "exact", direction="noise")
    assert {label.removeprefix("edge=") for label, _ in exact.top(7)} == PLANTED
    # the default size: the smallest circuit reaching 0.9 faithfulness. Under the counterfactual
    # ablation it is the four edges whose values differ between the prompts (positions, and the
    # query's token, are the same in both); under zero ablation it is the whole planted circuit
    found = ik.discover_circuit(model, task, "exact", direction="noise")
    assert found.meta["reached"] and found.meta["faithfulness"] >= 0.9 and found.meta["ablation"] == "counterfactual"
    assert set(found.edges) == {"embed->L0H0.v", "L0H0->L1H0.k", "embed->L1H0.v", "L1H0->logits"}
    removal = ik.circuits.edge_removal_scores(model, task, "zero")
    zero = ik.discover_circuit(model, task, scores=removal, ablation="zero")
    assert set(zero.edges) == PLANTED and zero.meta["faithfulness"] >= 0.9
