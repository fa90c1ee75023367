"""Batched L-BFGS: many independent smooth problems minimised at once, each with its own step.

The problems share nothing but the tensor they live in: every inner product, curvature pair,
step length and stopping test is per problem, so one badly conditioned problem (a weakly
regularised probe on a layer with huge activations) never slows or derails another. Only the
matrix products that evaluate all the losses are shared, which is what makes fitting a probe for
every layer and every regularisation strength cost about as much as fitting one. Once a tenth
of the groups along the first axis (sites) have converged, an objective with a
``restrict(index)`` method continues on the rest of its data only (and again at each further
tenth), so a few slow problems do not keep paying for the finished ones.

The method is Nocedal and Wright (2006), *Numerical Optimization*, algorithm 7.4 (two-loop
recursion) with a backtracking Armijo line search; curvature pairs with ``s.y <= 0`` are skipped.
An objective that can give its values along a line cheaply (a ``ray(x, d)`` method, as the
logistic probes' :class:`~interpkit.probing._logistic.LogisticLoss` has) gets a line search on
that line instead: one Newton step towards the line's minimum, then backtracking, with no
evaluation of the full objective until the step is chosen. The initial inverse Hessian is a
:class:`Preconditioner`: a diagonal tensor, or any operator that can be restricted to some groups
(the logistic probes use a low-rank one, :class:`~interpkit.probing._logistic.CurvatureBound`).

    >>> import torch
    >>> from interpkit.probing._optim import lbfgs
    >>> target = torch.tensor([[1.0, -2.0], [3.0, 0.5]])          # two problems, 2 parameters each
    >>> fun = lambda x: (((x - target) ** 2).sum(1, keepdim=True), 2 * (x - target))
    >>> lbfgs(fun, torch.zeros(2, 2), param_dims=(1,)).round(decimals=4)
    tensor([[ 1.0000, -2.0000],
            [ 3.0000,  0.5000]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

Objective = Callable[["torch.Tensor"], tuple["torch.Tensor", "torch.Tensor"]]
NEWTON_STEPS = 1  # line-search refinements when the objective offers a ray (free: elementwise work)


class Preconditioner(Protocol):
    """A positive definite initial inverse Hessian for every problem, applied to tensors shaped like ``x``."""

    def __call__(self, v: torch.Tensor) -> torch.Tensor: ...
    def restrict(self, index: torch.Tensor) -> Preconditioner: ...


class Diagonal:
    """The preconditioner ``v * diag`` (``diag`` broadcastable to the parameters, positive)."""

    def __init__(self, diag: torch.Tensor):
        self.diag = diag

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return v * self.diag

    def restrict(self, index: torch.Tensor) -> Diagonal:
        return Diagonal(self.diag[index]) if self.diag.dim() and self.diag.shape[0] > 1 else self


class Ray(Protocol):
    """The objective along a line from the current point, as :meth:`LogisticLoss.ray` gives it."""

    def loss(self, t: torch.Tensor) -> torch.Tensor: ...
    def slopes(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def at(
        self, t: torch.Tensor, loss: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def lbfgs(
    fun: Objective,
    x0: torch.Tensor,
    param_dims: Sequence[int],
    max_iter: int = 500,
    history: int = 10,
    tol: float = 1e-4,
    ftol: float = 1e-9,
    max_backtracks: int = 30,
    precondition: torch.Tensor | Preconditioner | None = None,
) -> torch.Tensor:
    """Minimise every problem in ``x0`` at once; returns the solutions (same shape as ``x0``).

    ``fun(x)`` returns the losses, shaped like ``x`` with size 1 on ``param_dims``, and the
    gradient, shaped like ``x``. A problem stops when its largest gradient entry is below
    ``tol``, its loss changes by less than ``ftol`` relative, or its line search fails.
    ``precondition`` is the initial inverse Hessian ``P``: a positive tensor broadcastable to ``x``
    (a diagonal) or a :class:`Preconditioner`; it is rescaled at each step by ``s.y / y.P.y`` as
    L-BFGS rescales the identity. If ``fun`` has a ``restrict(index)`` method, it returns the
    objective over the groups ``index`` (positions along the first axis, ``0 not in param_dims``,
    among those ``fun`` holds) and ``fun`` is not used again.
    """
    import torch

    dims = tuple(param_dims)
    other = tuple(d for d in range(1, x0.ndim))

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dims, keepdim=True)

    out = x0.clone()
    keep = torch.arange(x0.shape[0], device=x0.device)  # which groups the working tensors hold
    x = x0.clone()
    f, g = fun(x)
    active = g.abs().amax(dims, keepdim=True) > tol
    hist: list[list[torch.Tensor]] = []  # [s, y, rho] per stored pair
    gamma = torch.ones_like(f)
    if precondition is None or isinstance(precondition, torch.Tensor):
        pre: Preconditioner = Diagonal(torch.ones((), device=x0.device) if precondition is None else precondition)
    else:
        pre = precondition
    for it in range(max_iter):
        if not bool(active.any()):
            break
        q = g.clone()
        alphas = []
        for s, y, rho in reversed(hist):
            a = rho * dot(s, q)
            q -= a * y
            alphas.append(a)
        q = gamma * pre(q)
        for (s, y, rho), a in zip(hist, reversed(alphas), strict=True):
            q += s * (a - rho * dot(y, q))
        d = -q
        gd = dot(g, d)
        uphill = gd >= 0
        if bool(uphill.any()):
            d = torch.where(uphill, -pre(g), d)
            gd = dot(g, d)
        d = d * active
        gd = gd * active
        if it == 0 and precondition is None:
            t = torch.clamp(1.0 / g.abs().sum(dims, keepdim=True).clamp_min(1e-12), max=1.0)
        else:
            t = torch.ones_like(f)
        ray = getattr(fun, "ray", None)
        if ray is not None:  # the loss along d is cheap: search there, then one gradient
            line = ray(x, d)
            t, ok, f_t = _search(line, f, gd, t, active, max_backtracks)
            accept = ok & active
            x_new, f_new, g_new = line.at(torch.where(accept, t, torch.zeros_like(t)), torch.where(accept, f_t, f))
        else:
            ok = ~active
            for _ in range(max_backtracks):
                x_new = x + t * d
                f_new, g_new = fun(x_new)
                ok = (f_new <= f + 1e-4 * t * gd) & torch.isfinite(f_new) | ~active
                if bool(ok.all()):
                    break
                t = torch.where(ok, t, t * 0.5)
            accept = ok & active
        step = torch.where(accept, x_new - x, torch.zeros_like(x))
        dg = torch.where(accept, g_new - g, torch.zeros_like(g))
        f_old = f
        # along a ray, refused problems took t = 0, so x_new is x there: keep it (its scores are cached)
        x = x_new if ray is not None else torch.where(accept, x_new, x)
        f = torch.where(accept, f_new, f)
        g = torch.where(accept, g_new, g)
        sy = dot(step, dg)
        curved = sy > 1e-10
        rho = torch.where(curved, 1.0 / sy.clamp_min(1e-10), torch.zeros_like(sy))
        gamma = torch.where(curved, sy / dot(pre(dg), dg).clamp_min(1e-20), gamma)
        hist.append([step * curved, dg * curved, rho])
        if len(hist) > history:
            hist.pop(0)
        small_change = (f_old - f).abs() <= ftol * torch.maximum(f.abs(), torch.ones_like(f))
        active = active & ok & ~(small_change & accept) & (g.abs().amax(dims, keepdim=True) > tol)
        live = active.flatten(1).any(1) if other else active
        restrict = getattr(fun, "restrict", None)
        if restrict is not None and int(live.sum()) <= 0.9 * len(keep) and bool(live.any()):
            out[keep] = x
            sel = torch.nonzero(live)[:, 0]
            keep = keep[sel]
            x, f, g, gamma, active = (t_[sel] for t_ in (x, f, g, gamma, active))
            pre = pre.restrict(sel)
            hist = [[h[sel] for h in pair] for pair in hist]
            fun = restrict(sel)
    out[keep] = x
    return out


def _search(
    line: Ray, f: torch.Tensor, gd: torch.Tensor, t: torch.Tensor, active: torch.Tensor, max_backtracks: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step lengths along a :class:`Ray`: a few safeguarded Newton steps towards the line's minimum
    from ``t``, then Armijo backtracking; every trial is elementwise work. Returns ``(t, ok, loss
    at t)``; the loss is that of the last trial, which is at ``t`` wherever ``ok``."""
    import torch

    for _ in range(NEWTON_STEPS):
        first, second = line.slopes(t)
        step = torch.where(second > 0, first / second.clamp_min(1e-30), torch.zeros_like(first))
        t = torch.clamp(t - step, min=0.25 * t, max=4.0 * t)
    ok, f_new = ~active, f
    for _ in range(max_backtracks):
        f_new = line.loss(t)
        ok = (f_new <= f + 1e-4 * t * gd) & torch.isfinite(f_new) | ~active
        if bool(ok.all()):
            break
        t = torch.where(ok, t, t * 0.5)
    return t, ok, f_new
