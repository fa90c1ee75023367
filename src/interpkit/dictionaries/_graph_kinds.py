"""Spliced dictionaries as nodes of the edge graph: each latent of a dictionary that writes an MLP
output is a sender of its own, and so is the rest of what the splice writes there.

Inside ``with ik.dictionaries.spliced(model, {"L1.mlp": transcoder}) as splice:``, the graph of
``build_graph(model, senders=splice.senders())`` has, at every spliced layer, one sender per latent
(``L1.mlp#17``: its write ``z_17 W_dec[17]``) and one for the rest (``L1.mlp#rest``: ``b_dec``, the
skip term and the error term; the whole activation at tokens the splice leaves alone), which add
up to the MLP output exactly; the other layers keep their whole-MLP senders. EAP, EAP-IG, exact
edges, circuit discovery and faithfulness run on it unchanged (the kinds below are all they
see). Latents are fed by their MLP's input, as the MLP was. Each latent adds a
``(rows, pos, d_model)`` slice to the engines' sender outputs: splice a few layers, or narrow
dictionaries, when memory is short.

Only dictionaries that write an MLP output make sender nodes: an SAE on the residual stream
reconstructs the sum of every earlier write, not one component's, so its latents are mediators
rather than senders (patch or attribute them as sites instead).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.graph import GraphError, MLPs, Node, SenderKind, register_kind

if TYPE_CHECKING:
    import torch

    from interpkit.dictionaries._splice import Entry
    from interpkit.models import Model


def _decoder(entry: Entry, device: Any) -> torch.Tensor:
    """``W_dec`` as the splice writes with it (rows rescaled to unit norm where the dictionary does)."""
    d = entry.dictionary
    w = d.W_dec / d.W_dec.norm(dim=-1, keepdim=True) if d.rescale_by_decoder_norm else d.W_dec
    return w.to(device)


class _SplicedLayers(SenderKind):
    """Senders at the spliced MLP layers of ``entries`` ({layer: Entry})."""

    stage = 1

    def __init__(self, entries: dict[int, Entry], name: str, chosen: dict[int, list[int]] | None = None) -> None:
        self.entries = entries
        self.name = name  # type: ignore[misc]
        self.chosen = chosen

    def exists(self, cfg: Any) -> bool:
        return not cfg.attn_only

    def layers(self, cfg: Any) -> list[int]:
        return sorted(self.entries)

    def hook(self, layer: int) -> str:
        return self.entries[layer].latents_hook

    def one(self, layer: int, what: str) -> list[Node]:
        return [Node(f"L{layer}.mlp#{what}", self.name, layer, None, 1, f"L{layer}.mlp")]


class LatentSenders(_SplicedLayers):
    """Each latent's write ``z_i W_dec[i]``; with ``chosen``, only those latents of each layer."""

    component_kind = "mlp"

    def __init__(self, entries: dict[int, Entry], name: str = "latents", chosen: dict[int, list[int]] | None = None):
        super().__init__(entries, name, chosen)

    def units(self, layer: int) -> list[int]:
        if self.chosen is None:
            return list(range(self.entries[layer].dictionary.n_latents))
        return list(self.chosen.get(layer, []))

    def nodes(self, cfg: Any, layer: int) -> list[Node]:
        return [Node(f"L{layer}.mlp#{i}", self.name, layer, i, 1, f"L{layer}.mlp") for i in self.units(layer)]

    def outputs(self, model: Any, layer: int, act: torch.Tensor) -> torch.Tensor:
        w = _decoder(self.entries[layer], act.device)
        idx = self.units(layer)
        if self.chosen is not None:
            act, w = act[..., idx], w[idx]
        return act.to(w.dtype)[..., None] * w  # (rows, pos, n_latents, d_model)

    def spec(self) -> dict[str, Any]:
        sites = {str(lay): e.site for lay, e in sorted(self.entries.items())}
        chosen = None if self.chosen is None else {str(k): list(v) for k, v in sorted(self.chosen.items())}
        return {"name": self.name, "sites": sites, "chosen": chosen}


