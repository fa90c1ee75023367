"""``evaluate``: how well dictionaries reconstruct, how sparse they are, and what splicing costs the model.

For each dictionary, over the evaluation tokens (position 0 left out where the dictionary was
trained without it, as when splicing):

=========================  ===============================================================
``l0``                     mean number of active latents per token
``fvu``                    fraction of variance unexplained, ``sum|y - y^|^2 / sum|y - mean(y)|^2``
``mse``                    mean squared error per token (summed over the width)
``dead`` / ``dense``       fraction of latents that never fire / fire on more than ``dense_at``
                           (default 10%) of the ``window`` tokens
``l2_ratio``               mean ``|y^| / |y|`` (below 1: shrinkage)
``rel_bias``               ``sum|y^|^2 / sum<y^, y>`` (Wright and Sharkey 2024; 1: unbiased)
``ce_clean``               next-token loss of the model (nats, predictions from positions >= 1)
``ce_spliced``             ... with the dictionary spliced in, no error term
``ce_zero`` / ``ce_mean``  ... with the site zero- / mean-ablated (mean over the batch's tokens)
``ce_recovered_zero/mean`` ``(ce_ablated - ce_spliced) / (ce_ablated - ce_clean)``
``delta_loss``             ``ce_spliced - ce_clean``
``kl``                     mean KL(clean || spliced) of the next-token distributions
=========================  ===============================================================

Tokens a splice leaves alone (position 0 of a dictionary trained without it, attention sinks
above its ``skip_norm_above``) are left out of the reconstruction metrics and keep their
activation in the spliced and ablated runs. With several dictionaries, ``extras["all"]`` has the loss with all of them spliced at once.
Model-free metrics (l0 to rel_bias) can come instead from an activation store (``store=``),
which is cheaper for a large ``window``; the model-based ones always run the model on ``data``
(texts, a ``.txt`` / ``.jsonl`` file, or token ids). Returns a Result ``(dictionary, metric)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.dictionaries._dictionary import Dictionary
from interpkit.dictionaries._errors import DictionaryError
from interpkit.dictionaries._splice import Entry, entries, spliced

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model
    from interpkit.results import Result

RECON = ("l0", "fvu", "mse", "dead", "dense", "l2_ratio", "rel_bias")
CE = ("ce_clean", "ce_spliced", "ce_zero", "ce_mean", "ce_recovered_zero", "ce_recovered_mean", "delta_loss", "kl")


def token_rows(model: Model, data: Any, n_tokens: int, max_length: int, text_field: str = "text") -> list[list[int]]:
    """Token-id rows from texts, a .txt / .jsonl file or an id tensor, up to ``n_tokens`` tokens."""
    import torch

    if isinstance(data, torch.Tensor):
        rows: Any = (r[:max_length] for r in data.tolist())
    else:
        if isinstance(data, str | os.PathLike) and Path(data).is_file():
            data = _read_texts(Path(data), text_field)
        elif isinstance(data, str):
            raise DictionaryError(f"evaluation data {data!r} is not a file; pass a list of texts for literal text")
        tok = model.tokenizer
        if tok is None:
            raise DictionaryError(f"{model.name} has no tokenizer: pass token ids (a (batch, pos) tensor)")
        bos = [tok.bos_token_id] if model.prepend_bos else []
        rows = ([*bos, *tok.encode(t, add_special_tokens=False)][:max_length] for t in data)
    out, total = [], 0
    for r in rows:
        if len(r) < 2:
            continue
        out.append(r)
        total += len(r)
        if total >= n_tokens:
            break
    if not out:
        raise DictionaryError("the evaluation data give no text of at least two tokens")
    return out


def _read_texts(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            yield json.loads(line)[field] if path.suffix == ".jsonl" else line.rstrip("\n")


class _Recon:
    """Running sums for the reconstruction metrics of one dictionary."""

    def __init__(self, d: Dictionary) -> None:
        import torch

        self.d = d
        self.n = 0
        self.sum_y = torch.zeros(d.d_out, dtype=torch.float64)
        self.sums = torch.zeros(6, dtype=torch.float64)  # |y|^2, |y-y^|^2, l0, <y^,y>, |y^|^2, |y^|/|y|
        self.fired = torch.zeros(d.n_latents, dtype=torch.long)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        import torch

        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]).double()
        with torch.no_grad():
            z = self.d.encode(x)
            yh = (self.d.decode(z) + (0 if self.d.W_skip is None else self.d.skip(x))).double()
        active = z != 0
        self.fired += active.sum(0)
        self.n += y.shape[0]
        self.sum_y += y.sum(0)
        ny = y.norm(dim=-1)
        self.sums += torch.stack(
            [
                ny.pow(2).sum(),
                (y - yh).pow(2).sum(),
                active.sum().double(),
                (yh * y).sum(),
                yh.pow(2).sum(),
                (yh.norm(dim=-1) / ny.clamp_min(1e-12)).sum(),
            ]
        )

    def metrics(self, dense_at: float) -> dict[str, float]:
        n = max(self.n, 1)
        sy2, sse, l0, cross, yh2, ratio = self.sums.tolist()
        variance = sy2 - float(self.sum_y.pow(2).sum()) / n
        freq = self.fired.double() / n
        return {
            "l0": l0 / n,
            "fvu": sse / variance if variance > 0 else float("nan"),
            "mse": sse / n,
            "dead": float((self.fired == 0).double().mean()),
            "dense": float((freq > dense_at).double().mean()),
            "l2_ratio": ratio / n,
            "rel_bias": yh2 / cross if cross else float("nan"),
        }


def _capture(model: Model, plan: list[Entry], tokens: torch.Tensor, mask: torch.Tensor) -> tuple[Any, dict[str, Any]]:
    """Clean logits and every read / write activation of the plan."""
    import torch

    from interpkit.hooks import hooks

    seen: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> None:
        seen[hook.name] = act.detach()

    names = sorted({h for e in plan for h in (e.read_hook, e.write_hook)})
    with torch.inference_mode(), hooks(model, fwd=[(n, keep) for n in names]):
        logits = model(tokens, attention_mask=mask)
    return logits, seen


def _losses(logits: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-prediction next-token loss at the kept positions ``(n,)``."""
    import torch.nn.functional as F

    logp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return nll[keep]


