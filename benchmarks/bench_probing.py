"""Benchmark: interpkit's batched logistic probes on every layer against scikit-learn, same run.

Usage:
    python benchmarks/bench_probing.py [--threads 1] [--n 3000] [--repeats 3] [--model smollm2-135m]
                                       [--cache runs/bench_probing/dataset] [--out runs/bench_probing]

Data: ``--n`` subject-number sentences generated from ``experiments/data/subject_number_vocab.json``
("The keys near the old cabinet" -> plural), the embedded model's residual stream
(``L{l}.resid_post``) at the last token of every layer, split 60/20/20 by example (seeded).
The activations are collected once and kept in ``--cache`` (delete it to collect again).

Both sides do the same work: standardised features, an L2 penalty with the same grid of strengths
(``C = 1 / (l2 * n_train)`` in scikit-learn's terms), the strength chosen per layer by validation
log-loss, test accuracy of the chosen probe. Also compared: test accuracy at every strength (the
solvers' agreement, free of the selection step).

- interpkit: ``ik.probing.fit_probes(ds, "logistic")``: every layer and every strength in one
  batched L-BFGS (see ``interpkit.probing._fit``);
- scikit-learn: ``StandardScaler`` + ``LogisticRegression(C=..., max_iter=1000)`` (lbfgs), one fit
  per layer per strength. Also timed: one fit per layer at the strength interpkit chose (what
  scikit-learn would cost if it were told the answer).

Times are the median of ``--repeats`` runs on each side (after one warm-up fit of one layer).
Pass criteria (from the issue): >= 5x faster than the scikit-learn grid, test accuracy within
1 point on every layer. Torch, numpy and scikit-learn threads are pinned to ``--threads``.
scikit-learn is needed here only (``pip install scikit-learn``); interpkit does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

import interpkit as ik
from interpkit.probing import ProbeDataset, collect, fit_probes
from interpkit.probing._probes import evaluate
from interpkit.results import json_text, make_provenance, write_text_atomic

VOCAB = Path(__file__).resolve().parents[1] / "experiments" / "data" / "subject_number_vocab.json"


def sentences(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` random subject-number sentences and their labels (balanced in expectation)."""
    vocab = json.loads(VOCAB.read_text())
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        singular, plural = rng.choice(vocab["nouns"])
        is_plural = rng.random() < 0.5
        attractor = rng.choice(vocab["attractors"])[rng.random() < 0.5]
        texts.append(f"The {plural if is_plural else singular} {rng.choice(vocab['prepositions'])} {attractor}")
        labels.append("plural" if is_plural else "singular")
    return texts, labels


def dataset(args: argparse.Namespace) -> tuple[ProbeDataset, float | None]:
    cache = Path(args.cache)
    if (cache / "dataset.json").is_file():
        ds = ProbeDataset.load(cache)
        if len(ds) == args.n and ds.meta.get("model", {}).get("model") == args.model:
            return ds, None
    model = ik.load_model(args.model)
    texts, labels = sentences(args.n, args.seed)
    start = time.perf_counter()
    ds = collect(model, texts, labels, positions="last", batch_size=64, seed=args.seed)
    seconds = time.perf_counter() - start
    ds.save(cache)
    return ds, seconds


def sklearn_grid(
    ds: ProbeDataset, grid: list[float], only: list[float] | None = None
) -> tuple[float, list, list, list]:
    """Seconds, chosen test accuracy, chosen strength and test accuracy at every strength, per layer."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    tr, va, te = (ds.rows(s).cpu().numpy() for s in ("train", "val", "test"))
    y = ds.y.cpu().numpy()
    accs, chosen, every = [], [], []
    start = time.perf_counter()
    for site in range(len(ds.sites)):
        X = ds.acts[site].cpu().numpy().astype(np.float64)
        scaler = StandardScaler().fit(X[tr])
        x_tr, x_va, x_te = scaler.transform(X[tr]), scaler.transform(X[va]), scaler.transform(X[te])
        best, row = None, []
        for l2 in [only[site]] if only else grid:
            clf = LogisticRegression(C=1.0 / (l2 * len(tr)), max_iter=1000).fit(x_tr, y[tr])
            loss = log_loss(y[va], clf.predict_proba(x_va), labels=[0, 1])
            row.append(float(clf.score(x_te, y[te])))
            if best is None or loss < best[0]:
                best = (loss, row[-1], l2)
        accs.append(best[1])
        chosen.append(best[2])
        every.append(row)
    return time.perf_counter() - start, accs, chosen, every


def ours_every_strength(ds: ProbeDataset) -> list[list[float]]:
    """interpkit's test accuracy at every strength of the grid, per layer (not timed)."""
    from interpkit.probing._fit import fit_batched

    tr, va, te = ds.rows("train"), ds.rows("val"), ds.rows("test")
    fit = fit_batched("logistic", ds.acts[:, tr], ds.y[None, tr], ds.acts[:, va], ds.y[None, va], 2)
    body, bias = fit.candidates  # (site, 1, strength, 1, d), (site, 1, strength, 1)
    z = torch.einsum("smd,skd->skm", ds.acts[:, te].float(), body[:, 0, :, 0]) + bias[:, 0, :, :]
    return ((z > 0).long() == ds.y[te]).float().mean(-1).tolist()


