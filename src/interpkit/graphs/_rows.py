"""The columns of an attribution graph and the rows computed so far.

Columns are every source the prompt has: each active feature (in layer, position, unit order),
each error node (layer, position), each token embedding, and (with no sources of their own) the
logit nodes. A row is one target's direct effects from all of them: a feature's pre-activation or
a logit, computed by one backward pass of the frozen model (:func:`compute_rows`, batched).

Rows are kept on the CPU in the computation's dtype (float32 unless float64 was asked for). Feature columns can be millions wide (every MLP neuron at
every position), so each row keeps its ``keep`` largest feature entries (all of them when they fit
the memory budget: then the graph is exact) together with its exact absolute sum and signed
feature total; errors and embeddings are always kept whole. :meth:`RowStore.influence` ranks the
unvisited features by their influence on the logits through the rows so far (circuit-tracer's
partial influence), which decides which features get rows next.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from interpkit.graphs._features import LayerFeatures
    from interpkit.graphs._frozen import Frozen


@dataclasses.dataclass
class Columns:
    """Column bookkeeping: feature columns ``[0, F)``, errors, embeddings, logits."""

    layers: list[LayerFeatures]
    n_pos: int
    n_logits: int

    def __post_init__(self) -> None:
        import torch

        self.f_layer = torch.cat([torch.full((lf.n,), lf.layer) for lf in self.layers]).long()
        self.f_pos = torch.cat([lf.pos.cpu() for lf in self.layers]).long()
        self.f_idx = torch.cat([lf.idx.cpu() for lf in self.layers]).long()
        self.f_local = torch.cat([torch.arange(lf.n) for lf in self.layers]).long()
        self.error_layers = [lf.layer for lf in self.layers if lf.error is not None]

    @property
    def n_features(self) -> int:
        return int(self.f_layer.shape[0])

    @property
    def n_errors(self) -> int:
        return len(self.error_layers) * self.n_pos

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def embed_start(self) -> int:
        return self.n_features + self.n_errors

    @property
    def logit_start(self) -> int:
        return self.embed_start + self.n_pos

    @property
    def total(self) -> int:
        return self.logit_start + self.n_logits


def compute_rows(
    frozen: Frozen, cols: Columns, embed: torch.Tensor, logit_dirs: torch.Tensor, codes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct effects on the targets ``codes`` (``j >= 0``: feature column j; ``-k-1``: logit k):
    ``(rows, F)`` from the features and ``(rows, errors + embeddings)`` from the rest."""
    import torch

    ref = frozen.w_u
    rows, n = len(codes), cols.n_pos
    seeds: list[torch.Tensor | None] = [None] * frozen.n_layers
    final_seed = None
    is_logit = codes < 0
    if bool(is_logit.any()):
        final_seed = torch.zeros(rows, n, ref.shape[0], dtype=ref.dtype, device=ref.device)
        r = is_logit.nonzero()[:, 0]
        final_seed[r, n - 1] = logit_dirs[(-codes[r] - 1)].to(ref)
    feature_rows = (~is_logit).nonzero()[:, 0]
    layer_of = cols.f_layer[codes[feature_rows].clamp_min(0)]
    for layer in layer_of.unique().tolist():
        r = feature_rows[layer_of == layer]
        j = codes[r]
        lf = cols.layers[layer]
        seed = torch.zeros(rows, n, lf.w_enc.shape[1], dtype=ref.dtype, device=ref.device)
        seed[r.to(ref.device), cols.f_pos[j].to(ref.device)] = lf.w_enc[cols.f_idx[j].to(lf.w_enc.device)].to(ref)
        seeds[layer] = seed
    at_out, at_embed = frozen.backward(seeds, final_seed)
    parts = [_contract(lf, g) for lf, g in zip(cols.layers, at_out, strict=True) if lf.n]
    errors = [(g * lf.error.to(g)).sum(-1) for lf, g in zip(cols.layers, at_out, strict=True) if lf.error is not None]
    features = torch.cat(parts, 1) if parts else torch.zeros(rows, 0, dtype=ref.dtype, device=ref.device)
    rest = torch.cat([*errors, (at_embed * embed.to(at_embed)).sum(-1)], 1)
    return features, rest


