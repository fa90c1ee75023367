"""The peers' side of ``bench_peers.py``: each job written the way a user of nnsight, captum or pyvene writes it.

Every recipe runs on a plain Hugging Face Llama (``plain_hf``: the same weights interpkit wraps,
eager attention so that the arithmetic is the bridge's and results can be compared to float
noise) and takes the task's padded token tensors, answer positions and answer/wrong tokens.
The patterns follow the libraries' own tutorials:

- nnsight (activation patching, attribution patching tutorials): one ``model.trace`` per patch,
  the clean activations saved in a first trace and written into the corrupt run; AtP as one
  trace with a clean and a corrupt invoke and ``with metric.backward():`` reading the gradients
  at ``o_proj``'s input in reverse order;
- captum: one ``LayerIntegratedGradients`` per layer (a list of layers would interpolate all
  of them on one path, a different quantity), clean tokens as inputs and corrupt tokens as
  the baseline, ``method="riemann_middle"`` (interpkit's midpoint rule);
- pyvene: an ``IntervenableModel`` with a one-dimensional ``LowRankRotatedSpaceIntervention``
  on ``block_output``, trained with Adam on the interchange loss and scored by interchange
  intervention accuracy.

Nothing here imports interpkit: the benchmark passes tensors in.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch

PEERS = ("nnsight", "captum", "pyvene")


def missing_peers() -> list[str]:
    """The peer packages that are not installed (``pip install -e '.[bench]'`` installs all three)."""
    return [name for name in PEERS if importlib.util.find_spec(name) is None]


def peer_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (*PEERS, "torch", "transformers", "transformer-lens"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def plain_hf(gguf: Path) -> torch.nn.Module:
    """The embedded model loaded by transformers' own GGUF reader (the peers' users' way), eager attention."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def logit_diff(answer_pos: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor):
    """``logits -> mean over prompts of logit[answer] - logit[wrong]`` at each prompt's answer position."""
    rows = torch.arange(len(answer))

    def metric(logits: torch.Tensor) -> torch.Tensor:
        final = logits[rows, answer_pos]
        return (final[rows, answer] - final[rows, wrong]).mean()

    return metric


# ----------------------------------------------------------------------------------------- nnsight
def nnsight_model(hf: torch.nn.Module, tokenizer):
    """nnsight's language-model wrapper around a loaded model (it batches several invokes into one forward)."""
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(hf, tokenizer=tokenizer)