def _ablated(model: Model, e: Entry, tokens: torch.Tensor, mask: torch.Tensor, value: torch.Tensor) -> Any:
    import torch

    from interpkit.hooks import hooks

    def fill(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.where(e.skipped(act)[..., None], act, value.to(act).expand_as(act))

    with torch.inference_mode(), hooks(model, fwd=[(e.write_hook, fill)]):
        return model(tokens, attention_mask=mask)


def evaluate(
    model: Model | None,
    dictionaries: Dictionary | Mapping[str, Dictionary],
    data: Any = None,
    *,
    store: Any = None,
    n_tokens: int = 16384,
    window: int | None = None,
    batch_size: int = 8,
    max_length: int = 256,
    dense_at: float = 0.1,
    text_field: str = "text",
    skip_first: bool | None = None,
) -> Result:
    """Evaluate dictionaries (see the module doc); returns a Result ``(dictionary, metric)``.

    >>> res = ik.dictionaries.evaluate(model, {"L12.resid_post": sae}, "heldout.jsonl")      # doctest: +SKIP
    >>> res.scores[0, res.labels["metric"].index("fvu")]                                      # doctest: +SKIP
    """
    import torch

    from interpkit.results import Result, make_provenance

    single = isinstance(dictionaries, Dictionary)
    if single:
        d = dictionaries
        if not d.output_site:
            raise DictionaryError(f"{d!r} has no site: pass {{site: dictionary}}")
        dictionaries = {d.output_site: d}
    if model is None and data is not None:
        raise DictionaryError("evaluating on texts needs the model")
    if model is None and store is None:
        raise DictionaryError("pass a model and data, or store= (an activation store) for the model-free metrics")
    plan = entries(model, dictionaries, skip_first) if model is not None else _store_plan(dictionaries, skip_first)
    recon = {e.site: _Recon(e.dictionary) for e in plan}
    ce: dict[str, Any] = {}
    if data is not None:
        ce = _model_metrics(
            model, plan, data, recon if store is None else None, n_tokens, batch_size, max_length, text_field
        )
    if store is not None:
        _store_metrics(store, plan, recon, window or n_tokens)
    rows, labels = [], []
    for e in plan:
        values = {**recon[e.site].metrics(dense_at), **ce.get(e.site, {})}
        rows.append([values.get(m, float("nan")) for m in (*RECON, *CE)])
        labels.append(e.site)
    extras = {
        "window_tokens": {e.site: recon[e.site].n for e in plan},
        "firing_counts": {e.site: recon[e.site].fired.tolist() for e in plan},
        "all": ce.get("__all__"),
        "ce_tokens": ce.get("__n__"),
    }
    meta = {"dense_at": dense_at, "dictionaries": {e.site: repr(e.dictionary) for e in plan}}
    return Result(
        torch.tensor(rows, dtype=torch.float64),
        ("dictionary", "metric"),
        {"dictionary": labels, "metric": [*RECON, *CE]},
        metric="fvu",
        kind="dictionary_eval",
        meta=meta,
        extras=extras,
        provenance=make_provenance(model),
    )


def _store_plan(dictionaries: Mapping[str, Dictionary], skip_first: bool | None) -> list[Entry]:
    out = []
    for site, d in dictionaries.items():
        first = d.meta.get("training", {}).get("exclude_first", False) if skip_first is None else skip_first
        write = site if d.kind == "sae" else (d.output_site or site)
        out.append(Entry(site, d, d.input_site or site, write, first, d.meta.get("skip_norm_above")))
    return out


def _store_metrics(store: Any, plan: list[Entry], recon: dict[str, _Recon], window: int) -> None:
    """Reconstruction metrics over the first ``window`` tokens of an activation store."""
    from interpkit.cache import ActivationStore
    from interpkit.dictionaries._stream import StoreReader

    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    for e in plan:
        reader = StoreReader(
            store, e.dictionary.input_site or e.site, None if e.dictionary.kind == "sae" else e.dictionary.output_site
        )
        if reader.d_in != e.dictionary.d_in or reader.d_out != e.dictionary.d_out:
            raise DictionaryError(
                f"the dictionary for {e.site} reads width {e.dictionary.d_in} and writes {e.dictionary.d_out}; "
                f"the store's sites have widths {reader.d_in} and {reader.d_out}"
            )
        stop = min(window, len(store))
        for start in range(0, stop, 8192):
            x, y, pos = reader.read(start, min(start + 8192, stop))
            y = x if y is None else y
            keep = pos > 0 if e.skip_first else pos >= 0
            if e.max_norm is not None:
                keep &= y.float().norm(dim=-1) <= e.max_norm
            recon[e.site].add(x[keep].float(), y[keep].float())


def _batches(rows: list[list[int]], batch_size: int, device: Any) -> Iterator[tuple[Any, Any]]:
    """Right-padded ``(tokens, attention_mask)`` batches of ``batch_size`` rows."""
    import torch

    for lo in range(0, len(rows), batch_size):
        batch = rows[lo : lo + batch_size]
        width = max(len(r) for r in batch)
        tokens = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, r in enumerate(batch):
            tokens[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        yield tokens.to(device), mask.to(device)


def _batch_losses(
    model: Model, plan: list[Entry], tokens: Any, mask: Any, recon: dict[str, _Recon] | None
) -> dict[str, Any]:
    """Summed losses of one batch: clean, and per dictionary spliced / zero / mean / KL; all spliced."""
    import torch

    keep = mask[:, 1:].bool() & mask[:, :-1].bool()
    keep[:, 0] = False  # predictions from position 0 are left out: position 0 is never spliced
    logits, seen = _capture(model, plan, tokens, mask)
    clean = _losses(logits, tokens, keep)
    logp_clean = torch.log_softmax(logits[:, :-1].double(), -1)[keep]
    out: dict[str, Any] = {"__clean__": float(clean.sum()), "__n__": clean.numel()}
    for e in plan:
        act = seen[e.write_hook]
        real = mask.bool() & ~e.skipped(act)
        if recon is not None:
            recon[e.site].add(seen[e.read_hook][real].float(), act[real].float())
        with torch.inference_mode(), spliced(model, {e.site: e.dictionary}, error=False, skip_first=e.skip_first):
            sp = model(tokens, attention_mask=mask)
        logp_sp = torch.log_softmax(sp[:, :-1].double(), -1)[keep]
        zero = _ablated(model, e, tokens, mask, torch.zeros(act.shape[-1]))
        mean = _ablated(model, e, tokens, mask, act[real].mean(0))
        out[e.site] = [
            float(_losses(sp, tokens, keep).sum()),
            float(_losses(zero, tokens, keep).sum()),
            float(_losses(mean, tokens, keep).sum()),
            float((logp_clean.exp() * (logp_clean - logp_sp)).sum()),
        ]
    if len(plan) > 1:
        with torch.inference_mode(), spliced(model, {e.site: e.dictionary for e in plan}, error=False):
            out["__all__"] = float(_losses(model(tokens, attention_mask=mask), tokens, keep).sum())
    return out


def _model_metrics(
    model: Model,
    plan: list[Entry],
    data: Any,
    recon: dict[str, _Recon] | None,
    n_tokens: int,
    batch_size: int,
    max_length: int,
    text_field: str,
) -> dict[str, Any]:
    rows = token_rows(model, data, n_tokens, max_length, text_field)
    totals: dict[str, Any] = {}
    for tokens, mask in _batches(rows, batch_size, model.device):
        for key, value in _batch_losses(model, plan, tokens, mask, recon).items():
            if isinstance(value, list):
                totals[key] = [a + b for a, b in zip(totals.get(key, [0.0] * len(value)), value, strict=True)]
            else:
                totals[key] = totals.get(key, 0) + value
    n = totals["__n__"]
    c = totals["__clean__"] / n
    out: dict[str, Any] = {"__n__": n}
    for e in plan:
        s, z, m, kl = (v / n for v in totals[e.site])
        out[e.site] = {
            "ce_clean": c,
            "ce_spliced": s,
            "ce_zero": z,
            "ce_mean": m,
            "ce_recovered_zero": (z - s) / (z - c) if z != c else float("nan"),
            "ce_recovered_mean": (m - s) / (m - c) if m != c else float("nan"),
            "delta_loss": s - c,
            "kl": kl,
        }
    if "__all__" in totals:
        out["__all__"] = {"ce_clean": c, "ce_spliced": totals["__all__"] / n, "delta_loss": totals["__all__"] / n - c}
    return out


def report(result: Result, path: str | os.PathLike, command: str | None = None) -> Path:
    """A self-contained HTML report of an evaluation: the metric table and each firing-frequency histogram."""
    import math

    import plotly.graph_objects as go

    from interpkit.plots.report import write_report

    metrics = result.labels["metric"]
    sections: list[Any] = []
    for i, site in enumerate(result.labels["dictionary"]):
        table = {m: round(float(result.scores[i, j]), 5) for j, m in enumerate(metrics)}
        table["tokens (model-free metrics)"] = result.extras["window_tokens"][site]
        sections.append((f"{site}: {result.meta['dictionaries'][site]}", table))
        counts = result.extras["firing_counts"][site]
        n = max(result.extras["window_tokens"][site], 1)
        logs = [math.log10(c / n) for c in counts if c > 0]
        fig = go.Figure(go.Histogram(x=logs, nbinsx=50))
        fig.update_layout(
            title=f"{site}: firing frequency ({sum(c == 0 for c in counts)} latents never fire)",
            xaxis_title="log10(fraction of tokens on which the latent fires)",
            yaxis_title="latents",
            height=320,
        )
        sections.append((f"{site}: firing frequency", fig))
    if result.extras.get("all"):
        sections.append(("All dictionaries spliced at once", result.extras["all"]))
    return write_report(path, "Dictionary evaluation", sections, result.provenance, command)
