"""One-dimensional distributed alignment search and the subspace-illusion check.

DAS (Geiger et al. 2023, "Finding Alignments Between Interpretable Causal Variables and
Distributed Neural Representations") learns a unit direction ``u`` at one site such that the
*interchange intervention* ``h_base + ((h_source - h_base) . u) u`` makes the model behave as if
the base example had the source example's label: here, predict the source's class's answer
token on the base prompt (a subject-number direction swaps " is" for " are"). The score is the
interchange intervention accuracy (IIA) on held-out pairs whose labels differ.

Makelov, Lange and Nanda (2023), "Is This the Subspace You Are Looking For?", show that such a
direction can work through a *dormant* pathway: a component in the nullspace of the weights
that read the site, which changes nothing by itself but unlocks another path. The check here
splits the direction into its components in the rowspace and nullspace of the following weights
(``following_weights``), reports each one's share, and the IIA of each component alone.

    >>> from interpkit.probing import das
    >>> res = das(model, ds, "L12.resid_post", probes=probes)          # doctest: +SKIP
    >>> res.scores[res.labels["direction"].index("das"), 0, 0]          # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.errors import SiteError
from interpkit.probing._errors import ProbeError

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.probing._collect import SiteSpec
    from interpkit.probing._dataset import ProbeDataset
    from interpkit.probing._probes import Probes
    from interpkit.results import Result
    from interpkit.tasks import Task


def following_weights(model: Model, site: str) -> torch.Tensor:
    """The matrix ``M (d_out, d_site)`` of the weights that read ``site`` next, norm scales folded in.

    - ``L{l}H{h}`` (a head's z): that head's ``W_O``;
    - ``blocks.{l}.mlp.hook_post`` (MLP hidden units): ``W_out`` of layer ``l``;
    - ``L{l}.resid_pre`` / ``L{l-1}.resid_post``: block ``l``'s ``W_Q``, ``W_K``, ``W_V`` and MLP input
      (and gate) weights, times the norms' scales (and LayerNorm's centring); the last layer's
      ``resid_post``: the unembedding; ``L{l}.resid_mid``: block ``l``'s MLP input weights.
    """
    import torch

    from interpkit.probing._collect import resolve_sites

    spec = resolve_sites(model, [site])[0]
    an, c = model.anatomy, model.cfg
    layer = spec.layer
    if spec.head_axis is not None and spec.hook.endswith("attn.hook_z"):
        return an.attn(layer).W_O[spec.head].float().T
    if spec.hook.endswith("mlp.hook_post"):
        return an.mlp(layer).W_out.float().T
    kinds = {"hook_resid_pre": ("pre", layer), "hook_resid_post": ("pre", layer + 1), "hook_resid_mid": ("mid", layer)}
    kind = next((v for k, v in kinds.items() if spec.hook.endswith(k)), None)
    if kind is None:
        raise SiteError(
            f"no following weights are defined for site {site!r}; the subspace check supports head z sites "
            "(L3H5), MLP hidden units (blocks.L.mlp.hook_post) and residual sites (resid_pre/mid/post)"
        )
    which, reader = kind
    blocks = []  # (weights that read the site, the norm they read it through)
    if reader >= c.n_layers:
        blocks.append((an.unembed[0].float().T, an.final_norm))
    else:
        if which == "pre":
            a = an.attn(reader)
            m = torch.cat([w.float().permute(0, 2, 1).reshape(-1, c.d_model) for w in (a.W_Q, a.W_K, a.W_V)])
            blocks.append((m, an.ln1(reader)))
        if not c.attn_only:
            mlp = an.mlp(reader)  # gated MLPs read the residual twice; the norm is ln2 or a shared ln1 (Phi)
            reads = [mlp.W_in.float().T, *([mlp.W_gate.float().T] if mlp.gated else [])]
            blocks.append((torch.cat(reads), an.ln2(reader)))
    rows = []
    for m, norm in blocks:
        m = m * norm.gain.float()[None, :].to(m.device) if norm.gain is not None else m
        if norm.present and norm.centre:
            m = m - m.mean(1, keepdim=True)  # LayerNorm removes the mean: the all-ones direction is never read
        rows.append(m)
    return torch.cat(rows)


def rowspace_split(
    direction: torch.Tensor, weights: torch.Tensor, rtol: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, null)`` components of ``direction (d,)`` in the rowspace and nullspace of ``weights (d_out, d)``."""
    import torch

    _, s, vh = torch.linalg.svd(weights.double(), full_matrices=False)
    basis = vh[s > rtol * s.max()]  # (rank, d)
    u = direction.double().to(basis.device)
    row = basis.T @ (basis @ u)
    return row.float(), (u - row).float()