def _runs(times: list[float]) -> str:
    return "(median of " + ", ".join(f"{t:.2f}" for t in times) + ")"


def pin_threads(threads: int) -> None:
    """Pin torch's, numpy's, scipy's and scikit-learn's thread pools to ``threads``; exit if one escapes.

    scikit-learn's OpenMP and scipy's own OpenBLAS load with their modules, so they are imported
    first: a limit set before would miss them, and they would run a thread per core (on a busy
    machine, several times slower than one).
    """
    import scipy.optimize  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_info, threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    unpinned = [i["filepath"] for i in threadpool_info() if i["num_threads"] != threads]
    if unpinned:
        raise SystemExit(f"thread pools not pinned to {threads}: {unpinned}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median is reported")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cache", default="runs/bench_probing/dataset")
    parser.add_argument("--out", default="runs/bench_probing")
    args = parser.parse_args()
    pin_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()} (numpy / scikit-learn BLAS pinned to {args.threads})")
    ds, collect_s = dataset(args)
    print(ds, f"(collected in {collect_s:.1f} s)" if collect_s else "(from cache)")

    fit_probes(ds.select_sites(ds.sites[:1]), "logistic")  # warm-up: first-call costs of torch kernels
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        probes = fit_probes(ds, "logistic")
        times.append(time.perf_counter() - start)
    ours_s = statistics.median(times)
    values, _, _ = evaluate(probes, ds, "test")
    ours = values[:, 0].tolist()
    grid = probes.l2_grid.tolist()
    print(f"interpkit: {ours_s:.2f} s for {len(ds.sites)} layers x {len(grid)} strengths {_runs(times)}", flush=True)

    sk_times = []
    for _ in range(args.repeats):
        seconds, sk, sk_chosen, sk_every = sklearn_grid(ds, grid)
        sk_times.append(seconds)
    sk_s = statistics.median(sk_times)
    print(f"scikit-learn grid: {sk_s:.2f} s {_runs(sk_times)}", flush=True)
    sk1_s, _, _, _ = sklearn_grid(ds, grid, only=probes.l2.tolist())
    print(f"scikit-learn at interpkit's chosen strengths only: {sk1_s:.2f} s", flush=True)
    every = ours_every_strength(ds)
    every_diff = max(abs(a - b) for r1, r2 in zip(every, sk_every, strict=True) for a, b in zip(r1, r2, strict=True))

    diffs = [abs(a - b) for a, b in zip(ours, sk, strict=True)]
    print(f"\n{'site':<16}{'interpkit':>10}{'sklearn':>10}{'diff':>8}{'l2 ours':>10}{'l2 sk':>10}")
    for i, site in enumerate(ds.sites):
        print(f"{site:<16}{ours[i]:>10.3f}{sk[i]:>10.3f}{diffs[i]:>8.3f}{probes.l2[i]:>10.0e}{sk_chosen[i]:>10.0e}")
    speedup = sk_s / ours_s
    print(f"\nspeedup vs scikit-learn grid: {speedup:.1f}x (needs >= 5x); vs one fit per layer: {sk1_s / ours_s:.1f}x")
    print(f"max |test accuracy difference|: {100 * max(diffs):.2f} points (needs <= 1)")
    print(
        f"max |test accuracy difference| at equal strength, over all layers and strengths: {100 * every_diff:.2f} points"
    )
    report = {
        "threads": torch.get_num_threads(),
        "rows": {"train": len(ds.rows("train")), "val": len(ds.rows("val")), "test": len(ds.rows("test"))},
        "sites": ds.sites,
        "l2_grid": grid,
        "interpkit_s": round(ours_s, 3),
        "interpkit_runs_s": [round(t, 3) for t in times],
        "sklearn_grid_s": round(sk_s, 3),
        "sklearn_grid_runs_s": [round(t, 3) for t in sk_times],
        "sklearn_one_strength_s": round(sk1_s, 3),
        "speedup": round(speedup, 2),
        "interpkit_acc": ours,
        "sklearn_acc": sk,
        "max_abs_diff_points": round(100 * max(diffs), 3),
        "max_abs_diff_points_every_strength": round(100 * every_diff, 3),
        "interpkit_acc_every_strength": every,
        "sklearn_acc_every_strength": sk_every,
        "passed": speedup >= 5 and max(diffs) <= 0.01 + 1e-9,
        "spec": {**make_provenance(seed=args.seed), **ds.meta.get("model", {})},
    }
    path = write_text_atomic(Path(args.out) / "result.json", json_text(report) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
