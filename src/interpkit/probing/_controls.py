"""Controls: what a probe's accuracy would be if the activations knew nothing, or the probe memorised.

- ``shuffled_labels``: train (and choose the strength) on permuted labels, test on the true ones:
  the accuracy a probe reaches from label noise alone (its spread gives the baseline band).
- ``control_task``: Hewitt and Liang (2019), "Designing and Interpreting Probes with Control
  Tasks": every token type (by default the token id at the probed position) gets a random class,
  drawn from the label distribution; a probe that scores well on that task can memorise types.
  Selectivity = task accuracy - control accuracy; high selectivity means the activations, not the
  probe, hold the property.
- ``random_init_control``: the same probe on a randomly initialised copy of the model (same
  architecture and tokens): what is decodable from token identity and architecture alone.
- ``learning_curve``: test accuracy against the number of training examples.

Each control fits all of its replicates (shuffles, tasks, training-set sizes) and every site in
one batched optimisation.

    >>> import interpkit as ik
    >>> from interpkit.probing import collect, control_task
    >>> model = ik.load_model("toy-induction")
    >>> texts = [[a, b, a] for a in range(1, 21) for b in range(21, 25)]
    >>> ds = collect(model, texts, ["odd" if a % 2 else "even" for a, _, _ in texts])
    >>> res = control_task(ds)
    >>> res.labels["quantity"]                                   # scores: (site, quantity, value / se)
    ['accuracy', 'control_accuracy', 'selectivity']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.probing._errors import ProbeError

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.probing._dataset import ProbeDataset
    from interpkit.results import Result


def _fit_and_score(
    ds: ProbeDataset, method: str, Y: torch.Tensor, weights: torch.Tensor | None, test_y: torch.Tensor, **options: Any
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Fit every replicate row of ``Y (rep, row)`` on train/val rows; test metrics ``(site, rep, metric)``."""
    from interpkit.probing._dataset import check_classes
    from interpkit.probing._fit import fit_batched
    from interpkit.probing._probes import score_rows

    check_classes(ds)
    tr, va, te = ds.rows("train"), ds.rows("val"), ds.rows("test")
    w = weights[:, tr] if weights is not None else None
    fit = fit_batched(method, ds.acts[:, tr], Y[:, tr], ds.acts[:, va], Y[:, va], ds.n_classes, w, **options)
    scores = fit.logits(ds.acts[:, te])  # (site, rep, row, out)
    return score_rows(scores, test_y[:, te][None] if test_y.ndim == 2 else test_y[te], ds.example[te], ds.n_classes)


def _result(
    values: torch.Tensor, ses: torch.Tensor, ds: ProbeDataset, dims: tuple[str, ...], labels: dict, **kw: Any
) -> Result:
    import torch

    from interpkit.probing._probes import provenance_of
    from interpkit.results import Result

    return Result(
        torch.stack([values, ses], -1).float(),
        dims,
        {**labels, "stat": ["value", "se"]},
        provenance=provenance_of(ds, seed=kw.pop("seed", None)),
        **kw,
    )


def _permute_labels(ds: ProbeDataset, gen: torch.Generator) -> torch.Tensor:
    """Labels permuted over examples (keeping each example's rows together), or over rows if labels are per token."""
    import torch

    per_example = ds.example_labels()
    if bool((per_example[ds.example] == ds.y).all()):
        perm = torch.randperm(len(per_example), generator=gen).to(ds.y.device)
        return per_example[perm][ds.example]
    return ds.y[torch.randperm(len(ds), generator=gen).to(ds.y.device)]


def shuffled_labels(
    ds: ProbeDataset, method: str = "logistic", n_shuffles: int = 5, seed: int = 0, **options: Any
) -> Result:
    """Probes trained on shuffled labels, scored on the true test labels.

    Result ``(site, metric, stat)``: ``value`` is the mean over shuffles and ``se`` their standard
    deviation (the width of the baseline band); ``extras["per_shuffle"]`` is ``(site, shuffle, metric)``.
    """
    import torch

    if n_shuffles < 1:
        raise ProbeError(f"n_shuffles must be at least 1, got {n_shuffles}")
    gen = torch.Generator().manual_seed(seed)
    Y = torch.stack([_permute_labels(ds, gen) for _ in range(n_shuffles)])
    values, _, names = _fit_and_score(ds, method, Y, None, ds.y, **options)
    spread = values.std(1) if n_shuffles > 1 else torch.zeros_like(values[:, 0])
    return _result(
        values.mean(1),
        spread,
        ds,
        ("site", "metric", "stat"),
        {"site": list(ds.sites), "metric": list(names)},
        metric=names[0],
        kind="probe_shuffled",
        meta={"method": method, "n_shuffles": n_shuffles, "se_is": "standard deviation over shuffles"},
        extras={"per_shuffle": values.float()},
        seed=seed,
    )