def _pairs(
    labels: torch.Tensor, examples: torch.Tensor, n: int, gen: torch.Generator, flips_only: bool
) -> torch.Tensor:
    import torch

    if len(examples) < 2:
        raise ProbeError("DAS needs at least two examples in each split it uses")
    base = examples[torch.randint(len(examples), (4 * n,), generator=gen)]
    source = examples[torch.randint(len(examples), (4 * n,), generator=gen)]
    keep = base != source
    if flips_only:
        keep &= labels[base] != labels[source]
    pairs = torch.stack([base[keep], source[keep]], 1)[:n]
    if len(pairs) == 0:
        raise ProbeError("no pairs of examples with different labels in this split")
    return pairs


def _interchange(spec: SiteSpec, direction: torch.Tensor, sources: torch.Tensor) -> Any:
    from interpkit.probing._intervene import Edit

    def fn(x: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        u = (direction / direction.norm().clamp_min(1e-12)).to(x.device, x.dtype)  # the edited layer's device
        src = sources[item.to(sources.device)].to(x.device, x.dtype)
        return x + ((src - x) @ u)[:, None] * u[None]

    return Edit(spec, fn)


def _targets(task: Task, labels: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counterfactual (answer, other) tokens: the base's answer if labels agree, else its wrong token."""
    import torch

    base, source = pairs[:, 0], pairs[:, 1]
    same = labels[base] == labels[source]
    return torch.where(same, task.answer[base], task.wrong[base]), torch.where(
        same, task.wrong[base], task.answer[base]
    )


def _iia(
    model: Model,
    task: Task,
    spec: SiteSpec,
    u: torch.Tensor,
    H: torch.Tensor,
    pairs: torch.Tensor,
    labels: torch.Tensor,
    pos: list,
    batch_size: int,
) -> tuple[float, float]:
    from interpkit.probing._intervene import run_items

    items = [(int(b), 0) for b in pairs[:, 0].tolist()]
    sources = H[pairs[:, 1]]
    diff, _ = run_items(
        model,
        task,
        items,
        [_interchange(spec, u, sources)],
        pos,
        batch_size,
        "logit_diff",
        targets=_targets(task, labels, pairs),
    )
    hit = (diff > 0).double()
    return float(hit.mean()), float((hit.var() / len(hit)) ** 0.5) if len(hit) > 1 else 0.0


def das(
    model: Model,
    ds: ProbeDataset,
    site: str,
    probes: Probes | None = None,
    task: Task | None = None,
    steps: int = 150,
    lr: float = 0.01,
    n_pairs: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    init: str = "random",
) -> Result:
    """Learn a 1-D DAS direction at ``site`` (train split pairs) and score it on test-split pairs.

    Result ``(direction, quantity, stat)`` for directions ``das``, ``probe`` (the probe at the
    same site, if given), ``random``, ``das_rowspace`` and ``das_nullspace`` (the DAS direction's
    two components, each renormalised); quantities ``iia`` (held-out pairs with different
    labels), ``rowspace_fraction``, ``nullspace_fraction`` (squared norms of the components) and
    ``cos_with_das``. Needs two classes and exactly one probed position per example.
    """
    import torch

    from interpkit.probing._collect import collect_rows, resolve_sites
    from interpkit.probing._controls import _result
    from interpkit.probing._intervene import dataset_task, run_items

    if ds.n_classes != 2:
        raise ProbeError("DAS here aligns a binary variable: the dataset needs exactly two classes")
    if any(len(p) != 1 for p in ds.source["positions"]):
        raise ProbeError("DAS needs exactly one probed position per example (use positions='last' or 'marked')")
    task = task or dataset_task(model, ds)
    spec = resolve_sites(model, [site])[0]
    pos = [list(p) for p in ds.source["positions"]]
    H = collect_rows(model, ds.source["ids"], pos, [spec], batch_size=batch_size)[0]  # (example, d)
    labels = ds.example_labels()
    gen = torch.Generator().manual_seed(seed)
    train_ex = ds.example[ds.split == 0].unique().cpu()
    test_ex = ds.example[ds.split == 2].unique().cpu()
    train_pairs = _pairs(labels.cpu(), train_ex, n_pairs, gen, flips_only=False)
    test_pairs = _pairs(labels.cpu(), test_ex, n_pairs, gen, flips_only=True)
    if init == "probe":
        if probes is None or site not in probes.sites:
            raise ProbeError(f"init='probe' needs a probe fitted at {site!r} (pass probes=)")
        v0 = probes.select([site]).direction()[0, : H.shape[-1]].float().cpu()
    elif init == "random":
        v0 = torch.randn(H.shape[-1], generator=gen)
    else:
        raise ProbeError(f"DAS init {init!r} is not 'random' or 'probe'")
    v = (v0 / v0.norm()).to(H.device).requires_grad_(True)  # unit start: Adam's lr is then a step in angle
    optim = torch.optim.Adam([v], lr=lr)
    params = [p for p in model.bridge.parameters() if p.requires_grad]
    losses = []
    try:
        for p in params:
            p.requires_grad_(False)
        for _ in range(steps):
            batch = train_pairs[torch.randint(len(train_pairs), (min(batch_size, len(train_pairs)),), generator=gen)]
            items = [(int(b), 0) for b in batch[:, 0].tolist()]
            edit = _interchange(spec, v, H[batch[:, 1]])
            diff, _ = run_items(
                model,
                task,
                items,
                [edit],
                pos,
                batch_size,
                "logit_diff",
                grad=True,
                targets=_targets(task, labels, batch),
            )
            loss = torch.nn.functional.softplus(-diff).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
    finally:
        for p in params:
            p.requires_grad_(True)
    u = (v / v.norm()).detach()
    try:
        weights = following_weights(model, site)
    except SiteError:
        weights = None  # no defined reader for this site: fractions are NaN, IIA still reported
    nan = u * float("nan")
    row, null = rowspace_split(u, weights) if weights is not None else (nan, nan)
    directions = {"das": u, "random": torch.randn(u.shape[0], generator=gen).to(u.device)}
    if probes is not None and site in probes.sites:
        directions["probe"] = probes.select([site]).direction()[0, : u.shape[0]].to(u.device)
    directions["das_rowspace"], directions["das_nullspace"] = row, null
    table, errors = [], []
    for d in directions.values():
        if bool(torch.isnan(d).any()) or float(d.norm()) < 1e-6:
            table.append([float("nan")] * 4)
            errors.append([float("nan")] * 4)
            continue
        unit = d / d.norm()
        iia, se = _iia(model, task, spec, unit, H, test_pairs, labels, pos, batch_size)
        r, n = rowspace_split(unit, weights) if weights is not None else (nan, nan)
        table.append([iia, float(r.norm() ** 2), float(n.norm() ** 2), float(unit @ u)])
        errors.append([se, 0.0, 0.0, 0.0])
    return _result(
        torch.tensor(table),
        torch.tensor(errors),
        ds,
        ("direction", "quantity", "stat"),
        {"direction": list(directions), "quantity": ["iia", "rowspace_fraction", "nullspace_fraction", "cos_with_das"]},
        metric="iia",
        kind="probe_das",
        meta={
            "site": site,
            "steps": steps,
            "lr": lr,
            "init": init,
            "n_train_pairs": len(train_pairs),
            "n_test_pairs": len(test_pairs),
            "final_loss": losses[-1] if losses else None,
        },
        extras={"direction": u, "loss": torch.tensor(losses)},
        seed=seed,
    )
