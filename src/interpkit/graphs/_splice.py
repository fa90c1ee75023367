"""The real model with a graph's features made steerable (see :mod:`interpkit.graphs._intervene`).

Neurons are steered at ``blocks.{l}.mlp.hook_post``. Transcoders are spliced in: each layer's MLP
output (``mlp.hook_out``) becomes the transcoder's reconstruction of its current input, plus its
skip term, plus the prompt's error at that position, so the unsteered prompt is reproduced and a
latent downstream of an intervention re-encodes its changed input. A layer without a transcoder
keeps the prompt's MLP output (in the graph it is all error, held fixed). With
``frozen_attention`` every attention pattern is held at the prompt's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from interpkit.graphs._graph import Graph
    from interpkit.models import Model


class Splice:
    """Hooks that run ``model`` on rows of the prompt with per-row feature interventions."""

    def __init__(self, model: Model, ids: torch.Tensor, features: Any, frozen_attention: bool) -> None:
        import torch

        from interpkit.graphs._features import transcoder_map
        from interpkit.hooks import hooks

        self.model = model
        self.neurons = isinstance(features, str) and features == "neurons"
        self.tcs = {} if self.neurons else transcoder_map(model, features)
        self.frozen_attention = frozen_attention
        n_layers = model.cfg.n_layers
        names = [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)] if frozen_attention else []
        if self.neurons:
            names += [f"blocks.{i}.mlp.hook_post" for i in range(n_layers)]
        else:
            names += [f"blocks.{i}.mlp.hook_{w}" for i in range(n_layers) for w in ("in", "out")]
        store: dict[str, torch.Tensor] = {}

        def keep(act: torch.Tensor, hook: Any) -> None:
            store[hook.name] = act.detach().clone()

        with torch.inference_mode(), hooks(model, fwd=[(model.resolve_hook(n), keep) for n in names]):
            model.bridge(ids)
        self.clean = {n: store[model.resolve_hook(n)] for n in names}
        self.z: dict[int, torch.Tensor] = {}
        self.error: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for layer, tc in self.tcs.items():
                x = self.clean[f"blocks.{layer}.mlp.hook_in"]
                z = tc.encode(x.to(tc.W_enc.dtype))
                self.z[layer] = z
                self.error[layer] = self.clean[f"blocks.{layer}.mlp.hook_out"] - self._decode(tc, z, x)

    @staticmethod
    def _decode(tc: Any, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = z @ tc.W_dec + tc.b_dec
        skip = getattr(tc, "W_skip", None)
        return out + x.to(skip) @ skip.T if skip is not None else out

    def _targets(self, sets: list[list[int]], graph: Graph) -> dict[int, list[tuple[int, int, int]]]:
        """{layer: [(row, position, unit)]} of the interventions."""
        by_layer: dict[int, list[tuple[int, int, int]]] = {}
        for row, members in enumerate(sets):
            for i in members:
                n = graph.nodes[i]
                by_layer.setdefault(n.layer, []).append((row, n.position, n.feature))
        return by_layer

    def run(self, ids: torch.Tensor, sets: list[list[int]], graph: Graph, scale: float) -> torch.Tensor:
        """Logits ``(rows, d_vocab)`` at the last position, row r with ``sets[r]`` scaled by ``scale``."""
        import torch

        from interpkit.hooks import hooks

        rows = ids.shape[0]
        targets = self._targets(sets, graph)
        fwd = []
        if self.frozen_attention:
            for i in range(self.model.cfg.n_layers):
                pattern = self.clean[f"blocks.{i}.attn.hook_pattern"]
                fwd.append((f"blocks.{i}.attn.hook_pattern", lambda act, hook, p=pattern: p.expand_as(act).to(act)))
        if self.neurons:
            for layer, items in targets.items():
                fwd.append((f"blocks.{layer}.mlp.hook_post", self._neuron_hook(layer, items, scale)))
        else:
            for layer in range(self.model.cfg.n_layers):
                fwd += self._splice_hooks(layer, targets.get(layer, []), scale, rows)
        with torch.inference_mode(), hooks(self.model, fwd=fwd):
            logits = self.model.bridge(ids)
        return logits[:, -1].double()

    def _neuron_hook(self, layer: int, items: list[tuple[int, int, int]], scale: float) -> Any:
        clean = self.clean[f"blocks.{layer}.mlp.hook_post"][0]

        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            act = act.clone()
            for row, pos, unit in items:
                act[row, pos, unit] = scale * clean[pos, unit]
            return act

        return hook

    def _splice_hooks(self, layer: int, items: list[tuple[int, int, int]], scale: float, rows: int) -> list[Any]:
        tc = self.tcs.get(layer)
        clean_out = self.clean[f"blocks.{layer}.mlp.hook_out"]
        if tc is None:
            return [(f"blocks.{layer}.mlp.hook_out", lambda act, hook: clean_out.expand_as(act).to(act))]
        seen: dict[str, torch.Tensor] = {}
        clean_z, error = self.z[layer][0], self.error[layer]

        def grab(act: torch.Tensor, hook: Any) -> None:
            seen["x"] = act

        def replace(act: torch.Tensor, hook: Any) -> torch.Tensor:
            x = seen.pop("x")
            z = tc.encode(x.to(tc.W_enc.dtype)).clone()
            for row, pos, unit in items:
                z[row, pos, unit] = scale * clean_z[pos, unit]
            return (self._decode(tc, z, x) + error).to(act)

        return [(f"blocks.{layer}.mlp.hook_in", grab), (f"blocks.{layer}.mlp.hook_out", replace)]
