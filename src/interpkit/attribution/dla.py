"""Direct logit attribution (DLA) and the logit lens on a task, as Results.

DLA (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; Wang et al. 2022,
section 3.1): the final residual stream at the answer position is a sum of component outputs,
so the logit difference ``logit(answer) - logit(wrong)`` splits into one term per component once
the final norm is linearised: centred (LayerNorm), divided by the *clean run's own* scale and
multiplied by its weight, as TransformerLens's ``apply_ln_to_stack`` does; the norm's bias and
``b_U`` are one constant ``bias`` term. The decomposition is computed by
``cache/_analysis.logit_attrs`` (correct on raw bridges) and regrouped here:

- ``by="component"``: embed (and learned positions), every head, attention biases, MLPs, bias;
- ``by="head"``: the heads as ``(layer, head)``, the layout of ``ik.patch(site="head_out")``;
- ``by="layer"``: accumulated, the logit difference read from ``resid_pre`` of each layer and
  the final residual, each through the same linearised norm (the last entry is the total);
- ``by="position"``: by source position: each head's output at the answer position is
  ``Σ_t A_st v_t W_O``, so its term splits over the key positions t; embed, MLPs and biases sit
  at the answer position itself. Positions are absolute (ragged tasks mix them).

``meta["residual_error"]`` is the largest gap, over examples, between the sum of all terms and
the model's actual logit difference (a few 1e-6 on float32 models; larger means the model writes
to the residual stream in a way the decomposition does not model).

The logit lens (nostalgebraist 2020): the residual stream after each layer read through the
final norm (its own scale, not linearised) and the unembedding, here as the logit difference.

    >>> res = ik.attribution.dla(model, task, by="head")      # doctest: +SKIP
    >>> lens = ik.attribution.logit_lens(model, task)         # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.attribution.atp import AttributionError
from interpkit.errors import unknown
from interpkit.results import Result, make_provenance

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.tasks import Task

BY = ("head", "component", "layer", "position")


def _clean_cache(model: Model, task: Task) -> Any:
    from interpkit.cache import run

    return run(model, task, None, positions="answer")


def _actual(model: Model, task: Task) -> torch.Tensor:
    import torch

    from interpkit.metrics import evaluate

    with torch.inference_mode():
        return evaluate(model(task.clean), task, "logit_diff").float().cpu()


def _direction(model: Model, task: Task) -> torch.Tensor:
    w_u, _ = model.anatomy.unembed  # on the unembedding's device: the last one of a split model
    answer, wrong = task.answer.to(w_u.device), task.wrong.to(w_u.device)
    return (w_u.T[answer] - w_u.T[wrong]).float().to(model.device)  # (batch, d_model)


def dla(model: Model, task: Task, by: str = "head", *, seed: int = 0) -> Result:
    """The clean run's logit difference attributed to components (see the module docstring)."""
    if by not in BY:
        raise unknown("DLA grouping", by, BY, AttributionError)
    task = task.to(model.device)
    cache = _clean_cache(model, task)
    attrs = cache.logit_attrs(task.answer, task.wrong)  # (component + bias, batch, 1)
    terms = attrs.scores[:, :, 0].float().cpu()
    labels = attrs.labels["component"]
    actual = _actual(model, task)
    gap = (terms.sum(0) - actual).abs()
    c = model.cfg
    extras: dict[str, Any] = {"actual_logit_diff": actual}
    if by == "component":
        per_example, dims, out_labels = terms, ("component",), {"component": labels}
    elif by == "head":
        idx = [labels.index(f"L{lay}H{h}") for lay in range(c.n_layers) for h in range(c.n_heads)]
        per_example = terms[idx].reshape(c.n_layers, c.n_heads, -1)
        dims = ("layer", "head")
        out_labels = {"layer": [f"L{lay}" for lay in range(c.n_layers)], "head": [f"H{h}" for h in range(c.n_heads)]}
    elif by == "layer":
        per_example, names = _accumulated(terms, labels, c.n_layers)
        dims, out_labels = ("layer",), {"layer": names}
    else:
        per_example = _by_position(model, task, cache, terms, labels)
        dims, out_labels = ("pos",), {"pos": [str(p) for p in range(task.n_pos)]}
        gap = (per_example.sum(0) - actual).abs()
    return Result(
        scores=per_example.mean(-1),
        dims=dims,
        labels=out_labels,
        metric="logit_diff",
        clean_value=float(actual.mean()),
        kind="dla",
        meta={
            "by": by,
            "norm": "final norm linearised with the clean run's scale",
            "residual_error": float(gap.max()),
            "residual_error_relative": float(gap.max() / actual.abs().mean().clamp_min(1e-12)),
            **_softcap_note(model),
        },
        extras={"per_example": per_example, **extras},
        provenance=make_provenance(model, task, seed),
    )