def control_labels(ds: ProbeDataset, key: Any = "token", seed: int = 0) -> torch.Tensor:
    """Hewitt-Liang control labels ``(row,)``: one random class per type, from the label distribution.

    ``key`` is ``"token"`` (the token id at the row's position) or a tensor / list of one type
    per row.
    """
    import torch

    if not ds.is_classification:
        raise ProbeError("control tasks need class labels (Hewitt and Liang define them for classification)")
    types = ds.token if isinstance(key, str) and key == "token" else torch.as_tensor(key, device=ds.y.device)
    if isinstance(key, str) and key != "token":
        raise ProbeError(f"control task key {key!r} is not 'token' or a tensor of one type per row")
    if types.shape != ds.y.shape:
        raise ProbeError(f"control task key gives {types.shape[0]} types for {len(ds)} rows")
    uniq, inverse = types.unique(return_inverse=True)
    if len(uniq) < 2:
        raise ProbeError(
            f"a control task needs at least two token types at the probed positions; all rows hold type "
            f"{int(uniq[0])} (probe another position, e.g. 'marked', or pass key=)"
        )
    freq = torch.bincount(ds.y[ds.split == 0].cpu(), minlength=ds.n_classes).double()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(100):
        per_type = torch.multinomial(freq, len(uniq), replacement=True, generator=gen)
        labels = per_type.to(ds.y.device)[inverse]
        if len(labels[ds.split == 0].unique()) >= 2:
            return labels
    raise ProbeError("could not draw control labels with two classes in the training split; add token types")


def control_task(
    ds: ProbeDataset, method: str = "logistic", key: Any = "token", seed: int = 0, **options: Any
) -> Result:
    """Task accuracy, control-task accuracy and selectivity per site (Hewitt and Liang 2019).

    Result ``(site, quantity, stat)`` with quantities ``accuracy``, ``control_accuracy``,
    ``selectivity`` and stats ``value``, ``se`` (the selectivity's se treats the two as independent).
    """
    import torch

    control = control_labels(ds, key, seed)
    Y = torch.stack([ds.y, control])
    values, ses, _ = _fit_and_score(ds, method, Y, None, Y, **options)
    acc, acc_se = values[:, :, 0], ses[:, :, 0]  # (site, 2)
    v = torch.stack([acc[:, 0], acc[:, 1], acc[:, 0] - acc[:, 1]], 1)
    s = torch.stack([acc_se[:, 0], acc_se[:, 1], (acc_se[:, 0] ** 2 + acc_se[:, 1] ** 2).sqrt()], 1)
    n_types = int(ds.token.unique().numel()) if isinstance(key, str) else len(set(torch.as_tensor(key).tolist()))
    return _result(
        v,
        s,
        ds,
        ("site", "quantity", "stat"),
        {"site": list(ds.sites), "quantity": ["accuracy", "control_accuracy", "selectivity"]},
        metric="selectivity",
        kind="probe_selectivity",
        meta={"method": method, "key": key if isinstance(key, str) else "custom", "n_types": n_types},
        seed=seed,
    )


