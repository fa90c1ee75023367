"""Causal checks: does the model *use* what the probe reads?

A probe that decodes a property shows the information is there, not that the model relies on it
(Belinkov 2022, "Probing Classifiers: Promises, Shortcomings, and Advances"). These checks edit
the activations along the probe's direction and watch both the probe and the model's behaviour
(the task metric, e.g. the logit difference between the correct and the wrong next token):

- ``inlp``: iterative nullspace projection (Ravfogel et al. 2020): fit a probe, project its
  direction out, refit, ... ; test accuracy after each removal shows how much linearly decodable
  information remains.
- ``remove``: project the probe's subspace (or the INLP subspace) out at one site, at the probed
  positions, and measure the task metric, a probe refitted on the edited activations, and the
  original probe at a later site; removing a random subspace of the same rank is the control.
- ``steer``: add ``scale x sd x direction`` at the probed positions (sd: the spread of the
  training activations along the direction) and measure the metric per class, over a sweep.

    >>> from interpkit.probing import probe, remove, steer, Probes
    >>> probes = Probes.from_result(probe(ds))                          # doctest: +SKIP
    >>> remove(model, ds, probes, sites=["L12.resid_post"]).scores      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.probing._errors import ProbeError

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.probing._dataset import ProbeDataset
    from interpkit.probing._probes import Probes
    from interpkit.results import Result
    from interpkit.tasks import Task


def _project(X: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``X - X Q Q^T`` per site: ``X (site, row, d)``, orthonormal ``Q (site, d, r)``."""
    import torch

    return X - torch.bmm(torch.bmm(X, Q), Q.transpose(1, 2)) if Q.shape[-1] else X


