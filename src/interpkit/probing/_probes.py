"""Fitted probes for every site, and the ``probe`` entry point that fits and scores them.

``probe(ds, method)`` is what most users call: it fits one probe per site on the training split
(all sites in one batched optimisation; the L2 strength chosen on the validation split) and
scores it on the test split, with standard errors. The probes' weights travel in the Result's
``extras`` so ``Probes.from_result`` rebuilds them for causal checks.

    >>> import interpkit as ik
    >>> from interpkit.probing import collect, probe
    >>> model = ik.load_model("toy-induction")
    >>> ds = collect(model, [[1, 2, 3], [4, 5, 6], [1, 5, 3], [4, 2, 6]] * 5, ["a", "b", "a", "b"] * 5)
    >>> res = probe(ds, "logistic")
    >>> res.dims, res.labels["metric"]
    (('site', 'metric', 'stat'), ['accuracy', 'balanced_accuracy', 'auc'])
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from interpkit.probing._errors import ProbeError

if TYPE_CHECKING:
    import torch

    from interpkit.probing._dataset import ProbeDataset
    from interpkit.probing._fit import Fit
    from interpkit.results import Result


@dataclasses.dataclass
class Probes:
    """One linear probe per site: ``scores = acts @ weight + bias`` in raw activation space."""

    method: str
    sites: list[str]
    weight: torch.Tensor  # (site, d, out): out = 1 for two classes or regression, else n_classes
    bias: torch.Tensor  # (site, out)
    classes: list[str] | None
    l2: torch.Tensor  # (site,) the strength chosen on validation
    l2_grid: torch.Tensor  # (k,)
    val_score: torch.Tensor  # (site, k) validation score of each strength: -log-loss (logistic), R^2 (ridge)
    mean_direction: torch.Tensor | None = None  # (site, d) diff_means: the class-mean difference

    @classmethod
    def from_fit(cls, fit: Fit, rep: int, method: str, sites: list[str], classes: list[str] | None) -> Probes:
        return cls(
            method,
            sites,
            fit.weight[:, rep],
            fit.bias[:, rep],
            classes,
            fit.l2[:, rep],
            fit.l2_grid,
            fit.val_score[:, rep],
        )

    def scores(self, acts: torch.Tensor) -> torch.Tensor:
        """Logits (or predicted values) ``(site, row, out)`` for activations ``(site, row, d)``."""
        import torch

        return torch.baddbmm(self.bias[:, None, :], acts.to(self.weight.dtype), self.weight)

    def predict(self, acts: torch.Tensor) -> torch.Tensor:
        """Predicted class index (or value) per site and row, ``(site, row)``."""
        from interpkit.probing._metrics import predict

        out = self.scores(acts)
        return predict(out) if self.classes is not None else out[..., 0]

    def basis(self) -> torch.Tensor:
        """An orthonormal basis ``(site, d, rank)`` of what the probe reads (rank 1 for two classes).

        With several classes the softmax ignores a vector common to all classes, so the basis
        spans the class weights minus their mean (rank ``n_classes - 1``). A ``diff_means``
        probe of two classes gives its mean difference, the direction interventions use.
        """
        if self.mean_direction is not None and self.weight.shape[-1] == 1:
            return self.direction()[..., None]
        return readout_basis(self.weight).to(self.weight.dtype)

    def direction(self) -> torch.Tensor:
        """The unit direction ``(site, d)`` towards the last class: the probe's weights, or the
        class-mean difference of a ``diff_means`` probe (Marks and Tegmark's intervention direction)."""
        if self.mean_direction is not None:
            w = self.mean_direction
        else:
            w = self.weight[..., 0] if self.weight.shape[-1] == 1 else readout_basis(self.weight)[..., 0]
        return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def select(self, sites: list[str]) -> Probes:
        """The probes of ``sites`` only; SiteError naming the closest for a site without a probe."""
        from interpkit.errors import SiteError, closest

        missing = [s for s in sites if s not in self.sites]
        if missing:
            near = closest(missing[0], self.sites)
            hint = f"; closest: {', '.join(near)}" if near else ""
            raise SiteError(f"no probe was fitted for site {missing[0]!r}{hint}")
        index = [self.sites.index(s) for s in sites]
        return dataclasses.replace(
            self,
            sites=list(sites),
            weight=self.weight[index],
            bias=self.bias[index],
            l2=self.l2[index],
            val_score=self.val_score[index],
            mean_direction=self.mean_direction[index] if self.mean_direction is not None else None,
        )

    @classmethod
    def from_result(cls, result: Result) -> Probes:
        """The probes a :func:`probe` Result carries in its extras."""
        ex = result.extras
        if result.kind != "probe" or "weight" not in ex:
            raise ProbeError(f"this Result ({result.kind}) does not carry probe weights; use one from probe()")
        return cls(
            result.meta["method"],
            list(result.labels["site"]),
            ex["weight"],
            ex["bias"],
            result.meta.get("classes"),
            ex["l2"],
            ex["l2_grid"],
            ex["val_score"],
            ex.get("mean_direction"),
        )


def readout_basis(weight: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis ``(site, d, rank)`` of what linear read-outs ``weight (site, d, out)`` see."""
    import torch

    w = weight.double()
    if w.shape[-1] > 1:
        w = w - w.mean(-1, keepdim=True)
    u, _, _ = torch.linalg.svd(w, full_matrices=False)
    return u[..., : max(w.shape[-1] - 1, 1)].float()


def split_xy(ds: ProbeDataset, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch

    rows = ds.rows(split)
    return torch.index_select(ds.acts, 1, rows), ds.y[rows], rows  # index_select: a sixth faster than acts[:, rows]


def fit_probes(ds: ProbeDataset, method: str = "logistic", **options: Any) -> Probes:
    """Fit one probe per site of ``ds`` at once (``logistic``, ``ridge`` or ``diff_means``).

    >>> probes = fit_probes(ds, "logistic", l2=[1e-3, 1e-2])        # doctest: +SKIP
    """
    from interpkit.probing._dataset import check_classes
    from interpkit.probing._fit import fit_batched

    check_classes(ds)
    X, y, _ = split_xy(ds, "train")
    Xv, yv, _ = split_xy(ds, "val")
    fit = fit_batched(method, X, y[None], Xv, yv[None], ds.n_classes, **options)
    return Probes.from_fit(fit, 0, method, list(ds.sites), ds.classes)


def score_rows(
    scores: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Metric values and standard errors ``(..., metric)`` for scores ``(..., row, out)``."""
    from interpkit.probing._metrics import CLASSIFICATION, REGRESSION, classification_metrics, regression_metrics

    if n_classes:
        values, ses = classification_metrics(scores, y, groups, n_classes)
        return values, ses, CLASSIFICATION
    values, ses = regression_metrics(scores, y, groups)
    return values, ses, REGRESSION


def evaluate(
    probes: Probes, ds: ProbeDataset, split: str = "test"
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """``(values, ses, metric names)`` of ``probes`` on one split of ``ds``, values ``(site, metric)``."""
    index = ds.site_index(probes.sites)
    rows = ds.rows(split)
    if len(rows) == 0:
        raise ProbeError(f"the {split} split of this dataset is empty")
    scores = probes.scores(ds.acts[index][:, rows])
    return score_rows(scores, ds.y[rows], ds.example[rows], ds.n_classes)


def chance(ds: ProbeDataset, split: str = "test") -> float:
    """Accuracy of always guessing the training split's most common class (0 R^2 for regression)."""
    import torch

    if not ds.is_classification:
        return 0.0
    common = int(torch.bincount(ds.y[ds.rows("train")], minlength=ds.n_classes).argmax())
    return float((ds.y[ds.rows(split)] == common).float().mean())


def provenance_of(ds: ProbeDataset, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    from interpkit.results import make_provenance

    prov = make_provenance(seed=seed, **extra)
    prov.update(ds.meta.get("model", {}))
    prov["dataset"] = {k: v for k, v in ds.meta.items() if k != "model"}
    return prov


def probe(ds: ProbeDataset, method: str = "logistic", **options: Any) -> Result:
    """Fit a probe on every site (train split, strength chosen on val) and score it on the test split.

    Returns a Result ``(site, metric, stat)`` with stats ``value`` and ``se``; ``extras`` carry the
    weights, biases, chosen strengths and training-split metrics.
    """
    import torch

    from interpkit.results import Result

    probes = fit_probes(ds, method, **options)
    values, ses, names = evaluate(probes, ds, "test")
    train_values, _, _ = evaluate(probes, ds, "train")
    counts = ds.split.bincount(minlength=3).tolist()
    return Result(
        torch.stack([values, ses], -1).float(),
        ("site", "metric", "stat"),
        {"site": list(ds.sites), "metric": list(names), "stat": ["value", "se"]},
        metric=names[0],
        kind="probe",
        meta={
            "method": method,
            "classes": ds.classes,
            "rows": {"train": counts[0], "val": counts[1], "test": counts[2]},
            "chance": chance(ds),
            "options": {k: v for k, v in options.items() if isinstance(v, (int, float, str, list, tuple))},
        },
        extras={
            "weight": probes.weight,
            "bias": probes.bias,
            "l2": probes.l2,
            "l2_grid": probes.l2_grid,
            "val_score": probes.val_score,
            "train": train_values.float(),
            **({"mean_direction": probes.mean_direction} if probes.mean_direction is not None else {}),
        },
        provenance=provenance_of(ds),
    )
