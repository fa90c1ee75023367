"""Seeded, stratified train / validation / test splits made over examples, not rows.

Every row (token) of one example lands on the same side, so a probe is never tested on a token
whose neighbours it was trained on. Classification data is stratified by each example's label
(its first row's label when labels are per token); regression data by quintile of the target.

    >>> import torch
    >>> from interpkit.probing._splits import split_examples
    >>> split_examples(torch.tensor([0, 0, 0, 1, 1, 1]), (0.34, 0.33, 0.33), seed=0).bincount()
    tensor([2, 2, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from interpkit.probing._errors import ProbeError

if TYPE_CHECKING:
    import torch

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "val": VAL, "test": TEST}


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise ProbeError(
            f"split fractions must be three non-negative numbers (train, val, test) summing to 1 "
            f"with train > 0; got {tuple(fractions)}"
        )
    return float(fractions[0]), float(fractions[1]), float(fractions[2])


def split_examples(strata: torch.Tensor, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> torch.Tensor:
    """Split id (0 train, 1 val, 2 test) per example, stratified by ``strata`` (one int per example).

    Each stratum of at least three examples puts at least one in every split with a positive
    fraction; the rest follow the fractions, rounded.
    """
    import torch

    _, f_val, f_test = check_fractions(fractions)
    gen = torch.Generator().manual_seed(seed)
    strata = strata.cpu().long()
    out = torch.full((len(strata),), TRAIN, dtype=torch.long)
    for value in strata.unique().tolist():
        members = torch.nonzero(strata == value)[:, 0]
        members = members[torch.randperm(len(members), generator=gen)]
        n = len(members)
        n_test = round(n * f_test)
        n_val = round(n * f_val)
        if n >= 3:
            n_test = max(n_test, 1 if f_test > 0 else 0)
            n_val = max(n_val, 1 if f_val > 0 else 0)
            n_test = min(n_test, n - 1 - (1 if f_val > 0 else 0))
            n_val = min(n_val, n - 1 - n_test)
        else:
            n_test, n_val = 0, 0
        out[members[:n_test]] = TEST
        out[members[n_test : n_test + n_val]] = VAL
    return out


def regression_strata(values: torch.Tensor, bins: int = 5) -> torch.Tensor:
    """Quantile bin (0..bins-1) of each value: strata for splitting regression targets."""
    import torch

    values = values.cpu().double()
    edges = torch.quantile(values, torch.linspace(0, 1, bins + 1, dtype=torch.double)[1:-1])
    return torch.bucketize(values, edges)


def subsample(strata: torch.Tensor, candidates: torch.Tensor, n_examples: int, seed: int = 0) -> torch.Tensor:
    """``n_examples`` of the example ids ``candidates``, stratified by ``strata`` (one per example), seeded."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cand_strata = strata.cpu()[candidates.cpu()]
    keep: list[torch.Tensor] = []
    for value in cand_strata.unique().tolist():
        members = candidates.cpu()[cand_strata == value]
        members = members[torch.randperm(len(members), generator=gen)]
        take = max(1, round(n_examples * len(members) / len(candidates)))
        keep.append(members[:take])
    return torch.cat(keep).sort().values
