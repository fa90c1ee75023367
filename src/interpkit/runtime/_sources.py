"""Where patched values come from: the other run, or an ablation of the target run.

* ``None`` (plain patching): denoising patches the clean run's activation into the corrupt run;
  noising patches the corrupt run's activation into the clean run.
* ``"zero"``: zeros.
* ``"mean"``: the mean over the task's corrupt prompts (per position when all examples have
  the same length, else over every real token).
* ``"resample"``: the clean activation of another example of the task (a seeded derangement, so
  no example receives its own activation).
* ``"counterfactual"``: the paired corrupt example's activation.

Ablations always replace activations in the clean run.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from interpkit.errors import PatchingError, unknown

if TYPE_CHECKING:
    import torch

    from interpkit.tasks import Task

ABLATIONS = ("zero", "mean", "resample", "counterfactual")
DIRECTIONS = ("denoise", "noise")
DEFAULT_DIRECTION = "denoise"
DEFAULT_ABLATION = "counterfactual"


def default_direction(direction: str | None, where: str, was: str) -> str:
    """``direction``, or interpkit's one default (:data:`DEFAULT_DIRECTION`) with a FutureWarning where
    ``where`` used to default to ``was`` (so an old call site's results do not change silently)."""
    if direction is not None:
        return direction
    if was != DEFAULT_DIRECTION:
        warnings.warn(
            f"{where}: direction now defaults to {DEFAULT_DIRECTION!r}, interpkit's one default (it was {was!r} "
            f"before 0.2); pass direction={was!r} for the old results, or direction={DEFAULT_DIRECTION!r} to silence "
            "this warning",
            FutureWarning,
            stacklevel=3,
        )
    return DEFAULT_DIRECTION


def default_ablation(ablation: str | None, where: str, was: str) -> str:
    """``ablation``, or :data:`DEFAULT_ABLATION` with a FutureWarning where ``where`` used to default to ``was``."""
    if ablation is not None:
        return ablation
    if was != DEFAULT_ABLATION:
        warnings.warn(
            f"{where}: ablation now defaults to {DEFAULT_ABLATION!r}, interpkit's one default (it was {was!r} "
            f"before 0.2); pass ablation={was!r} for the old results, or ablation={DEFAULT_ABLATION!r} to silence "
            "this warning",
            FutureWarning,
            stacklevel=3,
        )
    return DEFAULT_ABLATION


def check_mode(direction: str, ablation: str | None) -> None:
    if direction not in DIRECTIONS:
        raise unknown("direction", direction, DIRECTIONS, PatchingError)
    if ablation is not None and ablation not in ABLATIONS:
        raise unknown("ablation", ablation, ABLATIONS, PatchingError)


def derangement(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation of ``range(n)`` with no fixed point (n >= 2)."""
    import torch

    if n < 2:
        raise PatchingError(
            "resample ablation needs at least 2 examples in the task (it swaps in another example's activation)"
        )
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    # Rotating a random permutation's cycle order gives a derangement: example perm[i] takes perm[i+1].
    out = torch.empty(n, dtype=torch.long)
    out[perm] = perm.roll(-1)
    return out


def mean_activation(act: torch.Tensor, task: Task, pattern: bool = False) -> torch.Tensor:
    """Mean of ``act`` (batch, ...) over examples; per position if lengths agree, else over real tokens."""
    if task.same_positions() or pattern:
        return act.float().mean(0, keepdim=True).to(act.dtype)
    mask = task.attention_mask.to(act.device).bool()  # (batch, pos)
    real = act[mask]  # (tokens, ...)
    mean = real.float().mean(0).to(act.dtype)
    return mean.expand(act.shape[1], *mean.shape)[None].clone()


def ablation_source(
    ablation: str, clean_act: torch.Tensor, corrupt_act: torch.Tensor, task: Task, seed: int, pattern: bool = False
) -> torch.Tensor:
    """The replacement values (batch or 1, ...) that ``ablation`` patches into the clean run."""
    import torch

    if ablation == "zero":
        return torch.zeros_like(clean_act[:1])
    if ablation == "mean":
        return mean_activation(corrupt_act, task, pattern=pattern)
    if ablation == "resample":
        if not task.same_positions():
            raise PatchingError(
                "resample ablation needs examples of equal length (it moves activations between examples); "
                f"task {task.name!r} has lengths {sorted(set((task.attention_mask.sum(1)).tolist()))}"
            )
        return clean_act[derangement(clean_act.shape[0], seed).to(clean_act.device)]
    if ablation == "counterfactual":
        return corrupt_act
    raise unknown("ablation", ablation, ABLATIONS, PatchingError)
