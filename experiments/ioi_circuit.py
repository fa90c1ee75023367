"""The IOI circuit in the embedded model: which edge method and which ablation find a faithful circuit.

Usage:
    .venv/bin/python experiments/ioi_circuit.py --n 8 --threads 1          # the study below (measured: 29 min)
    .venv/bin/python experiments/ioi_circuit.py --edge_methods eap,hybrid --ablations counterfactual
    .venv/bin/python experiments/ioi_circuit.py --model path/to/hf_dir --device cuda --dtype bfloat16

Wang et al. 2022 ("Interpretability in the Wild") found the circuit GPT-2 small uses for indirect
object identification ("When Mary and John went to the store, John gave a drink to" -> " Mary").
Issue 14 (section 7) found that on the embedded model the default discovery (EAP-IG, 5 steps)
gave circuits of faithfulness 0.1 under mean ablation and agreed least with exact edge patching.
This script asks which method, steps and ablation are at fault, with every edge method interpkit
has (``--edge_methods``; ``name:steps`` sets an EAP-IG method's steps):

1. Node attribution over every head's output (``--node_methods``, off by default): AtP, AtP*,
   IG, exact patching, each gradient method's rank correlation with exact patching.
2. Edge scores over the whole graph (embed, every head's q/k/v input, MLPs, logits) by EAP,
   EAP-IG on inputs (5 and 20 steps) and on activations (5 steps by default: 20 steps, with
   ``--edge_methods eap-ig-act:20``, cost 18 min more) and the hybrid (a gradient ranking whose
   top candidates are re-scored by exact patching), all on the "noise" direction (clean run,
   corrupt source: what removing an edge from the circuit does).
3. Agreement with exact edge patching on one shared sample of edges (the top edges of every
   method and a seeded random draw from the rest), all examples: Spearman and Pearson, on the
   whole sample and on the random part alone.
4. Circuits: for each method and each ablation (mean, counterfactual),
   ``ik.discover_circuit(..., target=0.8, scores=...)`` (the scores computed once and reused):
   the faithfulness curve it searched, and the smallest circuit reaching the target (its edges
   and heads), or "not reached" with the best value found.
5. The default the evidence supports, with its reason; the overlap of the methods' top edges;
   optionally (``--n_boot``) the stability of one method's circuit over bootstrap resamples.

Writes runs/ioi_circuit/ (or --out): result.json (summary + provenance), one JSON per Result,
circuit.json (the recommended circuit) and report.html.

Measured (2026-12, embedded SmolLM2-135M, 8 prompts of template 0, one torch thread on a 2-core
CPU shared with other jobs: 28 min 49 s wall, 20 min CPU; 5 GB peak memory), command
``python experiments/ioi_circuit.py --n 8 --threads 1``; 70,651 edges; clean logit difference
+5.79, corrupt -0.58. Agreement with exact edge patching on 71 shared edges (23 top, 48 random)
and the smallest circuit reaching 0.8 (edges after pruning, faithfulness, heads touched):

    method        scores  Spearman  Pearson  Spearman(random)  mean ablation        counterfactual
    eap             10 s    0.52     0.15        0.88          4645 (0.805), 225 h  5633 (0.801), 238 h
    eap-ig:5        16 s    0.44     0.46        0.69           633 (0.847),  52 h  4482 (0.828), 227 h
    eap-ig:20       53 s    0.46     0.45        0.70           651 (0.850),  50 h  5428 (0.801), 234 h
    hybrid (eap)   151 s    0.96*    1.00*       0.88          4978 (0.802), 232 h 13529 (0.801), 261 h
    eap-ig-act:5   437 s    0.49     0.44        0.88          4506 (0.801), 224 h  8164 (0.806), 243 h
    hybrid (eap-ig) 154 s   0.77*    1.00*       0.64          1021 (0.801), 101 h  6156 (0.816), 239 h
    eap-ig-act:20 1101 s    0.42     0.38        0.80          4653 (0.801), 229 h  9439 (0.800), 248 h

(* the hybrid's 256 candidates carry exact scores, so its agreement on them is by construction;
EAP's own estimate on them: Spearman 0.32. The last two rows are separate runs, ``--edge_methods
hybrid --hybrid_rank_by eap-ig`` (6.9 min) and ``--edge_methods eap-ig-act:20`` (21.4 min), each
with its own sample of 56 edges.) Every method reaches 0.8 under both ablations. EAP-IG (5
steps) finds the smallest circuit under both: under mean ablation 1.6x smaller than the
EAP-IG-ranked hybrid and 7x smaller than the rest; 20 steps change nothing, for either EAP-IG
variant. Per-edge agreement with exact patching does not predict circuit size: the hybrid, exact
on its candidates, gives larger circuits than its ranking alone. Recommended: EAP-IG, 5 steps
(the library's default method); its circuit is 7x smaller under mean ablation (633 edges) than
under counterfactual (4482). Each discovery (one method, one ablation) takes 65-140 s; the
curves are not monotone (EAP-IG, mean: 0.47 at 512, 0.85 at 728, 1.00 at 2048, 0.75 at 4096
top edges). See docs/attribution.md, "IOI on the embedded model".
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from pathlib import Path

import torch

import interpkit as ik
from interpkit.attribution.edge_exact import exact_edges
from interpkit.attribution.honesty import pearson, spearman
from interpkit.circuits import CircuitWarning
from interpkit.plots.report import write_report
from interpkit.results import Result, json_text, make_provenance, write_text_atomic
from interpkit.runtime import baseline
from interpkit.scripting import command_line, config_dict, config_from_args

DIRECTION = "noise"  # clean target, corrupt source: the change an edge's removal causes


@dataclasses.dataclass
class Config:
    model: str = "smollm2-135m"
    n: int = 16  # IOI prompts (one template, so every position lines up)
    template: int = 0
    node_methods: str = ""  # e.g. "atp,atp*,ig,exact"
    edge_methods: str = "eap,eap-ig:5,eap-ig:20,hybrid,eap-ig-act:5"
    ig_steps: int = 5  # node IG's steps, and the hybrid's ranking's
    hybrid_rank_by: str = "eap"
    hybrid_candidates: int = 256  # edges the hybrid re-scores exactly
    sample_top: int = 8  # agreement sample: the top edges of each method ...
    sample_random: int = 48  # ... and this many random others
    ablations: str = "mean,counterfactual"
    target: float = 0.8  # faithfulness the reported circuits must reach
    overlap_k: int = 200  # top edges compared between methods
    n_boot: int = 0  # bootstrap resamples for stability (0: off)
    stability_method: str = "eap"
    stability_edges: int = 200
    seed: int = 0
    threads: int = 1  # torch threads (0: torch's default)
    device: str | None = None
    dtype: str | None = None
    out: str = "runs/ioi_circuit"


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def method_spec(spec: str) -> tuple[str, dict]:
    """``"eap-ig:20"`` -> ``("eap-ig", {"ig_steps": 20})``; a bare name keeps the method's defaults."""
    name, _, steps = spec.partition(":")
    return name, ({"ig_steps": int(steps)} if steps else {})


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def top_edges(res: Result, k: int) -> set[str]:
    order = res.scores.abs().argsort(descending=True)[:k]
    return {res.labels["edge"][int(i)] for i in order}


