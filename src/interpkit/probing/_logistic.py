"""The logistic probes' objective: mean cross-entropy of linear scores plus an L2 penalty, batched.

Every problem (site, replicate target, strength) has parameters ``theta (out, P)`` over features
with a constant last column (the bias), and scores ``z = theta X^T``; the loss is elementwise in
``z``. That linearity is what makes the line search cheap: along a direction ``d`` the scores
are ``z + t (d X^T)``, so one product with the data gives the loss and its first two derivatives
at *every* step length ``t`` (:class:`Ray`). A batched L-BFGS iteration then reads the data
twice (the direction's scores and the new gradient) however many trial steps its line search
takes, where evaluating the objective at each trial step would read it twice per trial; on a
batch of 150 problems one of them nearly always needs a second trial.

    >>> import torch
    >>> X = torch.tensor([[[0.0, 2.0, -1.0], [1.0, 1.0, 1.0]]])      # 1 site: a feature and the bias, 3 rows
    >>> loss = LogisticLoss(X, torch.tensor([[0, 1, 0]]), torch.full((1, 1, 1, 1, 3), 1 / 3), torch.zeros(1, 1, 1, 1, 1), 1)
    >>> f, g = loss(torch.zeros(1, 1, 1, 1, 2))
    >>> round(float(f), 4)                                               # log 2: every row at p = 1/2
    0.6931
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class LogisticLoss:
    """Mean (row-weighted) cross-entropy plus ``pen / 2 * ||theta[..., :-1]||^2`` for every problem.

    ``xbt (S, P, N)``: features, transposed, with the bias last (the loss owns it: :meth:`restrict`
    moves its sites); ``Y (R, N)``: class labels per
    replicate; ``weights (1, R, 1, 1, N)``: row weights summing to 1 per replicate; ``pen
    (1, 1, K, 1, 1)``: L2 strengths; ``n_out``: 1 (one logit, two classes) or the number of classes.
    Parameters are ``theta (S, R, K, n_out, P)``; losses come back as ``(S, R, K, 1, 1)``.
    Keeps the scores of the last point it evaluated, so that a :meth:`ray` from there costs one
    product with the data.
    """

    def __init__(self, xbt: torch.Tensor, Y: torch.Tensor, weights: torch.Tensor, pen: torch.Tensor, n_out: int):
        self.xbt = xbt  # one copy serves both products (BLAS reads it transposed for the gradient)
        self.Y, self.weights, self.pen, self.n_out = Y, weights.to(xbt.dtype), pen, n_out
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (theta, its scores)

    def restrict(self, index: torch.Tensor) -> LogisticLoss:
        """The same loss over the sites ``index`` (ascending positions among those it holds) only.

        Their data moves to the front of this loss's own buffer, in place: a fresh copy would
        cost as much again in page faults as in copying, and this loss is not used afterwards.
        """
        for slot, site in enumerate(index.tolist()):
            if slot != site:  # slot < site, and every later site is past it: nothing is overwritten unread
                self.xbt[slot].copy_(self.xbt[site])
        rest = LogisticLoss(self.xbt[: len(index)], self.Y, self.weights, self.pen, self.n_out)
        if self._last is not None:  # the optimiser goes on from the same point: keep its scores
            rest._last = (self._last[0][index], self._last[1][index])
        self.xbt, self._last = None, None  # type: ignore[assignment]
        return rest

    def scores(self, theta: torch.Tensor) -> torch.Tensor:
        """``(S, R, K, out, N)`` scores of every row: one pass over the data."""
        import torch

        s, R, K, C, P = theta.shape
        return torch.bmm(theta.reshape(s, R * K * C, P), self.xbt).view(s, R, K, C, -1)

    def _loss_and_dz(self, z: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss ``(S, R, K, 1, 1)`` and the weighted derivative in ``z`` (elementwise, no pass over the data)."""
        body = theta[..., :-1]
        return self.data_loss(z) + 0.5 * self.pen * (body * body).sum((3, 4), keepdim=True), self._dz(z)

    def _dz(self, z: torch.Tensor) -> torch.Tensor:
        import torch

        y = self.Y[None, :, None, None, :]
        if self.n_out == 1:
            dz = torch.sigmoid(z) - y.to(z.dtype)
        else:
            dz = torch.softmax(z, 3)
            dz.scatter_add_(3, y.expand(*z.shape[:3], 1, z.shape[-1]), -torch.ones_like(dz[:, :, :, :1]))
        return dz * self.weights

    def data_loss(self, z: torch.Tensor) -> torch.Tensor:
        """The weighted cross-entropy ``(S, R, K, 1, 1)`` of scores ``z``, without the penalty or a derivative."""
        import torch

        y = self.Y[None, :, None, None, :]
        if self.n_out == 1:
            loss = torch.nn.functional.softplus(z) - y.to(z.dtype) * z
        else:
            idx = y.expand(*z.shape[:3], 1, z.shape[-1])
            loss = torch.logsumexp(z, 3, keepdim=True) - z.gather(3, idx)
        return (loss * self.weights).sum((3, 4), keepdim=True)

    def _at(
        self, theta: torch.Tensor, z: torch.Tensor, loss: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradient at ``theta`` with scores ``z``; ``loss``, when the caller has it, is not recomputed."""
        import torch

        if loss is None:
            loss, dz = self._loss_and_dz(z, theta)
        else:
            dz = self._dz(z)
        s, R, K, C, P = theta.shape
        grad = torch.bmm(dz.view(s, R * K * C, -1), self.xbt.transpose(1, 2)).view(s, R, K, C, P)
        grad[..., :-1] += self.pen * theta[..., :-1]
        self._last = (theta, z)
        return loss, grad

    def __call__(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradient at ``theta`` (two passes over the data; one at 0, where fits start)."""
        if bool(theta.any()):
            return self._at(theta, self.scores(theta))
        return self._at(theta, theta.new_zeros((*theta.shape[:-1], self.xbt.shape[-1])))

    def ray(self, theta: torch.Tensor, direction: torch.Tensor) -> Ray:
        """The loss along ``theta + t * direction`` (one pass, none for ``z`` when ``theta`` was the last point)."""
        import torch

        last = self._last
        same = last is not None and (last[0] is theta or torch.equal(last[0], theta))
        z = last[1] if same else self.scores(theta)
        return Ray(self, theta, direction, z, self.scores(direction))


class Ray:
    """The loss on the line ``theta + t * direction``, ``t`` per problem ``(S, R, K, 1, 1)``."""

    def __init__(
        self, loss: LogisticLoss, theta: torch.Tensor, direction: torch.Tensor, z: torch.Tensor, zd: torch.Tensor
    ):
        self.loss_fn, self.theta, self.direction, self.z, self.zd = loss, theta, direction, z, zd
        body, step = theta[..., :-1], direction[..., :-1]
        # ||body + t step||^2 = bb + 2 t bs + t^2 ss: the penalty along the ray from three numbers per problem
        self._bb, *self._pen = [
            (a * b).sum((3, 4), keepdim=True) for a, b in ((body, body), (body, step), (step, step))
        ]

    def loss(self, t: torch.Tensor) -> torch.Tensor:
        """The loss at step ``t`` (elementwise work only)."""
        penalty = self._bb + t * (2 * self._pen[0] + t * self._pen[1])
        return self.loss_fn.data_loss(self.z + t * self.zd) + 0.5 * self.loss_fn.pen * penalty

    def slopes(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First and second derivatives of the loss in ``t`` at ``t``."""
        import torch

        z, zd, w = self.z + t * self.zd, self.zd, self.loss_fn.weights
        if self.loss_fn.n_out == 1:
            p = torch.sigmoid(z)
            y = self.loss_fn.Y[None, :, None, None, :].to(z.dtype)
            first = ((p - y) * w * zd).sum((3, 4), keepdim=True)
            second = (p * (1 - p) * w * zd * zd).sum((3, 4), keepdim=True)
        else:
            p = torch.softmax(z, 3)
            idx = self.loss_fn.Y[None, :, None, None, :].expand(*z.shape[:3], 1, z.shape[-1])
            mean = (p * zd).sum(3, keepdim=True)
            first = ((mean - zd.gather(3, idx)) * w).sum((3, 4), keepdim=True)
            second = (((p * zd * zd).sum(3, keepdim=True) - mean * mean) * w).sum((3, 4), keepdim=True)
        pen = self.loss_fn.pen
        return first + pen * (self._pen[0] + t * self._pen[1]), second + pen * self._pen[1]

    def at(self, t: torch.Tensor, loss: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(theta + t d, loss, gradient)`` there: one pass over the data (``loss``: the loss at ``t``, if known)."""
        theta = self.theta + t * self.direction
        loss, grad = self.loss_fn._at(theta, self.z + t * self.zd, loss)
        return theta, loss, grad


class CurvatureBound:
    """``(bound * Sigma + l2 I)^-1`` for every problem, with ``Sigma`` known on its top axes only.

    The Hessian of the mean cross-entropy is at most ``bound * Sigma`` (Bohning 1992: ``bound =
    1/4`` for one logit, ``1/2`` for a softmax), ``Sigma`` the features' covariance. On its top
    ``r`` axes ``V (S, D, r)`` with eigenvalues ``evals (S, r)`` the inverse is exact; every other
    axis gets the smallest of those eigenvalues, which is at least its own, so the bound stays a
    bound.
    Applying it costs two products with ``V``, against one with the data for an objective
    evaluation. The bias (the last parameter; the features are centred, so it is orthogonal to
    them) gets ``1 / bound``.
    """

    def __init__(self, axes: torch.Tensor, evals: torch.Tensor, bound: float, pen: torch.Tensor):
        self.axes, self.evals, self.bound, self.pen = axes, evals, bound, pen
        # clamped: with no penalty a direction the rows never move has no curvature at all
        self.tail = 1.0 / (bound * evals.amin(-1)[:, None, None, None, None] + pen).clamp_min(1e-8)  # (S, 1, K, 1, 1)
        self.extra = 1.0 / (bound * evals[:, None, None, None, :] + pen).clamp_min(1e-8) - self.tail  # (S, 1, K, 1, r)

    def restrict(self, index: torch.Tensor) -> CurvatureBound:
        return CurvatureBound(self.axes[index], self.evals[index], self.bound, self.pen)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        import torch

        s, R, K, C, P = v.shape
        w = v[..., :-1]
        coef = torch.bmm(w.reshape(s, R * K * C, P - 1), self.axes).view(s, R, K, C, -1) * self.extra
        top = torch.bmm(coef.view(s, R * K * C, -1), self.axes.transpose(1, 2)).view(s, R, K, C, P - 1)
        return torch.cat([w * self.tail + top, v[..., -1:] / self.bound], -1)
