"""Principal axes of a probe dataset's activations at one site (what ``pca_figure`` draws)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from interpkit.probing._dataset import ProbeDataset
    from interpkit.results import Result


def pca(ds: ProbeDataset, site: str, split: str | None = None, n_components: int = 2) -> Result:
    """Activations at ``site`` on their first principal axes: Result ``(row, component)``; labels in extras."""
    import torch

    from interpkit.probing._probes import provenance_of
    from interpkit.results import Result

    (i,) = ds.site_index([site])
    rows = ds.rows(split) if split else torch.arange(len(ds), device=ds.acts.device)
    X = ds.acts[i, rows, : ds.widths[i]].double()
    X = X - X.mean(0)
    _, s, vh = torch.linalg.svd(X, full_matrices=False)
    k = min(n_components, vh.shape[0])
    coords = X @ vh[:k].T
    explained = (s[:k] ** 2 / (s**2).sum()).tolist()
    return Result(
        coords.float(),
        ("row", "component"),
        {"component": [f"PC{j + 1}" for j in range(k)]},
        kind="probe_pca",
        meta={"site": site, "explained": explained, "classes": ds.classes},
        extras={"y": ds.y[rows].cpu(), "example": ds.example[rows].cpu()},
        provenance=provenance_of(ds),
    )
