"""EAP-IG: EAP with the gradient integrated along the path between the two runs' input embeddings.

Hanna, Pezzelle and Belinkov 2024 ("Have Faith in Faithfulness", "inputs" variant): the same as
EAP (``eap.py``) with the gradient averaged over ``m`` points on the straight line between the
two runs' embeddings (right Riemann rule, ``α = k/m``), all ``m`` in one batched
forward/backward; it tracks exact patching much better where the metric saturates. The
"activations" variant (``eap_act.py``) interpolates each sender group's output instead.

    >>> import interpkit as ik
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=4)
    >>> ik.attribution.eap_ig(model, task, ig_steps=3, check=0).meta["ig_steps"]
    3
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from interpkit.attribution._edges import finish_edges, linear_scores, setup_edges
from interpkit.attribution._errors import AttributionError
from interpkit.attribution._gradients import receiver_gradients
from interpkit.attribution.honesty import DEFAULT_SAMPLE
from interpkit.errors import unknown

if TYPE_CHECKING:
    from interpkit.graph import Graph
    from interpkit.models import Model
    from interpkit.results import Result
    from interpkit.tasks import Task

VARIANTS = ("inputs", "activations")


def check_steps(ig_steps: object) -> int:
    if isinstance(ig_steps, bool) or not isinstance(ig_steps, int) or ig_steps < 1:
        raise AttributionError(f"ig_steps must be an int >= 1, got {ig_steps!r}")
    return ig_steps


def eap_ig(
    model: Model,
    task: Task,
    direction: str = "denoise",
    *,
    ig_steps: int = 5,
    variant: str = "inputs",
    metric: str | None = None,
    check: int | str = DEFAULT_SAMPLE,
    seed: int = 0,
    graph: Graph | None = None,
) -> Result:
    """EAP-IG scores of every edge; ``variant`` "inputs" (this file) or "activations" (``eap_act.py``)."""
    import torch

    if variant not in VARIANTS:
        raise unknown("EAP-IG variant", variant, VARIANTS, AttributionError)
    check_steps(ig_steps)
    if variant == "activations":
        from interpkit.attribution.eap_act import eap_ig_act

        return eap_ig_act(model, task, direction, ig_steps=ig_steps, metric=metric, check=check, seed=seed, graph=graph)
    run = setup_edges(model, task, direction, metric, graph, check=check, seed=seed)
    alphas = torch.arange(1, ig_steps + 1, device=model.device, dtype=torch.float32) / ig_steps
    e_t, e_s = run.target_acts["blocks.0.hook_resid_pre"], run.source_acts["blocks.0.hook_resid_pre"]
    path = e_t[None] + alphas[:, None, None, None].to(e_t.device, e_t.dtype) * (e_s - e_t)[None]
    grads = receiver_gradients(
        model, run.task, run.target, run.metric, run.base["clean_logprobs"], path, graph=run.graph
    )
    matrix, per_example = linear_scores(run, grads)
    meta = {"variant": "inputs", "ig_steps": ig_steps, "ig_rule": "right (alpha = k/m)"}
    return finish_edges(model, run, matrix, "eap-ig", per_example, seed=seed, meta=meta)
