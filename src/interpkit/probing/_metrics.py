"""Probe metrics with standard errors, for every site (and replicate) at once.

- accuracy, with a standard error clustered by example (rows of one example are not independent);
- balanced accuracy (mean recall over classes), standard error by the delta method
  ``sqrt(sum_c r_c (1 - r_c) / n_c) / C``;
- ROC AUC (one-vs-rest macro average for more than two classes) from average ranks (ties count
  one half), standard error by Hanley and McNeil (1982);
- R^2 for regression, ``1 - MSE / Var(y)``, standard error from the clustered standard error of
  the MSE (the variance of ``y`` treated as known).

All functions take scores ``(..., row, out)`` and return ``(values, ses)`` shaped ``(...,)``.

    >>> import torch
    >>> from interpkit.probing._metrics import accuracy
    >>> acc, se = accuracy(torch.tensor([[1.0], [-1.0], [2.0]]), torch.tensor([1, 0, 0]), torch.arange(3))
    >>> round(float(acc), 4)
    0.6667
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CLASSIFICATION = ("accuracy", "balanced_accuracy", "auc")
REGRESSION = ("r2", "mse")


def predict(scores: torch.Tensor) -> torch.Tensor:
    """Class index per row from logits ``(..., row, out)`` (a single logit means two classes)."""
    return (scores[..., 0] > 0).long() if scores.shape[-1] == 1 else scores.argmax(-1)


def _cluster_se(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean of ``values (..., row)`` with rows clustered by ``groups``."""
    import torch

    _, g = groups.unique(return_inverse=True)
    n_groups = int(g.max()) + 1
    mean = values.mean(-1, keepdim=True)
    sums = torch.zeros((*values.shape[:-1], n_groups), dtype=values.dtype, device=values.device)
    sums.index_add_(values.ndim - 1, g, values - mean)
    n = values.shape[-1]
    correction = n_groups / max(n_groups - 1, 1)
    return (sums.pow(2).sum(-1) * correction).sqrt() / n


def accuracy(scores: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    correct = (predict(scores) == y).double()
    return correct.mean(-1), _cluster_se(correct, groups)


def balanced_accuracy(scores: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    pred = predict(scores)
    recalls, variances = [], []
    for c in range(n_classes):
        mask = (y == c).expand_as(pred)
        n_c = mask.sum(-1).double()
        r = ((pred == c) & mask).sum(-1).double() / n_c  # NaN where the class is absent
        recalls.append(r)
        variances.append(r * (1 - r) / n_c)
    r, v = torch.stack(recalls), torch.stack(variances)
    present = (~r.isnan()).sum(0).clamp_min(1)
    return r.nanmean(0), v.nansum(0).sqrt() / present


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last axis, ties sharing their average rank."""
    import torch

    ordered = x.sort(-1).values.contiguous()
    lo = torch.searchsorted(ordered, x.contiguous(), right=False)
    hi = torch.searchsorted(ordered, x.contiguous(), right=True)
    return (lo + hi + 1).double() / 2


def _binary_auc(score: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ROC AUC (Mann-Whitney) and its Hanley-McNeil standard error along the last axis; NaN if one class is absent."""
    positive = positive.expand_as(score).double()
    n1 = positive.sum(-1)
    n0 = score.shape[-1] - n1
    ranks = _average_ranks(score.double())
    auc = ((ranks * positive).sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n1 * n0)
    return auc, var.clamp_min(0).sqrt()


def auc(scores: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    if scores.shape[-1] == 1:
        return _binary_auc(scores[..., 0], y == 1)
    probs = scores.double().softmax(-1)
    values, ses = zip(*(_binary_auc(probs[..., c], y == c) for c in range(n_classes)), strict=True)
    v, s = torch.stack(values), torch.stack(ses)
    return v.nanmean(0), s.pow(2).nansum(0).sqrt() / (~v.isnan()).sum(0).clamp_min(1)


def r2(pred: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    err = (pred.double() - y.double()) ** 2
    var = y.double().var(-1, unbiased=False).clamp_min(1e-12)
    return 1 - err.mean(-1) / var, _cluster_se(err, groups) / var


def classification_metrics(
    scores: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, ses)`` shaped ``(..., 3)``: accuracy, balanced accuracy, AUC."""
    import torch

    pairs = [accuracy(scores, y, groups), balanced_accuracy(scores, y, n_classes), auc(scores, y, n_classes)]
    return torch.stack([p[0] for p in pairs], -1), torch.stack([p[1] for p in pairs], -1)


def regression_metrics(
    scores: torch.Tensor, y: torch.Tensor, groups: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, ses)`` shaped ``(..., 2)``: R^2 and MSE."""
    import torch

    pred = scores[..., 0]
    value, se = r2(pred, y, groups)
    err = (pred.double() - y.double()) ** 2
    return torch.stack([value, err.mean(-1)], -1), torch.stack([se, _cluster_se(err, groups)], -1)
