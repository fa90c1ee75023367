"""Probe methods, all sites at once: logistic regression, ridge regression, difference of means.

Every method has one signature, ``fn(X_train, Y_train, X_val, Y_val, n_classes, weights, **options)
-> Fit``, over activations ``(site, row, d)`` and targets ``(rep, row)``: *every* site and every
replicate target (shuffled labels, control tasks, training-set sizes) is fitted in one batched
optimisation on the activations' device (on a CPU the logistic probes batch the sites in
cache-sized groups, with the same result; see :func:`fit_logistic`), and the L2 strength is
chosen per site and replicate on the validation rows.

- ``logistic``: multinomial logistic regression (a single logit for two classes) on features
  standardised with the training rows' mean and scale, minimising mean cross-entropy plus
  ``l2 / 2 * ||w||^2`` (bias unpenalised) by batched L-BFGS; ``l2 = 1 / (C * n_train)`` in
  scikit-learn's terms. Chosen by validation log-loss (a proper score with no ties, where
  accuracy on a small validation split often ties between strengths).
- ``ridge``: closed form through one eigendecomposition per site, all strengths at once;
  chosen by validation R^2.
- ``diff_means``: the mass-mean probe (Marks and Tegmark 2023, "The Geometry of Truth"): the
  direction is the difference of class means (what interventions use); scores read it through
  the pooled within-class covariance, shrunk towards the identity by a strength chosen on
  validation (their IID variant; shrinkage LDA). Plain ``x . (mu_1 - mu_0)`` is at chance on the
  embedded model's residual stream, whose few huge dimensions swamp the difference.

    >>> import interpkit as ik
    >>> from interpkit.probing import collect, fit_probes
    >>> model = ik.load_model("toy-induction")
    >>> texts = [[a, b, a] for a in range(1, 21) for b in range(21, 25)]
    >>> ds = collect(model, texts, ["odd" if a % 2 else "even" for a, _, _ in texts])
    >>> probes = fit_probes(ds, method="logistic")
    >>> probes.weight.shape                                      # (site, d, 1) for two classes
    torch.Size([2, 128, 1])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from interpkit.errors import unknown
from interpkit.probing._errors import ProbeError

if TYPE_CHECKING:
    import torch

L2_GRIDS = {
    "logistic": (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    "ridge": (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
    "diff_means": (1e-3, 1e-2, 1e-1, 1.0, 10.0),  # covariance shrinkage
}
PRECONDITIONER_RANK = 64  # principal axes in the logistic probes' preconditioner (see fit_logistic)
CPU_GROUP_BYTES = 16 << 20  # logistic probes on a CPU: sites batched together, by their data's size (fit_logistic)


@dataclasses.dataclass
class Fit:
    """Probe parameters with a replicate axis: ``weight (site, rep, d, out)``, ``bias (site, rep, out)``."""

    weight: torch.Tensor
    bias: torch.Tensor
    l2: torch.Tensor  # (site, rep) chosen strength
    l2_grid: torch.Tensor  # (k,)
    val_score: torch.Tensor  # (site, rep, k)
    candidates: tuple[torch.Tensor, torch.Tensor] | None = None  # every strength: (S, R, K, out, D), (S, R, K, out)
    direction: torch.Tensor | None = None  # (site, rep, d): diff_means's mean difference, for interventions

    def logits(self, acts: torch.Tensor) -> torch.Tensor:
        """``(site, rep, row, out)`` for activations ``(site, row, d)``."""
        import torch

        return torch.einsum("snd,srdo->srno", acts.to(self.weight.dtype), self.weight) + self.bias[:, :, None, :]


def _standardise(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    std, mean = torch.std_mean(X, 1)  # (S, D) each
    return mean, _safe_scale(std)


def _safe_scale(scale: torch.Tensor) -> torch.Tensor:
    """Feature scales, with constant (e.g. zero-padded) features left unscaled."""
    import torch

    tiny = scale <= 1e-6 * scale.amax(-1, keepdim=True).clamp_min(1e-30)
    return torch.where(tiny, torch.ones_like(scale), scale)


def _row_weights(Y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    import torch

    w = torch.ones_like(Y, dtype=torch.float32) if weights is None else weights.to(torch.float32)
    total = w.sum(1, keepdim=True)
    if bool((total <= 0).any()):
        raise ProbeError("a replicate has no training rows")
    return w / total


def _grid(method: str, l2: Any, device: Any) -> torch.Tensor:
    import torch

    values = L2_GRIDS[method] if l2 is None else ([l2] if isinstance(l2, (int, float)) else list(l2))
    if not values or any(v < 0 for v in values):
        raise ProbeError(f"l2 strengths must be non-negative numbers; got {l2!r}")
    return torch.tensor(sorted(values), dtype=torch.float32, device=device)


def _select(val_score: torch.Tensor) -> torch.Tensor:
    """Index of the best strength per (site, rep); ties go to the larger (stronger) one."""
    import torch

    k = val_score.shape[-1]
    best = val_score.amax(-1, keepdim=True)
    is_best = val_score >= best - 1e-6
    return (is_best * torch.arange(k, device=val_score.device)).amax(-1)


def _standardised_columns(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(xbt, mean, scale)``: each site's standardised features as columns ``(S, D + 1, N)``, bias row last.

    One layout serves the loss's two products (scores and gradient); it is written once, never in
    place on the caller's activations.
    """
    import torch

    S, N, D = X.shape
    mean = X.mean(1)  # (S, D)
    xbt = torch.empty((S, D + 1, N), dtype=X.dtype, device=X.device)
    torch.sub(X.transpose(1, 2), mean[:, :, None], out=xbt[:, :D])
    std = torch.linalg.vector_norm(xbt[:, :D], dim=-1) / max(N - 1, 1) ** 0.5  # a contiguous reduction, unlike std(1)
    scale = _safe_scale(std)
    xbt[:, :D] /= scale[:, :, None]
    xbt[:, D] = 1.0
    return xbt, mean, scale


