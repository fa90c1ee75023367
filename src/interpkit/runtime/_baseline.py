"""The runs every engine starts from: the task's clean and corrupt prompts, in memory-sized chunks,
with the activations the engine needs captured on the way and only the answer position's logits kept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.batching import Batcher, auto_rows
from interpkit.metrics import check_finite_run
from interpkit.metrics import get as get_metric
from interpkit.runtime._forward import forward_final

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.tasks import Task


def capture_final(
    model: Model, tokens: torch.Tensor, names: Sequence[str], answer_pos: torch.Tensor, batcher: Batcher | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Forwards of ``tokens`` in row chunks: {hook: activation} of ``names`` and logits ``(batch, d_vocab)``.

    Unlike :func:`~interpkit.runtime.capture`, only the answer position's logits are kept (never
    the full ``(batch, pos, d_vocab)`` tensor), and the rows go in chunks that halve on out-of-memory.
    """
    import torch

    canonical = sorted({model.resolve_hook(n) for n in names})
    batcher = batcher or Batcher(auto_rows(model, tokens.shape[1]))

    def run(a: int, b: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        store: dict[str, torch.Tensor] = {}

        def keep(act: torch.Tensor, hook: Any) -> None:
            store[hook.name] = act.detach().clone()

        with torch.inference_mode():
            final = forward_final(model, tokens[a:b], None, answer_pos[a:b], [(n, keep) for n in canonical])
        return store, final

    parts = batcher.run(0, tokens.shape[0], run)
    if len(parts) == 1:
        return parts[0]
    return {n: torch.cat([p[0][n] for p in parts]) for n in canonical}, torch.cat([p[1] for p in parts])


def baseline(
    model: Model, task: Task, metric: str, clean_hooks: Sequence[str] = (), corrupt_hooks: Sequence[str] = ()
) -> dict[str, Any]:
    """Clean and corrupt runs: metric values, the clean log-probs KL needs, and any activations asked for.

    One forward per run: ``clean_hooks`` / ``corrupt_hooks`` are captured on the way
    (``"clean_acts"``, ``"corrupt_acts"``: {resolved hook name: activation}). The runs go in
    batches sized from free memory (halved on out-of-memory) and keep only the answer position's
    logits, never the full ``(batch, pos, d_vocab)`` tensor.

    >>> import interpkit as ik
    >>> from interpkit.runtime import baseline
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=4)
    >>> base = baseline(model, task, "logit_diff", clean_hooks=["blocks.0.attn.hook_z"])
    >>> base["clean"].shape, sorted(base["clean_acts"])
    (torch.Size([4]), ['blocks.0.attn.hook_z'])
    """
    fn = get_metric(metric)
    batcher = Batcher(auto_rows(model, task.n_pos))
    clean_acts, clean_final = capture_final(model, task.clean, clean_hooks, task.answer_pos, batcher)
    check_finite_run(clean_final, "clean", task)  # else the first patch would be blamed for the NaN
    corrupt_acts, corrupt_final = capture_final(model, task.corrupt, corrupt_hooks, task.answer_pos, batcher)
    check_finite_run(corrupt_final, "corrupt", task)
    clean_lp = clean_final.float().log_softmax(-1)
    answer, wrong = task.answer.to(clean_final.device), task.wrong.to(clean_final.device)
    return {
        "clean": fn(clean_final, answer, wrong, clean_lp),
        "corrupt": fn(corrupt_final, answer, wrong, clean_lp),
        "clean_logprobs": clean_lp,
        "clean_acts": clean_acts,
        "corrupt_acts": corrupt_acts,
    }


def str_tokens(model: Model, task: Task) -> list[str]:
    """The first clean prompt's tokens as strings (position labels of a Result)."""
    return model.to_str_tokens(task.clean[0]) if model.tokenizer is not None else [str(i) for i in range(task.n_pos)]
