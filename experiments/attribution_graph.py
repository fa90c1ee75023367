"""Attribution graphs on the embedded model, verified by interventions, and the QK attribution of its
strongest induction head.

Usage:
    .venv/bin/python experiments/attribution_graph.py                        # neuron graphs (about 3 min, 1 thread)
    .venv/bin/python experiments/train_transcoders.py --tokens 100000 --group 5 --out runs/transcoders_100k
    .venv/bin/python experiments/attribution_graph.py --transcoders runs/transcoders_100k   # + transcoder graphs
    .venv/bin/python experiments/attribution_graph.py --max_feature_nodes 256 --out runs/graph_small

Ameisen et al. 2025 ("Circuit Tracing"): for a factual prompt ("The capital of France is") and an
induction prompt (a repeated phrase), this script builds

1. the attribution graph over MLP neurons (gates frozen: exact, no error nodes) and, with
   ``--transcoders DIR`` (a folder of per-layer transcoders the dictionaries package reads), over
   transcoder latents, next to a graph over untrained transcoders of the same shapes (the
   baseline their scores must beat);
2. each graph's replacement and completeness scores, unpruned and pruned, its build time and peak
   memory, and its verification: the top nodes by influence ablated one at a time in the real
   model, predicted vs actual change of the top logit (Spearman, sign agreement; attention frozen
   and not);
3. for neurons and trained transcoders, each graph as a circuit of the live model
   (``Graph.circuit``: its features kept, the other neurons or latents zero-ablated, attention
   running): the
   faithfulness of the unpruned and the pruned graph on the prompt's top-vs-second logit
   difference;
4. the viewer (one self-contained HTML page per graph) and circuit-tracer JSON of the pruned graph;
5. the QK attribution of the strongest induction head (found by induction score on repeated random
   tokens): its score at the induction offset as (query term x key term), and its head loadings.

Writes runs/attribution_graph/ (or --out): result.json, report.html, graph_*.json, viewer_*.html.

Measured 2026-12-03 (2 threads, 2-core CPU; 6.5 min in all; peak RSS 3.1 GB through the trained
transcoder graphs, 4.9 GB for the whole run) with the 30 skip-transcoders of
``train_transcoders.py --tokens 100000`` (4,608 latents, k = 32, training FVU median 0.38):

| graph | build | replacement / completeness | verification, Spearman (frozen / live attention) | live faithfulness, unpruned / pruned |
|---|---|---|---|---|
| factual, neurons | 16 s | 1.0 / 1.0 | 0.60 / 0.73 | -5.3 / -6.3 |
| induction, neurons | 57 s | 1.0 / 1.0 | 0.70 / 0.82 | -0.68 / -0.70 |
| factual, transcoders | 10 s | 0.31 / 0.72 | -0.31 / 0.10 | 0.64 / 0.20 |
| induction, transcoders | 17 s | 0.44 / 0.74 | 0.72 / 0.22 | 1.07 / 1.11 |
| factual, untrained | 28 s | 0.018 / 0.55 | 0.39 / 0.39 | |
| induction, untrained | 82 s | 0.034 / 0.54 | 0.44 / -0.37 | |

A neuron graph's circuit keeps only its 1,024 visited neurons and zero-ablates the other ~45,000
at every position but the first, which breaks the model (negative faithfulness): the graph is
exact under frozen gates, not a small circuit of the live model. Transcoders trained on a tenth
of the acceptance budget explain a third of the factual prompt (replacement 0.31) and their top
nodes do not predict interventions there; the strongest induction head is L18H6 (score 0.84).
"""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import time
from pathlib import Path
from typing import Any

import torch

import interpkit as ik
from interpkit.attribution.head_scores import head_patterns, induction_scores
from interpkit.plots.report import Html, write_report
from interpkit.results import json_text, make_provenance, write_text_atomic
from interpkit.scripting import command_line, config_dict, config_from_args


@dataclasses.dataclass
class Config:
    model: Any = "smollm2-135m"
    factual: str = "The capital of France is"
    induction: str = "The code word is blue falcon seven. Repeat: the code word is blue falcon"  # -> " seven"
    max_feature_nodes: int = 1024
    transcoders: str = ""  # a folder of per-layer transcoders (ik.dictionaries); empty: neurons only
    verify: int = 10
    induction_n: int = 16  # random-token prompts used to find the strongest induction head
    threads: int = 1
    seed: int = 0
    out: str = "runs/attribution_graph"


