"""Head scores (interpkit.attribution.head_scores) and the shipped ``toy-induction`` model.

Unit tests build attention patterns by hand; the model tests recompute the scores recorded in
``config.json`` by ``experiments/train_toy_induction.py`` on a fresh batch drawn here.
"""

from __future__ import annotations

import pytest
import torch

from interpkit.attribution.head_scores import head_patterns, induction_scores, previous_token_scores
from interpkit.models import boot_native, load_model

THRESHOLD = 0.5
TOLERANCE = 0.05


# ---------------------------------------------------------------------------------- hand-built patterns
def _previous_token_pattern(pos: int) -> torch.Tensor:
    """(pos, pos): every query attends fully to the position before it (position 0 to itself)."""
    pattern = torch.zeros(pos, pos)
    pattern[0, 0] = 1.0
    pattern[torch.arange(1, pos), torch.arange(pos - 1)] = 1.0
    return pattern


def _uniform_pattern(pos: int) -> torch.Tensor:
    causal = torch.ones(pos, pos).tril()
    return causal / causal.sum(-1, keepdim=True)


def _tiled(period: int, pos: int, offset: int = 0) -> torch.Tensor:
    """(pos,) distinct tokens ``offset, offset + 1, ...`` tiled with ``period``."""
    return torch.arange(pos) % period + offset


def _induction_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """(pos, pos): attend to the token after the most recent earlier occurrence, else to position 0."""
    pos = tokens.shape[0]
    pattern = torch.zeros(pos, pos)
    for q in range(pos):
        earlier = [k for k in range(q) if tokens[k] == tokens[q]]
        pattern[q, earlier[-1] + 1 if earlier else 0] = 1.0
    return pattern


def _reference_induction_scores(patterns: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Literal loop over (layer, head, batch, query): the definition, slowly."""
    n_layers, batch, n_heads, pos, _ = patterns.shape
    out = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            values = []
            for b in range(batch):
                for q in range(pos):
                    earlier = [k for k in range(q) if tokens[b, k] == tokens[b, q]]
                    if earlier:
                        values.append(patterns[layer, b, head, q, earlier[-1] + 1].item())
            out[layer, head] = sum(values) / len(values)
    return out


def _random_patterns(n_layers: int, batch: int, n_heads: int, pos: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_layers, batch, n_heads, pos, pos, generator=g) * 3
    scores = scores.masked_fill(torch.ones(pos, pos, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


def test_exact_previous_token_pattern_scores_one() -> None:
    pattern = _previous_token_pattern(12)[None, None, None]  # (layer, batch, head, q, k)
    assert previous_token_scores(pattern).item() == pytest.approx(1.0)


def test_uniform_pattern_scores_low() -> None:
    pos = 32
    expected = sum(1 / (i + 1) for i in range(1, pos)) / (pos - 1)
    score = previous_token_scores(_uniform_pattern(pos)[None, None, None]).item()
    assert score == pytest.approx(expected)
    assert score < 0.2
    tokens = _tiled(5, pos)[None]
    assert induction_scores(_uniform_pattern(pos)[None, None, None], tokens).item() < 0.2


def test_exact_induction_pattern_scores_one_and_previous_token_pattern_zero() -> None:
    tokens = _tiled(5, 24)
    induction = _induction_pattern(tokens)[None, None, None]
    previous = _previous_token_pattern(24)[None, None, None]
    assert induction_scores(induction, tokens[None]).item() == pytest.approx(1.0)
    assert induction_scores(previous, tokens[None]).item() == pytest.approx(0.0)
    # An induction head is no previous-token head: with period 5 it never looks one position back.
    assert previous_token_scores(induction).item() < 0.1


def test_induction_uses_most_recent_occurrence() -> None:
    # Period 4, four copies: attending to the successor of the *first* copy is not the target
    # once a later copy exists.
    tokens = _tiled(4, 16)
    first_copy = torch.zeros(16, 16)
    for q in range(16):
        first_copy[q, q % 4 + 1 if q >= 4 else 0] = 1.0
    score = induction_scores(first_copy[None, None, None], tokens[None]).item()
    # Only the queries of the second copy (positions 4..7) have the first copy as most recent.
    assert score == pytest.approx(4 / 12)


def test_scores_land_in_the_right_layer_and_head() -> None:
    pos = 20
    tokens = torch.stack([_tiled(6, pos), _tiled(7, pos, offset=50)])  # (batch, pos)
    patterns = _uniform_pattern(pos).expand(2, 2, 3, pos, pos).clone()  # (layer, batch, head, q, k)
    patterns[0, :, 2] = _previous_token_pattern(pos)
    for b in range(2):
        patterns[1, b, 1] = _induction_pattern(tokens[b])
    prev, ind = previous_token_scores(patterns), induction_scores(patterns, tokens)
    assert prev.shape == ind.shape == (2, 3)
    assert (prev > THRESHOLD).nonzero().tolist() == [[0, 2]]
    assert (ind > THRESHOLD).nonzero().tolist() == [[1, 1]]


def test_list_of_layers_equals_stacked_tensor() -> None:
    patterns = _random_patterns(3, 2, 4, 10, seed=0)
    tokens = torch.randint(0, 4, (2, 10), generator=torch.Generator().manual_seed(1))
    layers = list(patterns)
    torch.testing.assert_close(previous_token_scores(layers), previous_token_scores(patterns))
    torch.testing.assert_close(induction_scores(layers, tokens), induction_scores(patterns, tokens))


def test_induction_matches_literal_reference_on_random_patterns() -> None:
    patterns = _random_patterns(2, 3, 2, 14, seed=2)
    # A small vocabulary makes repeats (and several earlier occurrences) common.
    tokens = torch.randint(0, 5, (3, 14), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(induction_scores(patterns, tokens), _reference_induction_scores(patterns, tokens))


def test_bad_inputs_raise() -> None:
    patterns = _random_patterns(1, 1, 1, 6, seed=0)
    with pytest.raises(ValueError, match="repeats"):
        induction_scores(patterns, torch.arange(6)[None])
    with pytest.raises(ValueError, match="tokens must be"):
        induction_scores(patterns, torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="layer, batch, head"):
        previous_token_scores(patterns[0])


# ---------------------------------------------------------------------------------- the shipped model
def _two_copy_batch(batch: int, pos: int, d_vocab: int, periods: tuple[int, int], seed: int) -> torch.Tensor:
    """(batch, pos): distinct random tokens, then a random block twice, ending at the last position.

    The same layout as the batch the training script scores heads on, drawn independently here.
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        period = int(torch.randint(periods[0], periods[1] + 1, (1,), generator=g))
        perm = torch.randperm(d_vocab, generator=g)
        block, prefix = perm[:period], perm[period : pos - period]
        rows.append(torch.cat([prefix, block, block]))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-induction")


@pytest.fixture(scope="module")
def fresh_batch(toy) -> torch.Tensor:
    training = toy.info["training"]
    periods = (training["min_period"], training["max_period"])
    return _two_copy_batch(256, toy.cfg.n_ctx, toy.cfg.d_vocab, periods, seed=12345)


def _heads(scores: torch.Tensor) -> set[str]:
    return {f"L{layer}H{head}" for layer, head in (scores > THRESHOLD).nonzero().tolist()}


def test_toy_config(toy) -> None:
    cfg = toy.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.n_ctx, cfg.d_vocab) == (2, 4, 128, 64, 128)
    assert cfg.attn_only
    assert toy.info["name"] == "toy-induction"
    assert toy.info["training"]["repeated_token_accuracy"] > 0.9