def _softcap_note(model: Model) -> dict[str, str]:
    """A note for models that soft-cap their logits (Gemma 2): the terms are linear, the cap is not."""
    cap = model.anatomy.logit_soft_cap
    if cap is None:
        return {}
    return {
        "note": f"the model soft-caps its logits at {cap:g} (tanh): the terms are those of the uncapped "
        "logit difference, and residual_error measures how far the cap moves the model's own"
    }


def _accumulated(terms: torch.Tensor, labels: list[str], n_layers: int) -> tuple[torch.Tensor, list[str]]:
    """Cumulative DLA at each ``resid_pre`` and the final residual: ``(n_layers + 1, batch)``."""
    import torch

    def layer_of(label: str) -> int:
        return -1 if label in ("embed", "pos_embed", "bias") else int(label[1:].split("H")[0].split(".")[0])

    owner = torch.tensor([layer_of(lab) for lab in labels])
    rows = [terms[owner < lay].sum(0) for lay in range(n_layers + 1)]
    names = [f"L{lay}.resid_pre" for lay in range(n_layers)] + [f"L{n_layers - 1}.resid_post"]
    return torch.stack(rows), names


def _by_position(model: Model, task: Task, cache: Any, terms: torch.Tensor, labels: list[str]) -> torch.Tensor:
    """Terms by source position ``(pos, batch)``: heads split over keys, the rest at the answer position."""
    import torch

    from interpkit.runtime import capture

    c = model.cfg
    names = [f"blocks.{lay}.attn.hook_{kind}" for lay in range(c.n_layers) for kind in ("v", "pattern")]
    acts, _ = capture(model, task.clean, names)
    w_o, b_o = model.anatomy.head_out
    n = len(task)
    rows = torch.arange(n, device=model.device)
    direction = _direction(model, task)
    out = torch.zeros(task.n_pos, n)
    for lay in range(c.n_layers):
        # each layer's activations, gathered on model.device (where w_o and the direction are)
        v = acts[model.resolve_hook(f"blocks.{lay}.attn.hook_v")].float().to(model.device)  # (b, pos, kv, d_head)
        v = v.repeat_interleave(c.n_heads // v.shape[2], dim=2)
        p = acts[model.resolve_hook(f"blocks.{lay}.attn.hook_pattern")]
        a = p[rows.to(p.device), :, task.answer_pos.to(p.device)].float().to(model.device)  # (b, h, k)
        per_key = torch.einsum("bhk,bkhe,hem->bkm", a, v, w_o[lay].float().to(v.device))  # (b, pos, d_model)
        post = model.anatomy.post_attn_norm(lay)
        if post is not None:  # the block's post-attention norm, at the scale of its whole output
            total = per_key.sum(1) + (0 if b_o is None else b_o[lay].float().to(per_key.device))
            per_key = post.linear(per_key, post.scale(total.float())[:, None])
        normed = cache.apply_ln_final(per_key)
        out += torch.einsum("bkm,bm->kb", normed.float(), direction).cpu()
    heads = [i for i, lab in enumerate(labels) if lab.startswith("L") and "H" in lab and "." not in lab]
    rest = terms[[i for i in range(len(labels)) if i not in set(heads)]].sum(0)  # (batch,)
    out[task.answer_pos.cpu(), torch.arange(n)] += rest
    return out


def logit_lens(model: Model, task: Task, *, seed: int = 0) -> Result:
    """The logit difference read at each layer's residual stream: ``(layer, example)``."""
    import torch

    task = task.to(model.device)
    cache = _clean_cache(model, task)
    stacked = cache.accumulated_resid()  # (layer + 1, batch, 1, d_model)
    resid = stacked.scores[:, :, 0].float()
    _, b_u = model.anatomy.unembed
    direction = _direction(model, task).to(resid.device)
    const = (b_u[task.answer.to(b_u.device)] - b_u[task.wrong.to(b_u.device)]).float().to(resid.device)
    with torch.no_grad():
        values = torch.einsum("lbm,bm->lb", model.anatomy.final_norm(resid), direction) + const
    values = values.cpu()
    return Result(
        scores=values,
        dims=("layer", "example"),
        labels={"layer": stacked.labels["component"], "example": [str(i) for i in range(len(task))]},
        metric="logit_diff",
        clean_value=float(_actual(model, task).mean()),
        kind="logit_lens",
        meta={"norm": "final norm with each layer's own scale (the standard logit lens)"},
        extras={"mean": values.mean(-1)},
        provenance=make_provenance(model, task, seed),
    )
