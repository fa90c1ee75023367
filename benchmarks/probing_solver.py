"""The logistic probes' solver on the embedded model: passes over the data by preconditioner rank,
seconds by the size of the groups of layers fitted together, and how close to the optimum it
stops against scikit-learn at the same tolerance.

Usage:
    python benchmarks/probing_solver.py [--threads 1] [--ranks 8,32,64,128] [--groups 0,8,16,32]
                                        [--cache runs/bench_probing/dataset]

Reads the activations ``benchmarks/bench_probing.py`` collected (run it first).

- passes: every product of a layer's activations with the parameters (a score or a gradient pass)
  is counted once per layer, for ``fit_probes`` on all 30 layers and 5 strengths at each rank;
- groups: the same fit (at the default rank) with the layers batched in groups of at most
  ``--groups`` MiB of data each (0: all 30 layers in one batch), the median of 3 runs;
- convergence: on every 6th row of 5 layers (300 rows), interpkit at ``tol=1e-4`` and
  scikit-learn's ``LogisticRegression`` at ``tol=1e-4`` (its default) against scikit-learn at
  ``tol=1e-8`` (the optimum), as the worst relative excess of the penalised objective over
  layers and strengths, on five problems: the data as is, three classes, fewer rows than
  features, 20 features offset by about 1e5 standard deviations, and 4 constant features.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from interpkit.probing import ProbeDataset
from interpkit.probing import _fit as fit_module
from interpkit.probing._logistic import LogisticLoss
from interpkit.probing._probes import split_xy


def count_passes(X, y, Xv, yv, rank: int, group_bytes: int | None = None) -> tuple[int, float]:
    """Layer-passes and seconds of one fit at ``rank``, in groups of ``group_bytes`` (None: the default)."""
    count = [0]
    scores, at = LogisticLoss.scores, LogisticLoss._at

    def counted_scores(self, theta):
        count[0] += theta.shape[0]
        return scores(self, theta)

    def counted_at(self, theta, z, loss=None):
        count[0] += theta.shape[0]
        return at(self, theta, z, loss)

    LogisticLoss.scores, LogisticLoss._at = counted_scores, counted_at
    try:
        start = time.perf_counter()
        fit_module.fit_logistic(X, y[None], Xv, yv[None], 2, rank=rank, group_bytes=group_bytes)
        return count[0], time.perf_counter() - start
    finally:
        LogisticLoss.scores, LogisticLoss._at = scores, at


def objective(X, y, w, b, l2, scale) -> float:
    """Mean cross-entropy plus ``l2 / 2 ||w * scale||^2`` (the penalty on standardised features), float64."""
    z = X.double() @ w.double().T + b.double()
    if w.shape[0] == 1:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], y.double())
    else:
        loss = torch.nn.functional.cross_entropy(z, y)
    return float(loss) + 0.5 * l2 * float(((w.double() * scale) ** 2).sum())


def excess(X, y, Xv, yv, n_classes, grid=(1e-4, 1e-2, 1.0)) -> tuple[float, float]:
    """Worst relative objective excess over scikit-learn at tol=1e-8: (interpkit, scikit-learn at 1e-4)."""
    from sklearn.linear_model import LogisticRegression

    body, bias = fit_module.fit_batched("logistic", X, y[None], Xv, yv[None], n_classes, l2=list(grid)).candidates
    ours = theirs = 0.0
    for s in range(X.shape[0]):
        x = X[s].double()
        mean, scale = x.mean(0), fit_module._safe_scale(x.std(0))
        xs = ((x - mean) / scale).numpy()
        for k, l2 in enumerate(grid):
            values = []
            for tol in (1e-8, 1e-4):
                clf = LogisticRegression(C=1.0 / (l2 * len(x)), max_iter=5000, tol=tol).fit(xs, y.numpy())
                w = torch.tensor(clf.coef_) / scale
                values.append(objective(x, y, w, torch.tensor(clf.intercept_) - w @ mean, l2, scale))
            best, sk = values
            mine = objective(x, y, body[s, 0, k], bias[s, 0, k], l2, scale)
            ours, theirs = max(ours, (mine - best) / abs(best)), max(theirs, (sk - best) / abs(best))
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ranks", default="8,32,64,128")
    parser.add_argument("--groups", default="0,8,16,32", help="MiB of data per group of layers (0: one batch)")
    parser.add_argument("--cache", default="runs/bench_probing/dataset")
    args = parser.parse_args()
    import bench_probing

    bench_probing.pin_threads(args.threads)
    ds = ProbeDataset.load(args.cache)
    X, y, _ = split_xy(ds, "train")
    Xv, yv, _ = split_xy(ds, "val")
    X, Xv = X.float(), Xv.float()
    print(f"{'rank':>6}{'layer passes':>14}{'seconds':>9}")
    for rank in (int(r) for r in args.ranks.split(",")):
        passes, seconds = count_passes(X, y, Xv, yv, rank)
        print(f"{rank:>6}{passes:>14}{seconds:>9.2f}")
    print(f"\n{'group MiB':>10}{'layers':>8}{'layer passes':>14}{'seconds (median of 3)':>23}")
    per_layer = X.shape[1] * (X.shape[2] + 1) * 4
    for mib in (int(g) for g in args.groups.split(",")):
        runs = [count_passes(X, y, Xv, yv, fit_module.PRECONDITIONER_RANK, mib << 20) for _ in range(3)]
        layers = len(X) if mib == 0 else max(1, (mib << 20) // per_layer)
        print(f"{mib:>10}{layers:>8}{runs[0][0]:>14}{statistics.median(r[1] for r in runs):>23.2f}")

    X, Xv = X[::6], Xv[::6]  # 5 layers
    three = [((a[2, :, 7] > a[2, :, 7].median()).long() + (a[2, :, 9] > a[2, :, 9].median()).long()) for a in (X, Xv)]
    offset, offset_v = X.clone(), Xv.clone()
    for a in (offset, offset_v):
        a[:, :, :20] = a[:, :, :20] * 0.01 + 1000.0
    constant = X.clone()
    constant[:, :, 5:9] = 3.0
    problems = {
        "two classes": (X, y, Xv, yv, 2),
        "three classes": (X, three[0], Xv, three[1], 3),
        "200 rows, 576 features": (X[:, :200], y[:200], Xv, yv, 2),
        "20 features offset": (offset, y, offset_v, yv, 2),
        "4 constant features": (constant, y, Xv, yv, 2),
    }
    print(f"\n{'worst relative excess over the optimum':<40}{'interpkit':>11}{'sklearn 1e-4':>14}")
    for name, problem in problems.items():
        ours, theirs = excess(*problem)
        print(f"{name:<40}{ours:>11.2e}{theirs:>14.2e}")


if __name__ == "__main__":
    main()