def learning_curve(
    ds: ProbeDataset, sizes: Sequence[int] | None = None, method: str = "logistic", seed: int = 0, **options: Any
) -> Result:
    """Test score (accuracy, or R^2) against the number of training examples, every size fitted at once.

    Result ``(size, site, stat)``; sizes default to halvings of the training set down to about 8
    examples per class. Validation and test rows stay the same for every size.
    """
    import torch

    from interpkit.probing._splits import subsample

    train_examples = ds.example[ds.split == 0].unique()
    n_train = len(train_examples)
    if sizes is None:
        floor = 8 * max(ds.n_classes, 1)
        sizes = sorted({max(floor, n_train >> k) for k in range(6)} | {n_train})
        sizes = [s for s in sizes if s <= n_train]
    sizes = [int(s) for s in sizes]
    bad = [s for s in sizes if not 2 <= s <= n_train]
    if bad:
        raise ProbeError(f"training sizes {bad} are outside 2..{n_train} (the training examples available)")
    strata = ds.strata()
    weights = []
    for i, size in enumerate(sizes):
        chosen = subsample(strata, train_examples.cpu(), size, seed + i).to(ds.example.device)
        weights.append(torch.isin(ds.example, chosen).float())
    W = torch.stack(weights)
    if ds.is_classification:
        for size, w in zip(sizes, W, strict=True):
            if len(ds.y[(w > 0) & (ds.split == 0)].unique()) < 2:
                raise ProbeError(f"a training set of {size} examples holds a single class; use larger sizes")
    Y = ds.y[None].expand(len(sizes), -1)
    values, ses, names = _fit_and_score(ds, method, Y, W, ds.y, **options)
    return _result(
        values[..., 0].t(),
        ses[..., 0].t(),
        ds,
        ("size", "site", "stat"),
        {"size": [str(s) for s in sizes], "site": list(ds.sites)},
        metric=names[0],
        kind="probe_learning_curve",
        meta={"method": method, "sizes": sizes},
        seed=seed,
    )


RANDOM_INIT_OFFSET = 0x5EED_C0DE  # added to the control's seed: a model a user initialised with seed 0 is not its copy


def random_init_model(model: Model, seed: int = 0) -> Model:
    """A randomly initialised copy of ``model``: same architecture, config and tokenizer, fresh weights.

    The weights are drawn with torch seed ``RANDOM_INIT_OFFSET + seed``, so that the copy of a
    model that was itself randomly initialised with a small seed (``torch.manual_seed(0)``) is not
    that model again; a copy equal to the model is refused all the same.
    """
    import copy

    import torch

    from interpkit.models import boot_native
    from interpkit.models._load import wrap_hf_model

    spec = f"{model.spec} (random init, seed {seed})"
    placed = model.info.get("device_map")  # a model split over devices: the copy is split the same way
    fields = model.info.get("bridge_config")
    hf = getattr(model.bridge, "original_model", None)
    if not fields and (hf is None or not hasattr(hf, "config")):
        raise ProbeError(f"cannot build a random-init copy of {model.spec!r}: it is neither native nor a HF model")
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        if fields:
            fresh = boot_native(fields, seed=RANDOM_INIT_OFFSET + seed, spec=spec)
            fresh.to(device=None if placed else model.device, dtype=model.dtype)
        else:
            torch.manual_seed(RANDOM_INIT_OFFSET + seed)
            fresh_hf = type(hf)(copy.deepcopy(hf.config)).to(dtype=model.dtype).eval()
            fresh = wrap_hf_model(fresh_hf if placed else fresh_hf.to(model.device), model.tokenizer, spec=spec)
    if placed:
        from interpkit.models._dispatch import dispatch

        dispatch(fresh, placed)
    if _same_weights(model, fresh):
        raise ProbeError(
            f"the random-init copy of {model.spec!r} with seed {seed} has the model's own weights (the model was "
            "itself randomly initialised with that seed): pass another seed"
        )
    return fresh


def _same_weights(a: Model, b: Model) -> bool:
    """Whether two models of one architecture hold equal weights (a control copy must not)."""
    import torch

    pairs = list(zip(a.bridge.parameters(), b.bridge.parameters(), strict=False))
    weights = [(x, y) for x, y in pairs if x.dim() >= 2 and x.shape == y.shape]
    return bool(weights) and all(torch.equal(x.detach(), y.detach().to(x.device)) for x, y in weights)


def random_init_control(
    model: Model, ds: ProbeDataset, method: str = "logistic", seed: int = 0, **options: Any
) -> Result:
    """:func:`~interpkit.probing.probe` on the same examples read from a random-init copy of ``model``."""
    from interpkit.probing._dataset import recollect
    from interpkit.probing._probes import probe

    fresh = random_init_model(model, seed)
    res = probe(recollect(ds, fresh), method, **options)
    res.kind = "probe_random_init"
    res.meta["random_init_seed"] = seed
    return res
