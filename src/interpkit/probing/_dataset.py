"""``ProbeDataset``: activations at chosen tokens of every probed site, with labels and splits.

One row is one ``(example, position)``; ``acts`` holds ``(site, row, d)`` on the model's device.
Labels are given per example (every selected token of the example gets it) or per token (a list
per example, one label per selected position). Strings, bools and ints are classes; floats are
regression targets. Splits are made over examples (see :mod:`interpkit.probing._splits`).

    >>> import interpkit as ik
    >>> from interpkit.probing import collect
    >>> model = ik.load_model("toy-induction")
    >>> ds = collect(model, [[1, 2, 3], [4, 5, 6], [1, 5, 3], [4, 2, 6]] * 3, ["a", "b", "a", "b"] * 3)
    >>> ds.acts.shape          # (site, row, d_model): every layer's resid_post at the last token
    torch.Size([2, 12, 128])
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.errors import SiteError, closest
from interpkit.probing._errors import ProbeError
from interpkit.probing._splits import SPLIT_NAMES, regression_strata, split_examples

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model

FORMAT = "interpkit-probe-dataset/1"


@dataclasses.dataclass
class ProbeDataset:
    """Activations ``(site, row, d)`` with a label, example, position, token and split per row."""

    acts: torch.Tensor  # (site, row, d) float
    y: torch.Tensor  # (row,) long class index, or float target
    example: torch.Tensor  # (row,) long
    pos: torch.Tensor  # (row,) long
    token: torch.Tensor  # (row,) long: token id at the row's position (-1 if unknown)
    split: torch.Tensor  # (row,) long: 0 train, 1 val, 2 test
    sites: list[str]
    classes: list[str] | None = None  # None for regression
    widths: list[int] | None = None  # true width of each site (acts are zero-padded to the widest)
    source: dict[str, Any] = dataclasses.field(default_factory=dict)  # ids, positions, texts, answers
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.acts.shape[1]
        for name in ("y", "example", "pos", "token", "split"):
            if getattr(self, name).shape != (n,):
                raise ProbeError(f"{name} has shape {tuple(getattr(self, name).shape)}; the dataset has {n} rows")
        if len(self.sites) != self.acts.shape[0]:
            raise ProbeError(f"{len(self.sites)} site names for {self.acts.shape[0]} sites of activations")
        if self.widths is None:
            self.widths = [int(self.acts.shape[-1])] * len(self.sites)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return int(self.acts.shape[1])

    @property
    def is_classification(self) -> bool:
        return self.classes is not None

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 0

    @property
    def n_examples(self) -> int:
        return int(self.example.max()) + 1 if len(self) else 0

    def rows(self, split: str | int) -> torch.Tensor:
        """Row indices of one split (``"train"``, ``"val"``, ``"test"``)."""
        import torch

        code = SPLIT_NAMES.get(split, split) if isinstance(split, str) else split
        if code not in (0, 1, 2):
            raise ProbeError(f"unknown split {split!r}; valid: {', '.join(SPLIT_NAMES)}")
        return torch.nonzero(self.split == code)[:, 0].to(self.acts.device)

    def site_index(self, sites: str | Sequence[str] | None) -> list[int]:
        """Indices of ``sites`` (names, or shell wildcards such as ``"L1*"``) in this dataset;
        SiteError naming the closest sites otherwise."""
        import fnmatch

        from interpkit.sites import is_pattern

        if sites is None:
            return list(range(len(self.sites)))
        names = [sites] if isinstance(sites, str) else list(sites)
        out = []
        for name in names:
            if is_pattern(name) and (found := fnmatch.filter(self.sites, name)):
                out.extend(self.sites.index(f) for f in found)
                continue
            if name not in self.sites:
                near = closest(name, self.sites)
                raise SiteError(
                    f"site {name!r} is not in this dataset"
                    + (f"; closest: {', '.join(near)}" if near else "")
                    + f". Sites held: {', '.join(self.sites[:12])}{', ...' if len(self.sites) > 12 else ''}"
                )
            out.append(self.sites.index(name))
        return out

    def select_sites(self, sites: str | Sequence[str]) -> ProbeDataset:
        """The same rows, only the given sites."""
        index = self.site_index(sites)
        return dataclasses.replace(
            self, acts=self.acts[index], sites=[self.sites[i] for i in index], widths=[self.widths[i] for i in index]
        )

    def with_acts(self, acts: torch.Tensor) -> ProbeDataset:
        """The same rows and labels over other activations ``(site, row, d)`` (same sites)."""
        return dataclasses.replace(self, acts=acts)

    def example_labels(self) -> torch.Tensor:
        """Each example's label (its first row's), ``(n_examples,)``."""
        import torch

        first = torch.full((self.n_examples,), len(self), dtype=torch.long, device=self.example.device)
        first = first.scatter_reduce(0, self.example, torch.arange(len(self), device=self.example.device), "amin")
        return self.y[first]

    def strata(self) -> torch.Tensor:
        """What splits are stratified by, per example: the class, or the target's quintile."""
        labels = self.example_labels()
        return labels.long() if self.is_classification else regression_strata(labels)

    def resplit(self, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> ProbeDataset:
        """The same data with a new seeded, stratified split over examples."""
        by_example = split_examples(self.strata(), fractions, seed).to(self.example.device)
        out = dataclasses.replace(self, split=by_example[self.example])
        out.meta = {**self.meta, "split_fractions": list(fractions), "split_seed": seed}
        check_classes(out)
        return out

    # ------------------------------------------------------------------ files
    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``acts.safetensors`` + ``dataset.json`` into ``out_dir`` (a temporary folder, then rename)."""
        import shutil
        import tempfile

        from safetensors.torch import save_file

        out = Path(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            tensors = {k: getattr(self, k).detach().contiguous().cpu() for k in ("acts", "y", "example", "pos")}
            tensors.update(token=self.token.cpu(), split=self.split.cpu())
            save_file(tensors, str(tmp / "acts.safetensors"))
            info = {"format": FORMAT, "sites": self.sites, "classes": self.classes, "widths": self.widths}
            info.update(source=self.source, meta=self.meta)
            (tmp / "dataset.json").write_text(json.dumps(info, default=str) + "\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, device: Any = None) -> ProbeDataset:
        """Read a folder written by :meth:`save`."""
        from safetensors.torch import load_file

        path = Path(path)
        try:
            info = json.loads((path / "dataset.json").read_text())
            tensors = load_file(str(path / "acts.safetensors"))
        except (OSError, ValueError) as exc:
            raise ProbeError(f"{str(path)!r} is not a probe dataset folder: {exc}") from exc
        if info.get("format") != FORMAT:
            raise ProbeError(f"{str(path)!r} holds format {info.get('format')!r}, not {FORMAT!r}")
        tensors = {k: v.to(device) if device is not None else v for k, v in tensors.items()}
        return cls(
            sites=info["sites"],
            classes=info["classes"],
            widths=info["widths"],
            source=info.get("source", {}),
            meta=info.get("meta", {}),
            **tensors,
        )

    def __repr__(self) -> str:
        counts = self.split.bincount(minlength=3).tolist()
        kind = f"{self.n_classes} classes" if self.is_classification else "regression"
        return (
            f"ProbeDataset({len(self.sites)} sites x {len(self)} rows x d={self.acts.shape[-1]}, {kind}, "
            f"{self.n_examples} examples, train/val/test rows {counts})"
        )


# ---------------------------------------------------------------------------- labels
def encode_labels(
    labels: Sequence[Any],
    positions: Sequence[Sequence[int]],
    kind: str | None = None,
    classes: Sequence[Any] | None = None,
) -> tuple[torch.Tensor, list[str] | None]:
    """One label per row: per-example labels repeated over the example's positions, or per-token lists."""
    import torch

    n = len(positions)
    labels = list(labels)
    if len(labels) != n:
        raise ProbeError(f"{len(labels)} labels were given for {n} examples; give one label (or one list) per example")
    flat: list[Any] = []
    for i, (lab, pos) in enumerate(zip(labels, positions, strict=True)):
        if isinstance(lab, (list, tuple)):
            if len(lab) != len(pos):
                raise ProbeError(
                    f"example {i} has {len(lab)} per-token labels but the position rule selects {len(pos)} tokens"
                )
            flat.extend(lab)
        else:
            flat.extend([lab] * len(pos))
    if kind is None:
        kind = "regression" if all(isinstance(v, float) for v in flat) else "classification"
    if kind == "regression":
        try:
            return torch.tensor([float(v) for v in flat], dtype=torch.float32), None
        except (TypeError, ValueError) as exc:
            raise ProbeError(f"regression labels must be numbers: {exc}") from None
    if kind != "classification":
        raise ProbeError(f"label kind {kind!r} is not 'classification' or 'regression'")
    names = [str(v) for v in flat]
    numeric = all(v.lstrip("-").isdigit() for v in names)
    found = sorted(set(names), key=int) if numeric else sorted(set(names))
    order = [str(c) for c in classes] if classes is not None else found
    unknown = sorted(set(names) - set(order))
    if unknown:
        raise ProbeError(f"labels {unknown[:5]} are not among the classes given ({order})")
    if len(set(names)) < 2:
        raise ProbeError(f"the labels have a single class ({names[0]!r}); a probe needs at least two classes")
    index = {c: i for i, c in enumerate(order)}
    return torch.tensor([index[v] for v in names], dtype=torch.long), order


def check_classes(ds: ProbeDataset) -> None:
    """Every class must appear among the training rows (else its probe weights are meaningless)."""
    import torch

    if not ds.is_classification:
        return
    train = ds.y[ds.split == 0]
    present = torch.bincount(train.cpu(), minlength=ds.n_classes)
    missing = [ds.classes[i] for i in range(ds.n_classes) if present[i] == 0]
    if missing:
        raise ProbeError(f"classes {missing} have no training example; give more examples or change the split")
    if int((present > 0).sum()) < 2:
        raise ProbeError("the training split holds a single class; a probe needs at least two")


# ---------------------------------------------------------------------------- collecting
def collect(
    model: Model,
    inputs: Sequence[str] | Sequence[Sequence[int]],
    labels: Sequence[Any],
    sites: Any = None,
    positions: Any = "last",
    *,
    answers: Sequence[str] | None = None,
    wrongs: Sequence[str] | None = None,
    kind: str | None = None,
    classes: Sequence[Any] | None = None,
    split: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    batch_size: int = 32,
    marker: tuple[str, str] = ("[[", "]]"),
    skip_bos: bool = True,
    dtype: Any = None,
) -> ProbeDataset:
    """Run ``model`` over ``inputs`` (texts or token-id lists) and keep each probed site at the chosen tokens.

    ``sites``: None (every layer's ``resid_post``), a site kind, a label or hook name, or a list.
    ``positions``: ``"last"``, ``"all"``, ``"marked"``, ``"match:REGEX"``, a callable or explicit
    positions (see :mod:`interpkit.probing._positions`). ``answers`` / ``wrongs`` (single tokens,
    one per example) make the dataset usable for causal checks against the model's behaviour.

    >>> ds = collect(model, ["The [[dogs]] near the car", ...], ["plural", ...], positions="marked")  # doctest: +SKIP
    """
    from interpkit.probing._collect import resolve_sites
    from interpkit.probing._positions import select_positions, tokenize

    n = len(inputs)
    if len(labels) != n:
        raise ProbeError(f"{len(labels)} labels were given for {n} examples; give one label (or one list) per example")
    for name, given in (("answers", answers), ("wrongs", wrongs)):
        if given is not None and len(given) != n:
            raise ProbeError(f"{len(given)} {name} were given for {n} examples")
    specs = resolve_sites(model, sites)
    ids, texts, marks, n_bos = tokenize(model, list(inputs), positions == "marked", marker)
    str_tokens = [model.to_str_tokens(row) for row in ids]
    picked = select_positions(positions, str_tokens, n_bos=n_bos, marks=marks, skip_bos=skip_bos)
    y, class_names = encode_labels(labels, picked, kind, classes)
    source = {"ids": ids, "positions": picked, "texts": texts, "answers": answers, "wrongs": wrongs}
    meta = {"positions": positions if isinstance(positions, str) else "explicit", "skip_bos": skip_bos}
    meta.update(model=model.provenance(), batch_size=batch_size)
    return _build(model, specs, source, y, class_names, meta, split, seed, batch_size, dtype)


def recollect(ds: ProbeDataset, model: Model, *, batch_size: int | None = None) -> ProbeDataset:
    """The same examples, positions, labels and split read from another model (e.g. a random-init copy)."""
    from interpkit.probing._collect import resolve_sites

    if "ids" not in ds.source:
        raise ProbeError("this dataset does not keep its token ids (it came from a store); collect it again")
    specs = resolve_sites(model, ds.sites)
    acts = _read(model, specs, ds.source, batch_size or ds.meta.get("batch_size", 32), ds.acts.dtype)
    return dataclasses.replace(ds, acts=acts, meta={**ds.meta, "model": model.provenance()})


def _read(model: Model, specs: list[Any], source: dict[str, Any], batch_size: int, dtype: Any) -> torch.Tensor:
    from interpkit.probing._collect import collect_rows

    ids = source["ids"]
    bad = [i for i, row in enumerate(ids) if len(row) > model.cfg.n_ctx]
    if bad:
        raise ProbeError(
            f"example {bad[0]} has {len(ids[bad[0]])} tokens, more than the context n_ctx={model.cfg.n_ctx}"
        )
    return collect_rows(model, ids, source["positions"], specs, batch_size=batch_size, dtype=dtype)


def _build(
    model: Model,
    specs: list[Any],
    source: dict[str, Any],
    y: torch.Tensor,
    class_names: list[str] | None,
    meta: dict[str, Any],
    split: Sequence[float],
    seed: int,
    batch_size: int,
    dtype: Any,
) -> ProbeDataset:
    import torch

    from interpkit.probing._collect import site_width

    ids, picked = source["ids"], source["positions"]
    acts = _read(model, specs, source, batch_size, dtype)
    device = acts.device
    example = torch.tensor([i for i, p in enumerate(picked) for _ in p], dtype=torch.long, device=device)
    pos = torch.tensor([q for p in picked for q in p], dtype=torch.long, device=device)
    token = torch.tensor([ids[i][q] for i, p in enumerate(picked) for q in p], dtype=torch.long, device=device)
    ds = ProbeDataset(
        acts=acts,
        y=y.to(device),
        example=example,
        pos=pos,
        token=token,
        split=torch.zeros_like(example),
        sites=[s.label for s in specs],
        classes=class_names,
        widths=[site_width(model, s) for s in specs],
        source=source,
        meta={**meta, "hooks": [s.hook for s in specs]},
    )
    return ds.resplit(split, seed)