def heads_of(circ: ik.circuits.Circuit) -> list[str]:
    """The attention heads a circuit touches (senders or receivers), in graph order."""
    out = []
    for node in circ.nodes:
        m = re.fullmatch(r"(L\d+H\d+)(\.[qkv])?", node)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out


def edge_sample(scores: dict[str, Result], n_top: int, n_random: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the shared agreement sample: the top ``n_top`` of every method, and ``n_random`` other edges."""
    top: set[int] = set()
    for res in scores.values():
        top |= set(res.scores.abs().argsort(descending=True)[:n_top].tolist())
    n_all = len(next(iter(scores.values())).scores)
    rest = torch.tensor(sorted(set(range(n_all)) - top))
    g = torch.Generator().manual_seed(seed)
    drawn = rest[torch.randperm(len(rest), generator=g)[:n_random]].tolist()
    return sorted(top), sorted(drawn)


def agreement(model, task, scores: dict[str, Result], cfg: Config) -> dict:
    """Spearman and Pearson of every method's scores with exact edge patching on one shared sample."""
    top, drawn = edge_sample(scores, cfg.sample_top, cfg.sample_random, cfg.seed)
    idx = top + drawn
    graph = ik.graph.build_graph(model)
    pairs_all = graph.mask.nonzero().tolist()
    pairs = [tuple(pairs_all[i]) for i in idx]
    base = baseline(model, task.to(model.device), task.metric)
    exact = exact_edges(model, task, graph, pairs, DIRECTION, task.metric, base["clean_logprobs"]).mean(-1).cpu()
    part = torch.tensor([i in set(drawn) for i in idx])
    out = {"n": len(idx), "n_random": len(drawn), "labels": [scores[next(iter(scores))].labels["edge"][i] for i in idx]}
    out["exact"] = exact.tolist()
    for name, res in scores.items():
        est = res.scores[idx].float()
        out[name] = {
            "spearman": spearman(est, exact),
            "pearson": pearson(est, exact),
            "spearman_random": spearman(est[part], exact[part]),
            "pearson_random": pearson(est[part], exact[part]),
        }
    return out


def circuit_row(model, task, res: Result, ablation: str, cfg: Config) -> tuple[dict, ik.circuits.Circuit]:
    """The smallest circuit of ``res``'s ranking reaching ``cfg.target`` under ``ablation`` (or the best found)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CircuitWarning)  # "not reached" is reported in the row
        circ = ik.discover_circuit(model, task, scores=res, target=cfg.target, ablation=ablation, seed=cfg.seed)
    meta = circ.meta
    sizes, values = meta["curve"]["sizes"], meta["curve"]["faithfulness"]
    total = len(res.scores)
    x = torch.tensor(sizes, dtype=torch.float64) / total
    row = {
        "reached": meta["reached"],
        "top_k": meta["n_edges_chosen"],
        "n_edges": len(circ),
        "faithfulness": meta["faithfulness"],
        "heads": heads_of(circ),
        "curve": {"sizes": sizes, "faithfulness": [round(v, 4) for v in values]},
        "cpr": float(torch.trapezoid(torch.tensor(values, dtype=torch.float64), x)),
    }
    return row, circ


def recommend(rows: dict[str, dict[str, dict]], costs: dict[str, float], target: float) -> dict:
    """The (method, ablation) the evidence supports: the smallest circuit reaching the target, else the most faithful.

    Ties (within 10% of the edges) go to the cheaper method.
    """

    def key(item):
        (method, _ablation), row = item
        if row["reached"]:
            return (0, row["n_edges"], costs.get(method, 0.0))
        return (1, -row["faithfulness"], costs.get(method, 0.0))

    items = [((m, a), row) for m, by_ab in rows.items() for a, row in by_ab.items()]
    best = sorted(items, key=key)
    (method, ablation), row = best[0]
    reached = [it for it in best if it[1]["reached"] and it[1]["n_edges"] <= 1.1 * row["n_edges"]]
    if row["reached"] and len(reached) > 1:
        (method, ablation), row = min(reached, key=lambda it: costs.get(it[0][0], 0.0))
    if row["reached"]:
        why = (
            f"{method} under {ablation} ablation gives the smallest circuit reaching {target}: {row['n_edges']} edges "
            f"(faithfulness {row['faithfulness']:.3f}, {len(row['heads'])} heads), scores in {costs.get(method, 0):.0f} s"
        )
    else:
        why = (
            f"no method reaches {target}; {method} under {ablation} ablation comes closest ({row['faithfulness']:.3f})"
        )
    per_ablation = {}
    for ab in dict.fromkeys(a for by_ab in rows.values() for a in by_ab):
        got = sorted([it for it in items if it[0][1] == ab], key=key)
        per_ablation[ab] = got[0][0][0]
        if got[0][1]["reached"]:
            runner_up = f"; next {got[1][0][0]}, {got[1][1]['n_edges']} edges" if len(got) > 1 else ""
            why += f"; under {ab} ablation {got[0][0][0]} needs {got[0][1]['n_edges']} edges{runner_up}"
    return {"method": method, "ablation": ablation, "reason": why, "best_method_per_ablation": per_ablation}


def node_part(model, task, cfg: Config, tick) -> tuple[dict, list, dict]:
    """Node attribution over every head's output, each gradient method with its honesty check."""
    summary, sections, results = {}, [], {}
    for method in _split(cfg.node_methods):
        t = time.perf_counter()
        options = {"ig_steps": cfg.ig_steps} if method == "ig" else {}
        res = ik.attribute(model, task, method=method, level="node", site="head_out", direction=DIRECTION, **options)
        tick(f"node {method}", t)
        results[f"node_{method}"] = res
        check = res.extras.get("check", {}) if isinstance(res.extras, dict) else {}
        check = {k: v for k, v in check.items() if isinstance(v, (int, float, str))}
        summary[method] = {"top": res.top(8), "check": check}
        note = (
            f"Rank correlation with exact patching: {check.get('spearman', float('nan')):+.3f} on {check.get('n')} heads."
            if check
            else "Exact activation patching (the reference)."
        )
        sections.append((f"Heads: {method}", [note, res.figure()]))
    return summary, sections, results


def edge_part(model, task, cfg: Config, tick) -> tuple[dict[str, Result], dict[str, float]]:
    """Every edge method's scores (honesty checks off: the shared sample below replaces them)."""
    scores, costs = {}, {}
    for spec in _split(cfg.edge_methods):
        name, options = method_spec(spec)
        if name == "hybrid":
            options = {"rank_by": cfg.hybrid_rank_by, "candidates": cfg.hybrid_candidates, "ig_steps": cfg.ig_steps}
        t = time.perf_counter()
        scores[spec] = ik.attribution.edge_scores(model, task, name, DIRECTION, check=0, seed=cfg.seed, **options)
        tick(f"edge scores {spec}", t)
        costs[spec] = time.perf_counter() - t
    return scores, costs


def curves_figure(rows: dict[str, dict], ablation: str, target: float):
    """One line per method: faithfulness against circuit size (the sizes discover_circuit searched)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for method, row in rows.items():
        sizes, values = row["curve"]["sizes"], row["curve"]["faithfulness"]
        fig.add_trace(go.Scatter(x=[max(s, 1) for s in sizes], y=values, mode="lines+markers", name=method))
    fig.add_hline(y=target, line_dash="dot", annotation_text=f"target {target}")
    fig.update_layout(
        title=f"faithfulness of the top-k edges (pruned), {ablation} ablation",
        xaxis={"type": "log", "title": "edges kept (top-k, before pruning)"},
        yaxis={"title": "normalised faithfulness"},
    )
    return fig


def table(agree: dict, rows: dict[str, dict[str, dict]], costs: dict[str, float], ablations: list[str]) -> list[str]:
    """The printed results: one line per method."""
    lines = [
        f"{'method':<16}{'sec':>7}{'spearman':>10}{'pearson':>9}{'sp(rand)':>10}  "
        + "  ".join(f"{a + ': edges (faith), heads':<30}" for a in ablations)
    ]
    for method, by_ab in rows.items():
        a = agree.get(method, {})
        cells = []
        for ab in ablations:
            row = by_ab[ab]
            faith, heads = row["faithfulness"], len(row["heads"])
            got = (
                f"{row['n_edges']} ({faith:.3f}), {heads} heads" if row["reached"] else f"not reached, best {faith:.3f}"
            )
            cells.append(f"{got:<30}")
        lines.append(
            f"{method:<16}{costs.get(method, 0):>7.0f}{a.get('spearman', float('nan')):>10.3f}"
            f"{a.get('pearson', float('nan')):>9.3f}{a.get('spearman_random', float('nan')):>10.3f}  "
            + "  ".join(cells)
        )
    return lines


def main(cfg: Config) -> dict:
    command = command_line("ioi_circuit.main()")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def tick(label: str, since: float) -> None:
        timings[label] = round(time.perf_counter() - since, 1)
        print(f"  {label}: {timings[label]} s", flush=True)

    model = ik.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    task = ik.tasks.load("ioi", model, n=cfg.n, seed=cfg.seed, templates=[cfg.template])
    values = ik.metrics.clean_and_corrupt(model, task)
    print(f"{model}\nIOI logit difference: clean {values['clean']:+.3f}, corrupt {values['corrupt']:+.3f}")
    out = Path(cfg.out)
    ablations = _split(cfg.ablations)
    summary: dict = {"task": {"n": len(task), "example": task.clean_text[0], **values}, "direction": DIRECTION}
    sections: list = [
        (
            "Task",
            [
                f"{len(task)} IOI prompts like {task.clean_text[0]!r}; the corrupted prompts use three other names. "
                "Metric: logit(indirect object) - logit(subject) at the last token. Edge scores are for the "
                f"{DIRECTION!r} direction (clean run, corrupt source): what removing an edge from the model does.",
                {"clean": round(values["clean"], 4), "corrupt": round(values["corrupt"], 4)},
            ],
        )
    ]
    summary["node"], node_sections, results = node_part(model, task, cfg, tick)
    sections += node_sections

    scores, costs = edge_part(model, task, cfg, tick)
    results |= {f"edge_{m.replace(':', '_')}": r for m, r in scores.items()}  # no ":" in file names
    summary["edge"] = {
        m: {"top": r.top(10), "n_edges": len(r.labels["edge"]), "seconds": round(costs[m], 1)}
        | ({"hybrid_check": _plain(r.extras["check"])} if r.meta.get("method") == "hybrid" else {})
        for m, r in scores.items()
    }
    rows: dict[str, dict[str, dict]] = {}
    found: dict[tuple[str, str], ik.circuits.Circuit] = {}
    for method, res in scores.items():  # each method's scores reused for every ablation
        rows[method] = {}
        for ablation in ablations:
            t = time.perf_counter()
            rows[method][ablation], found[method, ablation] = circuit_row(model, task, res, ablation, cfg)
            tick(f"circuit {method} ({ablation})", t)
            row = rows[method][ablation]
            print(f"    {'reached' if row['reached'] else 'not reached'}: {row['n_edges']} edges, faithfulness "
                  f"{row['faithfulness']:.3f}, heads {' '.join(row['heads'][:12])}", flush=True)  # fmt: skip
    t = time.perf_counter()
    agree = agreement(model, task, scores, cfg) if cfg.sample_top + cfg.sample_random > 0 else {}
    tick("agreement sample (exact edges)", t)
    summary["agreement"] = agree
    summary["circuits"] = rows
    best = recommend(rows, costs, cfg.target)
    summary["recommendation"] = best
    lines = table(agree, rows, costs, ablations)
    print("\n" + "\n".join(lines) + f"\nrecommended default: {best['reason']}", flush=True)
    circ = found[best["method"], best["ablation"]]
    circ.save(out / "circuit.json")

    sections.append(
        (
            "Agreement with exact edge patching, and the smallest circuits",
            [
                f"Each method's edge scores against exact edge patching on one shared sample of {agree.get('n')} edges "
                f"(the top {cfg.sample_top} of every method and {agree.get('n_random')} random others, all "
                f"{len(task)} prompts); then, per ablation, the smallest top-k circuit (pruned) whose faithfulness "
                f"reaches {cfg.target} (ik.discover_circuit), its edges and heads. The hybrid's candidates carry exact "
                "scores, so its agreement on them is by construction.",
                [
                    {"method": m, **{k: round(v, 3) for k, v in agree[m].items()}}
                    for m in scores
                    if isinstance(agree.get(m), dict)
                ],
                _rows_table(rows),
                *[curves_figure({m: rows[m][a] for m in rows}, a, cfg.target) for a in ablations],
                f"Recommended default: {best['reason']}.",
                circ.figure(),
            ],
        )
    )
    sections += overlap_part(model, task, scores, cfg, summary, results, tick)

    summary["seconds"] = timings | {"total": round(time.perf_counter() - start, 1)}
    spec = make_provenance(model, task, cfg.seed, config=config_dict(cfg), command=command)
    for name, res in results.items():
        res.to_json(out / f"{name}.json")
    write_text_atomic(out / "result.json", json_text({"summary": summary, "spec": spec}) + "\n")
    path = write_report(
        out / "report.html",
        f"IOI circuit: {model.name}",
        sections,
        spec,
        command,
        intro="Edge attribution methods against exact edge patching, and the circuits they find, on IOI.",
    )
    print(f"total {summary['seconds']['total']} s; wrote {out / 'result.json'} and {path}")
    return summary


def _plain(check: dict) -> dict:
    return {k: v for k, v in check.items() if isinstance(v, (int, float, str))}


def _rows_table(rows: dict[str, dict[str, dict]]) -> list[dict]:
    return [
        {
            "method": m,
            "ablation": a,
            "reached": r["reached"],
            "edges": r["n_edges"],
            "faithfulness": round(r["faithfulness"], 3),
            "heads": ", ".join(r["heads"]),
        }
        for m, by_ab in rows.items()
        for a, r in by_ab.items()
    ]


def overlap_part(model, task, scores: dict[str, Result], cfg: Config, summary: dict, results: dict, tick) -> list:
    """Jaccard overlap of the methods' top edges; optionally the stability of one method's circuit."""
    edge_sets = {m: top_edges(r, cfg.overlap_k) for m, r in scores.items()}
    names = list(edge_sets)
    overlap = torch.tensor([[jaccard(edge_sets[a], edge_sets[b]) for b in names] for a in names])
    overlap_res = Result(overlap, ("method", "method_b"), {"method": names, "method_b": names}, kind="overlap")
    results["overlap"] = overlap_res
    summary["overlap"] = {
        f"{a} vs {b}": round(float(overlap[i, j]), 3) for i, a in enumerate(names) for j, b in enumerate(names) if i < j
    }
    parts: list = [f"Jaccard overlap of the top {cfg.overlap_k} edges of each edge method.", overlap_res.figure()]
    if cfg.n_boot > 0:
        name, options = method_spec(cfg.stability_method)
        t = time.perf_counter()
        stab = ik.circuits.stability(
            model, task, name, n_boot=cfg.n_boot, n_edges=cfg.stability_edges, seed=cfg.seed, direction=DIRECTION,
            check=0, **options,
        )  # fmt: skip
        tick("stability", t)
        results["stability"] = stab
        summary["stability"] = {k: v for k, v in stab.meta.items() if isinstance(v, (int, float, str))}
        parts += [
            f"Stability of the {cfg.stability_method} top-{cfg.stability_edges} circuit over {cfg.n_boot} bootstrap "
            "resamples of the prompts.",
            summary["stability"],
        ]
    return [("Overlap and stability", parts)]


def parse_args(argv: list[str] | None = None) -> Config:
    return config_from_args(Config, argv, __doc__)


if __name__ == "__main__":
    main(parse_args())