class UntrainedTranscoder:
    """A ReLU transcoder of a trained one's shape at initialisation: unit-norm random decoder rows,
    encoder its transpose, zero biases (the baseline a trained transcoder's scores must beat)."""

    def __init__(self, like: Any, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        n_latents, d_out = like.W_dec.shape
        w_dec = torch.randn(n_latents, d_out, generator=g)
        self.W_dec = (w_dec / w_dec.norm(dim=1, keepdim=True)).to(like.W_dec)
        self.W_enc = (
            self.W_dec.clone() if tuple(like.W_enc.shape) == (n_latents, d_out) else torch.randn_like(like.W_enc)
        )
        self.b_enc = torch.zeros(n_latents).to(like.W_dec)
        self.b_dec = torch.zeros(d_out).to(like.W_dec)
        self.W_skip = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc.T + self.b_enc)


def build(model: ik.Model, prompt: str, features: Any, name: str, cfg: Config, outdir: Path) -> dict:
    """One graph: built, scored, verified, written (JSON and viewer); returns its summary."""
    start = time.perf_counter()
    graph = ik.graphs.attribute(model, prompt, features, max_feature_nodes=cfg.max_feature_nodes, verify=cfg.verify)
    seconds = time.perf_counter() - start
    pruned = graph.prune()
    pruned.to_json(outdir / f"graph_{name}.json", slug=name)
    graph.viewer(outdir / f"viewer_{name}.html", title=f"{name}: {prompt!r}")
    check = graph.verification or {}
    logits = [(n.label, round(n.probability or 0.0, 4)) for n in graph.nodes if n.kind == "logit"]
    summary = {
        "prompt": prompt,
        "features": graph.meta["features"],
        "nodes": len(graph),
        "edges": graph.n_edges,
        "pruned_nodes": len(pruned),
        "pruned_edges": pruned.n_edges,
        "active_features": graph.meta["n_active_features"],
        "scores": {k: round(v, 4) for k, v in graph.scores.items()},
        "replacement_check": graph.meta["replacement_check"],
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "top_logits": logits[:5],
        "verification": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in check.items()},
    }
    trained = isinstance(features, dict) and all(isinstance(tc, ik.dictionaries.Dictionary) for tc in features.values())
    if features == "neurons" or trained:
        summary["circuit_faithfulness_zero"] = circuit_faithfulness(
            model, graph, pruned, None if features == "neurons" else features
        )
    print(
        f"{name}: {len(graph)} nodes, {graph.n_edges} edges, {seconds:.0f} s; scores {summary['scores']}; "
        f"Spearman {check.get('spearman_frozen', float('nan')):.2f} (frozen) "
        f"{check.get('spearman_unfrozen', float('nan')):.2f} (unfrozen)"
    )
    return {"summary": summary, "figure": pruned.figure(title=f"{name}: pruned attribution graph of {prompt!r}")}


def circuit_faithfulness(model: ik.Model, graph: Any, pruned: Any, transcoders: dict | None) -> dict[str, float]:
    """Faithfulness (zero ablation of the other latents or neurons, live attention) of the graph and
    its pruning, on the logit difference between the model's top two next tokens."""
    ids = torch.tensor([graph.tokens])
    with torch.no_grad():
        top2 = model(ids)[0, -1].topk(2).indices.tolist()
    task = ik.tasks.from_token_lists("prompt", model, [graph.tokens], [graph.tokens], [top2[0]], [top2[1]])
    out = {}
    with contextlib.ExitStack() as stack:
        splice = None
        if transcoders is not None:
            splice = stack.enter_context(ik.dictionaries.spliced(model, list(transcoders.values()), skip_first=True))
        for name, g in (("unpruned", graph), ("pruned", pruned)):
            rep = ik.faithfulness(model, task, g.circuit(model, splice), "zero", n_boot=10)
            out[name] = round(float(rep.scores[0]), 4)
    return out


def strongest_induction_head(model: ik.Model, cfg: Config) -> tuple[ik.Task, int, int, float]:
    task = ik.tasks.load("induction", model, n=cfg.induction_n, seed=cfg.seed)
    scores = induction_scores(head_patterns(model, task.clean), task.clean).cpu()  # (layer, head)
    flat = int(scores.flatten().argmax())
    layer, head = divmod(flat, model.cfg.n_heads)
    return task, layer, head, float(scores[layer, head])


