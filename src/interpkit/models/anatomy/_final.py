"""A forward read at each row's answer position only: the final norm and unembedding (the largest
matmul of a small model) run on one position per row, where that reproduces the model's logits."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.models.anatomy._checks import final_hook, tail

if TYPE_CHECKING:
    import torch

Hook = tuple[str, Callable[..., Any]]


class StopForward(Exception):
    """Raised by a hook to end a forward early (caught where it is raised for, never escapes)."""


def answer_logits(model: Any, answer_pos: torch.Tensor, run: Callable[[Sequence[Hook]], torch.Tensor]) -> torch.Tensor:
    """Logits ``(rows, d_vocab)`` on ``model.device`` at ``answer_pos`` of the forward ``run(extra_hooks)``.

    ``run`` runs the model with its own hooks plus ``extra_hooks`` and returns the logits. Where
    the final norm and unembedding of the last residual reproduce the logits
    (``model.anatomy.tail_is_exact``), the forward stops at the final residual stream and only the
    answer positions are unembedded.
    """
    import torch

    rows = torch.arange(answer_pos.shape[0], device=answer_pos.device)
    if not model.anatomy.tail_is_exact:
        logits = run(())
        return logits[rows.to(logits.device), answer_pos.to(logits.device)].to(model.device)
    caught: dict[str, torch.Tensor] = {}

    def stop(act: torch.Tensor, hook: Any) -> None:
        caught["resid"] = act[rows.to(act.device), answer_pos.to(act.device)]
        raise StopForward

    with contextlib.suppress(StopForward):
        run([(final_hook(model.cfg.n_layers), stop)])
    return tail(model.bridge, caught["resid"]).to(model.device)