def _refit_accuracy(
    ds: ProbeDataset, X: torch.Tensor, method: str, **options: Any
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Fit on ``X`` (all rows, same sites as ds) and return ``(fit, test accuracy, se)`` per site."""
    from interpkit.probing._fit import fit_batched
    from interpkit.probing._probes import score_rows

    tr, va, te = ds.rows("train"), ds.rows("val"), ds.rows("test")
    y = ds.y
    fit = fit_batched(method, X[:, tr], y[None, tr], X[:, va], y[None, va], ds.n_classes, **options)
    values, ses, _ = score_rows(fit.logits(X[:, te]), y[te], ds.example[te], ds.n_classes)
    return fit, values[:, 0, 0], ses[:, 0, 0]


def inlp(
    ds: ProbeDataset, n_iter: int = 8, method: str = "logistic", sites: Sequence[str] | None = None, **options: Any
) -> Result:
    """Iterative nullspace projection on every (chosen) site at once.

    Result ``(site, removed, stat)``: test accuracy (R^2) of a probe refitted after removing
    ``removed`` directions (0 = the original probe); ``extras["basis"]`` is the removed subspace
    ``(site, d, rank)``, orthonormal.
    """
    import torch

    from interpkit.probing._controls import _result
    from interpkit.probing._probes import readout_basis

    if n_iter < 1:
        raise ProbeError(f"n_iter must be at least 1, got {n_iter}")
    ds = ds.select_sites(list(sites)) if sites is not None else ds
    X = ds.acts.float()
    Q = X.new_zeros((X.shape[0], X.shape[-1], 0))
    values, ses = [], []
    for i in range(n_iter + 1):
        fit, acc, se = _refit_accuracy(ds, _project(X, Q), method, **options)
        values.append(acc)
        ses.append(se)
        if i == n_iter:
            break
        new = readout_basis(fit.weight[:, 0])
        new = new - torch.bmm(Q, torch.bmm(Q.transpose(1, 2), new))  # Gram-Schmidt against what was removed
        new, _ = torch.linalg.qr(new)
        Q = torch.cat([Q, new], -1)
    return _result(
        torch.stack(values, 1),
        torch.stack(ses, 1),
        ds,
        ("site", "removed", "stat"),
        {"site": list(ds.sites), "removed": [str(i) for i in range(len(values))]},
        metric="accuracy" if ds.is_classification else "r2",
        kind="probe_inlp",
        meta={"method": method, "n_iter": n_iter, "directions_per_iteration": int(Q.shape[-1] // n_iter)},
        extras={"basis": Q},
    )


def _random_basis(widths: Sequence[int], d: int, rank: int, seed: int, device: Any) -> torch.Tensor:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros((len(widths), d, rank))
    for i, width in enumerate(widths):
        out[i, :width], _ = torch.linalg.qr(torch.randn(width, rank, generator=gen))
    return out.to(device)


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean()), float(x.std() / max(len(x), 1) ** 0.5) if len(x) > 1 else 0.0


def remove(
    model: Model,
    ds: ProbeDataset,
    probes: Probes,
    sites: Sequence[str] | None = None,
    method: str = "projection",
    n_iter: int = 8,
    task: Task | None = None,
    metric: str | None = None,
    positions: Any = "probe",
    split: str = "test",
    read_site: str | None = "last",
    seed: int = 0,
    *,
    batch_size: int | None = None,
    **options: Any,
) -> Result:
    """Remove the probe's subspace (``projection``) or the INLP subspace (``inlp``) at each site in turn.

    Result ``(site, quantity, stat)``. Quantities: ``probe_accuracy`` (the original probe),
    ``refit_accuracy`` (a probe refitted on the edited activations: what linear information is
    left), ``metric_clean`` / ``metric_removed`` / ``metric_random`` (the task metric on the
    split's examples: unedited, subspace removed, a random subspace of the same rank removed),
    ``downstream_clean`` / ``downstream_removed`` (the original probe at ``read_site``, by
    default the dataset's last site, after the edit), and ``rank``.
    """
    import torch

    from interpkit.probing._collect import resolve_sites
    from interpkit.probing._controls import _result
    from interpkit.probing._intervene import Edit, dataset_task, edit_positions, project_out, run_items
    from interpkit.probing._metrics import accuracy
    from interpkit.probing._probes import evaluate

    if method not in ("projection", "inlp"):
        raise ProbeError(f"removal method {method!r} is not 'projection' or 'inlp'")
    sites = list(sites) if sites is not None else list(probes.sites)
    sub = ds.select_sites(sites)
    probes_sub = probes.select(sites)
    task = task or dataset_task(model, ds, metric or "logit_diff")
    specs = resolve_sites(model, sites)
    if method == "projection":
        basis = probes_sub.basis().float()
    else:
        basis = inlp(sub, n_iter, probes.method if probes.method != "diff_means" else "logistic", **options).extras[
            "basis"
        ]
    rank = basis.shape[-1]
    random = _random_basis(sub.widths, basis.shape[1], rank, seed, basis.device)
    # Linear information left after the edit, all sites in one fit.
    edited = _project(sub.acts.float(), basis)
    _, refit, refit_se = _refit_accuracy(sub, edited, "logistic" if sub.is_classification else "ridge", **options)
    probe_values, probe_ses, _ = evaluate(probes_sub, sub, "test")
    # The model's behaviour: one unedited config, then (probe subspace, random subspace) per site.
    examples = ds.example[ds.split == {"train": 0, "val": 1, "test": 2}[split]].unique().tolist()
    pos = edit_positions(ds, task, positions)
    edits: list[Any] = [None]
    for i, spec in enumerate(specs):
        w = sub.widths[i]
        edits += [Edit(spec, project_out(basis[i, :w])), Edit(spec, project_out(random[i, :w]))]
    items = [(e, c) for c in range(len(edits)) for e in examples]
    read = None
    if read_site is not None:
        read_name = ds.sites[-1] if read_site == "last" else read_site
        read = resolve_sites(model, [read_name])[0]
        read_probe = probes.select([read_name])
        read_pos = [list(p) for p in ds.source["positions"]]
    values, reads = run_items(
        model, task, items, edits, pos, batch_size, metric, read, read_positions=None if read is None else read_pos
    )
    values = values.view(len(edits), len(examples))
    rows_y = torch.cat([ds.y[ds.example == e] for e in examples])
    rows_g = torch.cat([ds.example[ds.example == e] for e in examples])
    down = []
    if reads is not None:
        per = reads.view(len(edits), -1, reads.shape[-1])
        width = read_probe.weight.shape[1]  # the dataset's padded width; the site's own may be narrower
        per = torch.nn.functional.pad(per, (0, max(width - per.shape[-1], 0)))[..., :width]
        scores = read_probe.scores(per.reshape(1, -1, width)).view(len(edits), per.shape[1], -1)
        down = [accuracy(scores[c], rows_y, rows_g) for c in range(len(edits))] if ds.is_classification else []
    table, errors = [], []
    clean = _mean_se(values[0])
    for i in range(len(specs)):
        removed, rand = _mean_se(values[1 + 2 * i]), _mean_se(values[2 + 2 * i])
        d_clean = (float(down[0][0]), float(down[0][1])) if down else (float("nan"), float("nan"))
        d_removed = (float(down[1 + 2 * i][0]), float(down[1 + 2 * i][1])) if down else (float("nan"), float("nan"))
        row = [
            (float(probe_values[i, 0]), float(probe_ses[i, 0])),
            (float(refit[i]), float(refit_se[i])),
            clean,
            removed,
            rand,
            d_clean,
            d_removed,
            (float(rank), 0.0),
        ]
        table.append([v for v, _ in row])
        errors.append([e for _, e in row])
    quantities = [
        "probe_accuracy",
        "refit_accuracy",
        "metric_clean",
        "metric_removed",
        "metric_random",
        "downstream_clean",
        "downstream_removed",
        "rank",
    ]
    return _result(
        torch.tensor(table),
        torch.tensor(errors),
        sub,
        ("site", "quantity", "stat"),
        {"site": list(sites), "quantity": quantities},
        metric=metric or task.metric,
        kind="probe_removal",
        meta={"method": method, "n_examples": len(examples), "split": split, "read_site": read_site and ds.sites[-1]},
        extras={"basis": basis, "per_example": values.float()},
        seed=seed,
    )


def steer(
    model: Model,
    ds: ProbeDataset,
    probes: Probes,
    site: str,
    scales: Sequence[float] = (-8, -4, -2, -1, 0, 1, 2, 4, 8),
    task: Task | None = None,
    metric: str | None = None,
    positions: Any = "probe",
    split: str = "test",
    *,
    batch_size: int | None = None,
) -> Result:
    """Add ``scale * sd * direction`` at ``site`` for each scale; the task metric per class.

    ``direction`` is the probe's unit direction (towards the second class); ``sd`` is the spread
    of the training activations along it. Result ``(scale, class, stat)`` (mean and se over the
    split's examples of each class); ``meta["class_gap_sd"]`` is the distance between the class
    means along the direction, in sd, for scale.
    """
    import torch

    from interpkit.probing._collect import resolve_sites
    from interpkit.probing._controls import _result
    from interpkit.probing._intervene import Edit, add_vector, dataset_task, edit_positions, run_items

    task = task or dataset_task(model, ds, metric or "logit_diff")
    (i,) = ds.site_index([site])
    spec = resolve_sites(model, [site])[0]
    width = ds.widths[i]
    u = probes.select([site]).direction()[0, :width]
    train = ds.acts[i, ds.rows("train"), :width].float() @ u
    sd = float(train.std())
    gap = float("nan")
    if ds.is_classification and ds.n_classes == 2:
        y = ds.y[ds.rows("train")]
        gap = float((train[y == 1].mean() - train[y == 0].mean()) / sd)
    code = {"train": 0, "val": 1, "test": 2}[split]
    examples = ds.example[ds.split == code].unique()
    edits = [None if s == 0 else Edit(spec, add_vector(float(s) * sd * u)) for s in scales]
    items = [(int(e), c) for c in range(len(edits)) for e in examples.tolist()]
    values, _ = run_items(model, task, items, edits, edit_positions(ds, task, positions), batch_size, metric)
    values = values.view(len(scales), len(examples))
    labels = ds.example_labels()[examples]
    names = ds.classes or ["all"]
    groups = [labels == c for c in range(len(names))] if ds.classes else [torch.ones_like(labels, dtype=torch.bool)]
    mean = torch.stack([torch.stack([values[s][g].double().mean() for g in groups]) for s in range(len(scales))])
    se = torch.stack(
        [
            torch.stack([values[s][g].double().std() / max(int(g.sum()), 1) ** 0.5 for g in groups])
            for s in range(len(scales))
        ]
    )
    return _result(
        mean,
        se,
        ds,
        ("scale", "class", "stat"),
        {"scale": [f"{s:g}" for s in scales], "class": list(names)},
        metric=metric or task.metric,
        kind="probe_steering",
        meta={"site": site, "sd": sd, "class_gap_sd": gap, "scales": list(scales), "n_examples": len(examples)},
    )