def test_toy_copies_repeated_tokens(toy, fresh_batch) -> None:
    with torch.inference_mode():
        predicted = toy.bridge(fresh_batch).argmax(-1)[:, :-1]
    seen_before = torch.zeros_like(fresh_batch, dtype=torch.bool)
    for b, row in enumerate(fresh_batch.tolist()):
        seen: set[int] = set()
        for i, token in enumerate(row):
            seen_before[b, i] = token in seen
            seen.add(token)
    mask = seen_before[:, :-1]
    accuracy = (predicted == fresh_batch[:, 1:])[mask].float().mean().item()
    assert accuracy > 0.9


def test_toy_heads_match_recorded(toy, fresh_batch) -> None:
    patterns = head_patterns(toy, fresh_batch)
    assert patterns.shape == (2, 256, 4, 64, 64)
    prev, ind = previous_token_scores(patterns), induction_scores(patterns, fresh_batch)

    prev_heads, ind_heads = _heads(prev), _heads(ind)
    assert {h for h in prev_heads if h.startswith("L0")}, f"no previous-token head in layer 0: {prev}"
    assert {h for h in ind_heads if h.startswith("L1")}, f"no induction head in layer 1: {ind}"
    assert prev_heads == set(toy.info["previous_token_heads"])
    assert ind_heads == set(toy.info["induction_heads"])

    recorded = toy.info["head_scores"]
    torch.testing.assert_close(prev, torch.tensor(recorded["previous_token"]), atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(ind, torch.tensor(recorded["induction"]), atol=TOLERANCE, rtol=0)


def test_untrained_model_has_no_such_heads(toy, fresh_batch) -> None:
    # The same architecture at random init: the thresholds above are not met by chance.
    fields = {k: v for k, v in toy.info["bridge_config"].items() if k != "seed"}
    untrained = boot_native(fields, seed=0)
    patterns = head_patterns(untrained, fresh_batch)
    assert _heads(previous_token_scores(patterns)) == set()
    assert _heads(induction_scores(patterns, fresh_batch)) == set()