def _top_axes(A: torch.Tensor, rank: int, oversample: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``rank`` principal axes of centred columns ``A (S, D, N)``: ``(V (S, D, r), evals (S, r))``.

    A randomised Nystrom approximation of the covariance ``A A^T / N`` (Frangella, Tropp and Udell
    2023, "Randomized Nystrom preconditioning", algorithm 2.1): two products of the data with
    ``rank + oversample`` columns, the rest on small matrices in float64. A full eigendecomposition
    would cost a Gram matrix and ``O(D^3)`` per site. The test matrix is seeded and the same for
    every site, so a site's axes do not depend on which other sites are sketched with it, and fits
    repeat exactly.
    """
    import torch

    S, D, N = A.shape
    width = min(rank + oversample, D, N)
    gen = torch.Generator(device=A.device).manual_seed(0)
    omega = torch.linalg.qr(torch.randn((D, width), generator=gen, dtype=A.dtype, device=A.device)).Q
    omega = omega.expand(S, D, width).contiguous()
    Y = (torch.bmm(A, torch.bmm(A.transpose(1, 2), omega)) / N).double()  # (S, D, width): Sigma omega
    omega = omega.double()
    shift = torch.finfo(A.dtype).eps * torch.linalg.matrix_norm(Y)[:, None, None]  # Y's rounding, as Frangella et al.
    Y = Y + shift * omega
    core = omega.transpose(1, 2) @ Y
    lam, W = torch.linalg.eigh((core + core.transpose(1, 2)) / 2)  # where they take a Cholesky factor:
    good = lam > 1e-12 * lam[:, -1:].clamp_min(1e-300)  # a rank below the width (few rows) leaves zeros
    B = Y @ W * (good / lam.clamp_min(1e-300).sqrt())[:, None, :]  # B B^T = Y core^+ Y^T, the approximation
    keep = min(rank, width)
    squares, W = torch.linalg.eigh(B.transpose(1, 2) @ B)  # B's singular values squared, ascending
    squares, W = squares[:, -keep:], W[:, :, -keep:]
    real = squares > 1e-10 * squares[:, -1:].clamp_min(1e-300)  # fewer rows than columns leave some at 0
    U = B @ W * (real / squares.clamp_min(1e-300).sqrt())[:, None, :]  # B's left singular vectors, or 0
    return U.to(A.dtype), ((squares - shift[:, :, 0]) * real).clamp_min(0).to(A.dtype)


def _site_groups(xbt: torch.Tensor, group_bytes: int | None) -> list[slice]:
    """Consecutive groups of sites, each fitted as one batch, of at most ``group_bytes`` of data
    (at least one site): on a CPU ``CPU_GROUP_BYTES``, so that a group's data stays in the cache
    through the fit's 30-odd passes over it; elsewhere (``0``) every site in one batch."""
    S = xbt.shape[0]
    if group_bytes is None:
        group_bytes = CPU_GROUP_BYTES if xbt.device.type == "cpu" else 0
    per_site = xbt[0].numel() * xbt.element_size() if S else 1
    size = S if group_bytes <= 0 else max(1, group_bytes // per_site)
    return [slice(i, min(i + size, S)) for i in range(0, S, size)]


def _pick(body: torch.Tensor, bias: torch.Tensor, grid: torch.Tensor, val: torch.Tensor) -> Fit:
    """Each (site, rep)'s chosen strength from ``body (S, R, K, out, D)`` and ``bias (S, R, K, out)``."""
    S, R, _, C, D = body.shape
    choice = _select(val)  # (S, R)
    w = body.gather(2, choice[:, :, None, None, None].expand(S, R, 1, C, D))[:, :, 0].transpose(2, 3)
    b = bias.gather(2, choice[:, :, None, None].expand(S, R, 1, C))[:, :, 0]
    return Fit(w.contiguous(), b, grid[choice], grid, val, (body, bias))


def _val_score(body: torch.Tensor, bias: torch.Tensor, Xv: torch.Tensor, Yv: torch.Tensor) -> torch.Tensor:
    """Minus the mean validation log-loss ``(S, R, K)`` of every candidate: strengths are chosen on
    it (a proper score with no ties, where accuracy on a small validation split often ties)."""
    import torch

    zv = _raw_scores(body, bias, Xv)  # (S, R, K, out, M)
    S, R, K, C, M = zv.shape
    if C == 1:
        y = Yv[None, :, None, :].to(zv.dtype)
        nll = torch.nn.functional.softplus(zv[:, :, :, 0]) - y * zv[:, :, :, 0]
    else:
        pick = Yv[None, :, None, None, :].expand(S, R, K, 1, M)
        nll = (torch.logsumexp(zv, 3, keepdim=True) - zv.gather(3, pick))[:, :, :, 0]
    return -nll.mean(-1)


def _unscale(mean: torch.Tensor, scale: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw-space ``(body, bias)`` from ``theta (S, R, K, out, D+1)`` fitted on standardised features."""
    import torch

    body = theta[..., :-1] / scale[:, None, None, None, :]
    return body, theta[..., -1] - torch.einsum("sd,srkcd->srkc", mean, body)


def _raw_scores(body: torch.Tensor, bias: torch.Tensor, Xv: torch.Tensor) -> torch.Tensor:
    """``(S, R, K, out, M)`` scores of every candidate on validation rows ``(S, M, D)``."""
    import torch

    return torch.einsum("smd,srkcd->srkcm", Xv, body) + bias[..., None]


def fit_logistic(
    X: torch.Tensor,
    Y: torch.Tensor,
    Xv: torch.Tensor,
    Yv: torch.Tensor,
    n_classes: int,
    weights: torch.Tensor | None = None,
    l2: Any = None,
    max_iter: int = 500,
    tol: float = 1e-4,
    history: int = 10,
    rank: int = PRECONDITIONER_RANK,
    group_bytes: int | None = None,
) -> Fit:
    """Batched L-BFGS on standardised features, preconditioned by Bohning's curvature bound.

    The Hessian of the mean cross-entropy is at most ``b * Sigma`` (``b = 1/4`` for one logit,
    ``1/2`` for a softmax; Bohning 1992), ``Sigma`` the features' covariance, so ``(b * Sigma +
    l2 I)^-1`` is a safe initial inverse Hessian for every problem. It is built from a randomised
    Nystrom sketch of ``Sigma``'s top ``rank`` axes (:func:`_top_axes`,
    :class:`~interpkit.probing._logistic.CurvatureBound`), the preconditioner of Frangella, Tropp
    and Udell (2023): two products with the data instead of a Gram matrix, an eigendecomposition
    and a rotated copy per site. On the embedded model's residual stream (30 layers, 1,800 rows,
    5 strengths) the fit reads a layer's data 940 times in all (31 per layer) at rank 64, 880
    times at rank 128, 1,196 at rank 32 and 4,290 at rank 8 (``benchmarks/probing_solver.py``).

    Every strength and replicate of a site is in one batch, and on a GPU every site too. On a
    CPU the sites are batched in groups of ``group_bytes`` of data (default ``CPU_GROUP_BYTES``),
    one group after another, so that each group's data stays in the cache while it is fitted:
    on the benchmark above the fit takes 0.65 s against 0.81 s in one batch of 125 MB
    (``benchmarks/probing_solver.py``). The problems are independent and the sketch's test matrix
    is shared, so the grouping does not change the result (``tests/test_probing.py``).
    """
    import torch

    from interpkit.probing._logistic import CurvatureBound, LogisticLoss
    from interpkit.probing._optim import lbfgs

    if n_classes < 2:
        raise ProbeError("logistic probes need classification labels with at least two classes")
    S, R, D = X.shape[0], Y.shape[0], X.shape[2]
    grid = _grid("logistic", l2, X.device)
    K, C = len(grid), (1 if n_classes == 2 else n_classes)
    xbt, mean, scale = _standardised_columns(X)
    pen = grid.view(1, 1, K, 1, 1)
    w = _row_weights(Y, weights)[None, :, None, None, :]
    theta = torch.zeros((S, R, K, C, D + 1), dtype=X.dtype, device=X.device)
    for group in _site_groups(xbt, group_bytes):
        axes, evals = _top_axes(xbt[group, :D], rank)
        pre = CurvatureBound(axes, evals, 0.25 if C == 1 else 0.5, pen)
        loss = LogisticLoss(xbt[group], Y, w, pen, C)
        theta[group] = lbfgs(loss, theta[group], (3, 4), max_iter=max_iter, tol=tol, history=history, precondition=pre)
    body, bias = _unscale(mean, scale, theta)
    return _pick(body, bias, grid, _val_score(body, bias, Xv, Yv))


def fit_ridge(
    X: torch.Tensor,
    Y: torch.Tensor,
    Xv: torch.Tensor,
    Yv: torch.Tensor,
    n_classes: int,
    weights: torch.Tensor | None = None,
    l2: Any = None,
) -> Fit:
    """Closed form ``beta = (Z^T W Z + l2 I)^-1 Z^T W y`` on standardised features, every strength at once."""
    import torch

    if n_classes:
        raise ProbeError("ridge probes are for continuous targets; use method='logistic' for classes")
    R = Y.shape[0]
    grid = _grid("ridge", l2, X.device)
    mean, scale = _standardise(X)
    Xs = (X - mean[:, None]) / scale[:, None]
    w = _row_weights(Y, weights)  # (R, N), each row sums to 1
    thetas = []
    for r in range(R):  # one eigendecomposition per weighting: training-set sizes differ in their rows
        zm = torch.einsum("snd,n->sd", Xs, w[r])
        Zc = Xs - zm[:, None]
        ym = (Y[r].float() * w[r]).sum()
        evals, V = torch.linalg.eigh(torch.einsum("snd,n,sne->sde", Zc, w[r], Zc).double())
        proj = torch.einsum("sde,snd,n->se", V, Zc.double(), (w[r] * (Y[r].float() - ym)).double())
        beta = proj[:, None] / (evals.clamp_min(0)[:, None] + grid.double()[None, :, None])  # (S, K, D) rotated
        beta = torch.einsum("sde,ske->skd", V, beta).float()
        thetas.append(torch.cat([beta, (ym - torch.einsum("skd,sd->sk", beta, zm))[..., None]], -1))
    theta = torch.stack(thetas, 1)[:, :, :, None, :]  # (S, R, K, 1, D+1) on standardised features
    body, bias = _unscale(mean, scale, theta)
    pred = _raw_scores(body, bias, Xv)[:, :, :, 0]  # (S, R, K, M)
    target = Yv.float()[None, :, None, :]
    sse = ((pred - target) ** 2).sum(-1)
    sst = ((target - target.mean(-1, keepdim=True)) ** 2).sum(-1).clamp_min(1e-12)
    return _pick(body, bias, grid, 1 - sse / sst)


def fit_diff_means(
    X: torch.Tensor,
    Y: torch.Tensor,
    Xv: torch.Tensor,
    Yv: torch.Tensor,
    n_classes: int,
    weights: torch.Tensor | None = None,
    l2: Any = None,
) -> Fit:
    """Class means; scores ``x . (S + l2 I)^-1 mu_c - mu_c . (S + l2 I)^-1 mu_c / 2 + log prior_c``."""
    import torch

    if n_classes < 2:
        raise ProbeError("difference-of-means probes need classification labels with at least two classes")
    grid = _grid("diff_means", l2, X.device)
    mean, scale = _standardise(X)
    Xs = (X - mean[:, None]) / scale[:, None]
    w = _row_weights(Y, weights)  # (R, N)
    thetas, directions = [], []
    for r in range(Y.shape[0]):  # one covariance per replicate: its labels (or rows) differ
        onehot = torch.nn.functional.one_hot(Y[r], n_classes).float()  # (N, C)
        prior = (onehot * w[r][:, None]).sum(0).clamp_min(1e-12)  # (C,)
        means = torch.einsum("snd,nc,n->scd", Xs, onehot, w[r]) / prior[None, :, None]  # (S, C, D)
        within = Xs - torch.einsum("nc,scd->snd", onehot, means)
        evals, V = torch.linalg.eigh(torch.einsum("snd,n,sne->sde", within, w[r], within).double())
        rotated = torch.einsum("sde,scd->sce", V, means.double())  # (S, C, D)
        inv = 1.0 / (evals.clamp_min(0)[:, None, :] + grid.double()[None, :, None])  # (S, K, D)
        wc = torch.einsum("sde,skce->skcd", V, rotated[:, None] * inv[:, :, None])  # (S, K, C, D)
        bc = -0.5 * torch.einsum("skcd,scd->skc", wc, means.double()) + prior.double().log()
        if n_classes == 2:
            wc, bc = (wc[:, :, 1] - wc[:, :, 0])[:, :, None], (bc[:, :, 1] - bc[:, :, 0])[:, :, None]
        thetas.append(torch.cat([wc, bc[..., None]], -1).float())  # (S, K, out, D+1)
        directions.append((means[:, -1] - means[:, 0]) * scale)  # raw-space mean difference (first vs last class)
    body, bias = _unscale(mean, scale, torch.stack(thetas, 1))
    fit = _pick(body, bias, grid, _val_score(body, bias, Xv, Yv))
    fit.direction = torch.stack(directions, 1)  # (S, R, D)
    return fit


METHODS: dict[str, Callable[..., Fit]] = {"logistic": fit_logistic, "ridge": fit_ridge, "diff_means": fit_diff_means}


def get_method(name: str) -> Callable[..., Fit]:
    if name not in METHODS:
        raise unknown("probe method", name, METHODS, ProbeError)
    return METHODS[name]


def fit_batched(
    method: str,
    X: torch.Tensor,
    Y: torch.Tensor,
    Xv: torch.Tensor,
    Yv: torch.Tensor,
    n_classes: int,
    weights: torch.Tensor | None = None,
    **options: Any,
) -> Fit:
    """Fit ``method`` on every site and every replicate target row of ``Y`` at once."""
    fn = get_method(method)
    if Xv.shape[1] == 0:
        raise ProbeError("the validation split is empty; strengths are chosen on it (use fractions with val > 0)")
    try:
        return fn(X.float(), Y, Xv.float(), Yv, n_classes, weights, **options)
    except TypeError as exc:
        raise ProbeError(f"probe method {method!r} got an option it does not take: {exc}") from None