def nnsight_resid_pre(nm, clean, corrupt, metric, layers: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
    """Metric after patching the clean ``resid_pre`` (a layer's input) at one layer and position: ``(layer, pos)``."""
    import nnsight

    out = torch.empty(len(layers), len(positions))
    with torch.no_grad():
        with nm.trace(clean):
            saved = nnsight.save([nm.model.layers[layer].input for layer in layers])
        for i, layer in enumerate(layers):
            for j, p in enumerate(positions):
                with nm.trace(corrupt):
                    nm.model.layers[layer].input[:, p, :] = saved[i][:, p, :]
                    value = metric(nm.lm_head.output).save()
                out[i, j] = float(value)
    return out


def nnsight_head_out(nm, clean, corrupt, metric, layers: Sequence[int], n_heads: int) -> torch.Tensor:
    """Metric after patching one head's clean output (its slice of ``o_proj``'s input), ``(layer, head)``."""
    import nnsight

    out = torch.empty(len(layers), n_heads)
    with torch.no_grad():
        with nm.trace(clean):
            saved = nnsight.save([nm.model.layers[layer].self_attn.o_proj.input for layer in layers])
        d_head = saved[0].shape[-1] // n_heads
        for i, layer in enumerate(layers):
            for h in range(n_heads):
                cols = slice(h * d_head, (h + 1) * d_head)
                with nm.trace(corrupt):
                    nm.model.layers[layer].self_attn.o_proj.input[:, :, cols] = saved[i][:, :, cols]
                    value = metric(nm.lm_head.output).save()
                out[i, h] = float(value)
    return out


def nnsight_atp(nm, clean, corrupt, metric, n_layers: int, n_heads: int) -> torch.Tensor:
    """Node AtP per head, ``(layer, head)``: ``(clean - corrupt) . d metric / d z`` at the corrupt run."""
    import nnsight

    with nm.trace() as tracer:
        with tracer.invoke(clean):
            clean_z = nnsight.save([nm.model.layers[layer].self_attn.o_proj.input for layer in range(n_layers)])
        with tracer.invoke(corrupt):
            corrupt_z = nnsight.save([nm.model.layers[layer].self_attn.o_proj.input for layer in range(n_layers)])
            value = metric(nm.lm_head.output)
            with value.backward():  # gradients arrive last layer first
                grads = nnsight.save([corrupt_z[layer].grad for layer in reversed(range(n_layers))])
    grads = grads[::-1]
    out = torch.empty(n_layers, n_heads)
    for layer in range(n_layers):
        prod = (clean_z[layer] - corrupt_z[layer]).detach() * grads[layer]  # (batch, pos, heads * d_head)
        out[layer] = prod.reshape(*prod.shape[:2], n_heads, -1).sum((0, 1, 3))
    return out


# ------------------------------------------------------------------------------------------ captum
def captum_ig_resid_pre(
    hf, clean, corrupt, answer_pos, answer, wrong, layers: Sequence[int], steps: int
) -> torch.Tensor:
    """Layer IG of the logit difference at each layer's input, clean vs the corrupt baseline: ``(layer, pos)``.

    The straight path from the corrupt run's activation to the clean run's, midpoint rule with
    ``steps`` points; per position the attribution summed over ``d_model``, averaged over prompts.
    """
    from captum.attr import LayerIntegratedGradients

    def forward(input_ids, answer_pos, answer, wrong):
        logits = hf(input_ids).logits
        rows = torch.arange(len(input_ids))
        final = logits[rows, answer_pos]
        return final[rows, answer] - final[rows, wrong]

    out = []
    for layer in layers:
        lig = LayerIntegratedGradients(forward, hf.model.layers[layer])
        attr = lig.attribute(
            clean,
            baselines=corrupt,
            additional_forward_args=(answer_pos, answer, wrong),
            n_steps=steps,
            method="riemann_middle",
            attribute_to_layer_input=True,
        )
        out.append(attr.detach().sum(-1).mean(0))
    return torch.stack(out)


# ------------------------------------------------------------------------------------------ pyvene
class PyveneDAS:
    """1-D DAS with pyvene: a rank-1 rotated-space interchange at ``block_output`` of ``layer``.

    ``ids (examples, width)``: right-padded token ids with their ``lengths``; ``edit_pos`` is where
    each example is intervened on (the source's vector at its ``edit_pos`` goes into the base at
    its own), ``read_pos`` where the base's logits are read.
    """

    def __init__(self, hf, layer: int, ids, lengths, edit_pos, read_pos, init: torch.Tensor | None = None):
        import pyvene as pv

        config = pv.IntervenableConfig(
            representations=[pv.RepresentationConfig(layer, "block_output", low_rank_dimension=1)],
            intervention_types=pv.LowRankRotatedSpaceIntervention,
        )
        self.model = pv.IntervenableModel(config, hf)
        self.model.disable_model_gradients()
        self.intervention = next(iter(self.model.interventions.values()))
        if init is not None:  # the same start as interpkit's: the orthogonal parametrisation keeps a unit column
            with torch.no_grad():
                self.intervention.rotate_layer.weight = init.reshape(-1, 1).float()
        self.ids, self.lengths, self.edit_pos, self.read_pos = ids, lengths, edit_pos, read_pos

    def direction(self) -> torch.Tensor:
        return self.intervention.rotate_layer.weight.detach()[:, 0].clone()

    def diff(self, pairs: torch.Tensor, target: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Logit difference target - other at each base's read position, under the interchange ``(pair,)``."""
        base, source = pairs[:, 0], pairs[:, 1]
        width = int(self.lengths[pairs].max())
        mask = (torch.arange(width)[None] < self.lengths[:, None]).long()
        _, out = self.model(
            {"input_ids": self.ids[base, :width], "attention_mask": mask[base]},
            [{"input_ids": self.ids[source, :width], "attention_mask": mask[source]}],
            {"sources->base": ([[[int(p)] for p in self.edit_pos[source]]], [[[int(p)] for p in self.edit_pos[base]]])},
        )
        rows = torch.arange(len(pairs))
        final = out.logits[rows, self.read_pos[base]]
        return final[rows, target] - final[rows, other]

    def train(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], lr: float) -> list[float]:
        """Adam on the rotation, loss softplus(-diff) (cross-entropy of target against other), one step per batch."""
        optim = torch.optim.Adam(self.model.get_trainable_parameters(), lr=lr)
        losses = []
        for pairs, target, other in batches:
            loss = torch.nn.functional.softplus(-self.diff(pairs, target, other)).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
        return losses

    def iia(self, pairs: torch.Tensor, target: torch.Tensor, other: torch.Tensor, batch_size: int) -> float:
        """Interchange intervention accuracy: the share of pairs whose target beats the other token."""
        hits = []
        with torch.no_grad():
            for lo in range(0, len(pairs), batch_size):
                sl = slice(lo, lo + batch_size)
                hits.append(self.diff(pairs[sl], target[sl], other[sl]) > 0)
        return float(torch.cat(hits).double().mean())
