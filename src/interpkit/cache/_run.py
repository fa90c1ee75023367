"""``run``: one forward pass that keeps only the activations asked for, and optionally their gradients.

Each requested hook point gets one forward hook (through :mod:`interpkit.hooks`) that keeps the
chosen positions and head, cast and moved as asked, so nothing else is held. Without gradients
the pass runs under ``torch.inference_mode`` and stops as soon as every requested hook has fired
(no wasted later layers or unembedding). With ``with_grad`` the hooks hand their activation back
to the model so it stays on the autograd path, and ``torch.autograd.grad`` of the summed metric
gives each example's gradient at each kept activation (the model's ``.grad`` fields are untouched).

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> cache = ik.cache.run(model, [[1, 2, 3, 1, 2]], sites=["L1.resid_pre", "L0H1"], positions=-1)
    >>> cache["L1.resid_pre"].shape, cache["L0H1"].shape
    (torch.Size([1, 1, 128]), torch.Size([1, 1, 32]))
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from interpkit.cache._errors import CacheError
from interpkit.cache._select import Request, analysis_sites, normalize_positions, resolve_requests, select

if TYPE_CHECKING:
    import torch

    from interpkit.cache._activation_cache import ActivationCache
    from interpkit.models import Model
    from interpkit.tasks import Task

GRAD_METRICS = ("logit_diff", "logprob", "prob")


class _AllFired(Exception):
    """Raised from the last hook to end a forward pass early; never escapes ``run``."""


def _tokens_and_mask(model: Model, tokens: Any, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    import torch

    from interpkit.tasks import Task

    if isinstance(tokens, Task):
        mask = tokens.attention_mask if attention_mask is None else attention_mask
        return model.check_tokens(tokens.clean), mask.to(model.device)
    if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)):
        rows = [model.to_tokens(t)[0] for t in ([tokens] if isinstance(tokens, str) else tokens)]
        pad = getattr(model.tokenizer, "pad_token_id", None) or 0
        ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long, device=model.device)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        if attention_mask is None:
            attention_mask = None if bool(mask.all()) else mask
        tokens = ids
    ids = model.check_tokens(tokens)
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask).to(model.device)
        if attention_mask.shape != ids.shape:
            raise CacheError(f"attention_mask {tuple(attention_mask.shape)} does not match tokens {tuple(ids.shape)}")
    return ids, attention_mask


def _metric_fn(
    model: Model, with_grad: Any, answers: Any, tokens: Any, ids: torch.Tensor, mask: torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch

    from interpkit.metrics import METRICS, final_logits
    from interpkit.tasks import Task

    if callable(with_grad):
        return with_grad
    if not isinstance(with_grad, str):
        raise CacheError(f"with_grad must be a metric name or a function of the logits, got {with_grad!r}")
    if with_grad not in GRAD_METRICS:
        hint = " (it has no useful gradient)" if with_grad in METRICS else ""
        raise CacheError(
            f"with_grad={with_grad!r} is not a differentiable metric{hint}; choose one of {', '.join(GRAD_METRICS)} "
            "or pass a function logits -> value"
        )
    fn = METRICS[with_grad]
    source = answers if answers is not None else tokens
    if isinstance(source, Task):
        answer, wrong, pos = source.answer, source.wrong, source.answer_pos
        if len(source) != ids.shape[0]:
            raise CacheError(f"the task has {len(source)} examples but the run has {ids.shape[0]} rows")
    else:
        if answers is None:
            raise CacheError(
                f"with_grad={with_grad!r} needs the answers: pass a Task as tokens or answers=Task, "
                "or answers=(answer_ids, wrong_ids)"
            )
        try:
            answer, wrong = answers
        except (TypeError, ValueError):
            raise CacheError("answers must be a Task or a pair (answer_ids, wrong_ids)") from None
        batch = ids.shape[0]
        answer, wrong = (torch.as_tensor(a).long().reshape(-1) for a in (answer, wrong))
        if answer.numel() not in (1, batch) or wrong.numel() not in (1, batch):
            raise CacheError(f"answers must be single ids or one id per example ({batch}), got {answer.numel()}")
        answer, wrong = answer.expand(batch), wrong.expand(batch)
        last = ids.shape[1] - 1
        pos = mask.sum(1) - 1 if mask is not None else torch.full((batch,), last, dtype=torch.long)
    device = ids.device
    answer, wrong, pos = answer.to(device), wrong.to(device), pos.to(device)
    return lambda logits: fn(final_logits(logits, pos), answer, wrong, None)


def _hook_fns(
    requests: list[Request], keep: Callable[[str, torch.Tensor], None], grad: bool, stop: bool
) -> list[tuple[str, Any]]:
    hooks_needed = list(dict.fromkeys(r.hook for r in requests))
    fired: set[str] = set()

    def make(name: str) -> Any:
        def fn(act: torch.Tensor, hook: Any) -> Any:
            keep(name, act)
            fired.add(name)
            if stop and len(fired) == len(hooks_needed):
                raise _AllFired
            return act if grad else None  # handing the tensor back keeps it on the autograd path

        return fn

    return [(h, make(h)) for h in hooks_needed]


def run(
    model: Model,
    tokens: torch.Tensor | Task | str | Iterable[Any],
    sites: str | Iterable[Any] | None = None,
    *,
    positions: Any = None,
    dtype: Any = None,
    device: Any = None,
    with_grad: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
    answers: Task | tuple[Any, Any] | None = None,
    attention_mask: torch.Tensor | None = None,
) -> ActivationCache:
    """Run ``model`` on ``tokens`` and keep the activations at ``sites`` (and their gradients).

    ``tokens``: ids ``(batch, pos)``, a text or list of texts (right-padded, masked), or a Task
    (its clean prompts; ``positions="answer"`` then means each example's answer position).
    ``sites``: labels (``"L3.resid_pre"``, ``"L3H5"``, ``"L3.mlp"``), hook names or wildcards;
    None caches what every analysis helper needs (embeddings, residual stream, ``hook_z``,
    attention and MLP outputs, the final norm's scale). ``positions``: int, slice, list, ``(k,)``
    or per-example ``(batch, k)`` index; the position axis is kept. ``dtype`` / ``device``: cast
    and move what is kept. ``with_grad``: a metric name (``"logit_diff"``, ``"logprob"``,
    ``"prob"``; its answers come from a Task, or ``answers=(answer_ids, wrong_ids)`` read at the
    last real position) or a function ``logits -> value``; per-example values are summed, so each
    example's gradient is its own. Gradients are in ``cache.grad(site)``, metric values in
    ``cache.metric``.

    >>> task = ik.tasks.load("induction", model, n=4)                       # doctest: +SKIP
    >>> cache = ik.cache.run(model, task, ["L1H0"], with_grad="logit_diff")  # doctest: +SKIP
    >>> cache.grad("L1H0").shape                                             # doctest: +SKIP
    torch.Size([4, 21, 32])
    """
    import torch

    from interpkit.cache._activation_cache import ActivationCache
    from interpkit.hooks import hooks
    from interpkit.models._devices import resolve_device, resolve_dtype
    from interpkit.tasks import Task

    out_dtype = resolve_dtype(dtype) if dtype is not None else None
    out_device = resolve_device(device) if device is not None else None
    requests = resolve_requests(model, analysis_sites(model) if sites is None else sites)
    ids, mask = _tokens_and_mask(model, tokens, attention_mask)
    batch, seq_len = ids.shape
    if isinstance(positions, str):
        if positions != "answer" or not isinstance(tokens, Task):
            raise CacheError(f"positions={positions!r}: only 'answer' is a named position, and only for a Task")
        positions = tokens.answer_pos[:, None]
    pos = normalize_positions(positions, batch, seq_len, ids.device)
    by_hook: dict[str, list[Request]] = {}
    for r in requests:
        by_hook.setdefault(r.hook, []).append(r)

    def finish(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.to(device=out_device or t.device, dtype=out_dtype or t.dtype)

    acts: dict[str, torch.Tensor] = {}
    full: dict[str, torch.Tensor] = {}

    def keep(hook: str, act: torch.Tensor) -> None:
        if with_grad is not None:
            full[hook] = act
        for r in by_hook[hook]:
            acts[r.key] = finish(select(act, r, pos, batch, seq_len))

    grads: dict[str, torch.Tensor] = {}
    metric_values = None
    if with_grad is None:
        fns = _hook_fns(requests, keep, grad=False, stop=True)
        with torch.inference_mode(), hooks(model, fwd=fns), contextlib.suppress(_AllFired):
            model.bridge(ids, attention_mask=mask)
    else:
        metric = _metric_fn(model, with_grad, answers, tokens, ids, mask)
        fns = _hook_fns(requests, keep, grad=True, stop=False)
        # Make sure a graph exists even when the model's parameters are frozen.
        leaf = [("hook_embed", lambda act, hook: act if act.requires_grad else act.detach().requires_grad_())]
        with torch.inference_mode(False), torch.enable_grad(), hooks(model, fwd=leaf + fns):
            logits = model.bridge(ids, attention_mask=mask)
            values = metric(logits.to(ids.device))
            if not isinstance(values, torch.Tensor) or not values.requires_grad:
                raise CacheError("the with_grad metric must return a tensor computed from the logits")
            missing = [h for h in by_hook if h not in full]
            if missing:
                raise _never_fired(missing)
            hooks_order = list(full)
            found = torch.autograd.grad(values.sum(), [full[h] for h in hooks_order], allow_unused=True)
        metric_values = values.detach()
        for hook, g in zip(hooks_order, found, strict=True):
            g = torch.zeros_like(full[hook]) if g is None else g
            for r in by_hook[hook]:
                grads[r.key] = finish(select(g, r, pos, batch, seq_len))
        full.clear()
    missing = [h for h in by_hook if not any(r.key in acts for r in by_hook[h])]
    if missing:
        raise _never_fired(missing)
    return ActivationCache(
        model, acts, grads, requests, tokens=ids, attention_mask=mask, positions=pos, metric=metric_values
    )


def _never_fired(hooks: list[str]) -> CacheError:
    return CacheError(
        f"hook point(s) {', '.join(hooks)} did not fire during the forward pass of this model; some hooks "
        "(hook_result, hook_*_input, a rotary model's hook_pos_embed) need a bridge option or do not exist "
        "for this architecture"
    )