class OtherLatents(_SplicedLayers):
    """The latents left out of ``chosen``, one node per layer (``L1.mlp#other``): their summed write."""

    component_kind = "mlp.other"

    def __init__(self, entries: dict[int, Entry], chosen: dict[int, list[int]], name: str = "latent_other"):
        super().__init__(entries, name, chosen)

    def nodes(self, cfg: Any, layer: int) -> list[Node]:
        return self.one(layer, "other")

    def outputs(self, model: Any, layer: int, act: torch.Tensor) -> torch.Tensor:
        w = _decoder(self.entries[layer], act.device)
        keep = act.new_ones(w.shape[0], dtype=w.dtype)
        keep[(self.chosen or {}).get(layer, [])] = 0
        return ((act.to(w.dtype) * keep) @ w)[:, :, None]  # (rows, pos, 1, d_model)


class RestSenders(_SplicedLayers):
    """What a splice writes besides its latents: ``b_dec``, the skip term and the error term."""

    component_kind = "mlp.rest"

    def __init__(self, entries: dict[int, Entry], name: str = "latent_rest") -> None:
        super().__init__(entries, name)

    def nodes(self, cfg: Any, layer: int) -> list[Node]:
        return self.one(layer, "rest")

    def hook(self, layer: int) -> str:
        return self.entries[layer].rest_hook

    def outputs(self, model: Any, layer: int, act: torch.Tensor) -> torch.Tensor:
        return act[:, :, None]


def mlp_entries(model: Model, entries: Sequence[Entry]) -> dict[int, Entry]:
    """{layer: entry} of the dictionaries that write an MLP's output; GraphError for any other."""
    out = {}
    for e in entries:
        found = re.match(r"blocks\.(\d+)\.", e.write_hook)
        layer = None if found is None else int(found.group(1))
        if layer is None or e.write_hook != model.resolve_hook(f"blocks.{layer}.hook_mlp_out"):
            raise GraphError(
                f"the dictionary at {e.site!r} writes {e.write_hook}, not an MLP output: only transcoders and "
                "SAEs on MLP outputs make sender nodes (a residual-stream SAE's latents are mediators; "
                "patch or attribute them as the site '<site>.latents')"
            )
        out[layer] = e
    return out


def splice_senders(
    model: Model, entries: Sequence[Entry], latents: Mapping[int | str, Sequence[int]] | None = None
) -> list[Any]:
    """The sender kinds of the graph with ``entries``' latents in place of their MLPs (see the module doc).

    ``latents`` ({layer or site: latent indices}): only those latents are nodes of their own; the
    others of a spliced layer make one node ``L1.mlp#other``.
    """
    by_layer = mlp_entries(model, entries)
    chosen = None if latents is None else _chosen(by_layer, latents)
    others = [lay for lay in range(model.cfg.n_layers) if lay not in by_layer]
    # registered (replacing any earlier splice's), so a circuit over them can be rebuilt by name
    kinds = [MLPs(layers=others, name="mlp_unspliced"), LatentSenders(by_layer, chosen=chosen), RestSenders(by_layer)]
    if chosen is not None:
        kinds.append(OtherLatents(by_layer, chosen))
    return ["embed", "head", *(register_kind(k, replace=True) for k in kinds)]


def _chosen(by_layer: dict[int, Entry], latents: Mapping[int | str, Sequence[int]]) -> dict[int, list[int]]:
    """{layer: sorted latent indices} from keys that are layers or spliced sites; GraphError if out of range."""
    by_site = {e.site: layer for layer, e in by_layer.items()}
    chosen = {}
    for key, idx in latents.items():
        layer = by_site.get(key) if isinstance(key, str) else int(key)
        if layer not in by_layer:
            raise GraphError(
                f"no MLP dictionary is spliced at {key!r} (spliced: sites {sorted(by_site)}, layers {sorted(by_layer)})"
            )
        chosen[layer] = sorted({int(i) for i in idx})
        n = by_layer[layer].dictionary.n_latents
        if chosen[layer] and not 0 <= chosen[layer][0] <= chosen[layer][-1] < n:
            raise GraphError(f"latents {chosen[layer]} at {key!r} are out of range 0..{n - 1}")
    return chosen