def _contract(lf: LayerFeatures, g: torch.Tensor) -> torch.Tensor:
    """Each row's direct effect from each active unit of one layer, ``(rows, k)``: its activation
    times its decoder row dotted with the row's gradient at its position. Dense units (neurons:
    every unit active at every position) take one product with all decoder rows; sparse ones
    (transcoder latents) one small product per position with the units active there."""
    import torch

    units, where = lf.idx.unique(return_inverse=True)
    n_pos = g.shape[1]
    if 4 * lf.n >= n_pos * len(units):
        per_unit = g @ lf.w_dec[units].T.to(g)  # (rows, pos, units)
        return per_unit[:, lf.pos, where] * lf.act.to(g)
    out = torch.empty(g.shape[0], lf.n, dtype=g.dtype, device=g.device)
    for p in lf.pos.unique().tolist():
        at = (lf.pos == p).nonzero()[:, 0]
        out[:, at] = g[:, p] @ lf.w_dec[lf.idx[at]].T.to(g) * lf.act[at].to(g)
    return out


class RowStore:
    """Rows computed so far (see the module docstring), on the CPU, one record per batch."""

    def __init__(self, cols: Columns, keep: int, dtype: torch.dtype) -> None:
        self.cols = cols
        self.dtype = dtype
        self.keep = min(keep, cols.n_features)
        self.batches: list[dict[str, torch.Tensor | None]] = []

    @property
    def exact(self) -> bool:
        """Whether every feature entry of every row is kept."""
        return self.keep >= self.cols.n_features

    def add(self, codes: torch.Tensor, features: torch.Tensor, rest: torch.Tensor) -> None:
        import torch

        features, rest = features.to(self.dtype).cpu(), rest.to(self.dtype).cpu()
        record: dict[str, torch.Tensor | None] = {
            "codes": codes.cpu(),
            "abs_total": (features.abs().sum(1) + rest.abs().sum(1)).float(),
            "feature_total": features.sum(1, dtype=torch.float64),
            "rest": rest,
            "feature_cols": None,  # None: every feature column, in order
            "feature_vals": features,
        }
        if not self.exact:
            top = features.abs().topk(self.keep, dim=1, sorted=False).indices
            record["feature_cols"] = top.int()
            record["feature_vals"] = features.gather(1, top)
        self.batches.append(record)

    def rows(self) -> dict[str, torch.Tensor]:
        """Everything stored, concatenated over batches (``feature_cols`` ``(rows, keep)``)."""
        import torch

        out = {k: torch.cat([b[k] for b in self.batches]) for k in ("codes", "abs_total", "feature_total", "rest")}
        out["feature_vals"] = torch.cat([b["feature_vals"] for b in self.batches])
        out["feature_cols"] = torch.cat([self._cols(b) for b in self.batches]).long()
        return out

    def _cols(self, batch: dict[str, torch.Tensor | None]) -> torch.Tensor:
        import torch

        if batch["feature_cols"] is not None:
            return batch["feature_cols"]
        return torch.arange(self.cols.n_features, dtype=torch.int32).expand(len(batch["codes"]), -1)

    def node_of(self, codes: torch.Tensor) -> torch.Tensor:
        """The column of each row's own node (logit rows: their logit column)."""
        import torch

        return torch.where(codes < 0, self.cols.logit_start + (-codes - 1), codes)

    def influence(self, logit_probs: torch.Tensor) -> torch.Tensor:
        """Every column's influence on the logits through the rows computed so far."""
        import torch

        cols = self.cols
        step = torch.zeros(cols.total)
        step[cols.logit_start :] = logit_probs.float().cpu()
        total = torch.zeros(cols.total)
        for _ in range(cols.total + 1):
            new = torch.zeros(cols.total)
            for batch in self.batches:
                w = step[self.node_of(batch["codes"])] / batch["abs_total"].clamp_min(1e-10)  # (rows,)
                if not bool(w.any()):
                    continue
                spread = w[:, None] * batch["feature_vals"].abs().float()
                if batch["feature_cols"] is None:
                    new[: cols.n_features] += spread.sum(0)
                else:
                    new.index_add_(0, batch["feature_cols"].reshape(-1).long(), spread.reshape(-1))
                rest = (w[:, None] * batch["rest"].abs().float()).sum(0)
                new[cols.error_start : cols.error_start + rest.shape[0]] += rest
            if not bool(new.any()):
                break
            total += new
            step = new
        return total