def qk_section(model: ik.Model, cfg: Config) -> tuple[dict, list]:
    task, layer, head, score = strongest_induction_head(model, cfg)
    length = int(task.params["length"])
    query = task.answer_pos.cpu()
    key = query - length + 1  # the token after the earlier occurrence of the current token
    res = ik.attribution.qk(model, task, layer, head, query_pos=query, key_pos=key)
    loadings = ik.attribution.qk_loadings(model, task, [f"L{layer}H{head}"], key_pos=key)
    top = [(label, round(value, 3)) for label, value in res.top(8)]
    print(f"strongest induction head L{layer}H{head} (score {score:.2f}); QK top terms: {top[:3]}")
    summary = {
        "head": f"L{layer}H{head}",
        "induction_score": round(score, 4),
        "mean_score_at_induction_offset": round(res.meta["score"], 4),
        "residual_error": res.meta["residual_error"],
        "top_terms": top,
    }
    return summary, [res.figure(top=16), loadings.figure(top=24)]


def run(cfg: Config) -> dict:
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = cfg.model if isinstance(cfg.model, ik.Model) else ik.load_model(cfg.model)
    outdir = Path(cfg.out)
    outdir.mkdir(parents=True, exist_ok=True)
    prompts = {"factual": cfg.factual, "induction": cfg.induction}
    feature_sets: dict[str, Any] = {"neurons": "neurons"}
    if cfg.transcoders:
        trained = ik.graphs.transcoder_map(model, cfg.transcoders)  # a folder, a dict or a list
        feature_sets["transcoders"] = trained
        feature_sets["untrained"] = {lay: UntrainedTranscoder(tc, cfg.seed + lay) for lay, tc in trained.items()}
    graphs, figures = {}, []
    for kind, features in feature_sets.items():
        for which, prompt in prompts.items():
            name = f"{which}_{kind}"
            built = build(model, prompt, features, name, cfg, outdir)
            graphs[name] = built["summary"]
            figures.append((f"{name}: {prompt!r}", built["figure"]))
    qk_summary, qk_figures = qk_section(model, cfg)
    return {"model": model, "graphs": graphs, "figures": figures, "qk": qk_summary, "qk_figures": qk_figures}


def write_outputs(cfg: Config, out: dict, command: str) -> Path:
    model = out["model"]
    rows = [
        {
            "graph": name,
            "nodes (pruned)": f"{g['nodes']} ({g['pruned_nodes']})",
            "replacement": g["scores"]["replacement"],
            "completeness": g["scores"]["completeness"],
            "pruned replacement": g["scores"]["pruned_replacement"],
            "pruned completeness": g["scores"]["pruned_completeness"],
            "Spearman (frozen attn)": g["verification"].get("spearman_frozen"),
            "Spearman (unfrozen)": g["verification"].get("spearman_unfrozen"),
            "seconds": g["seconds"],
        }
        for name, g in out["graphs"].items()
    ]
    links = " · ".join(f'<a href="viewer_{name}.html">{name}</a>' for name in out["graphs"])
    sections = [
        ("Graphs", rows),
        ("Viewers", Html(f"<p>{links}</p>")),
        *out["figures"],
        (f"QK attribution of the strongest induction head {out['qk']['head']}", out["qk"]),
        ("QK terms at the induction offset", out["qk_figures"][0]),
        ("Head loadings", out["qk_figures"][1]),
    ]
    prov = make_provenance(model, None, cfg.seed, config=config_dict(cfg), command=command)
    outdir = Path(cfg.out)
    summary = {"graphs": out["graphs"], "qk": out["qk"], "spec": prov}
    write_text_atomic(outdir / "result.json", json_text(summary) + "\n")
    return write_report(outdir / "report.html", f"Attribution graphs in {model.name}", sections, prov, command)


def main(cfg: Config) -> dict:
    command = command_line("attribution_graph.main()")
    out = run(cfg)
    path = write_outputs(cfg, out, command)
    print(f"wrote {path}")
    return {"graphs": out["graphs"], "qk": out["qk"]}


if __name__ == "__main__":
    main(config_from_args(Config, description=__doc__))
