"""The IOI circuit in the embedded model: node and edge attribution, discovery, faithfulness, overlap.

Usage:
    .venv/bin/python experiments/ioi_circuit.py                              # embedded SmolLM2 (~45 min, 2-core CPU)
    .venv/bin/python experiments/ioi_circuit.py --n 8 --ablations mean --out runs/ioi_quick   # quicker
    .venv/bin/python experiments/ioi_circuit.py --model path/to/hf_dir --device cuda --dtype bfloat16

Wang et al. 2022 ("Interpretability in the Wild") found the circuit GPT-2 small uses for indirect
object identification ("When Mary and John went to the store, John gave a drink to" -> " Mary").
This script asks the same of another model, with every method interpkit has and an honest
account of how far they agree:

1. Node attribution over every head's output: attribution patching (AtP), AtP*, integrated
   gradients, and exact activation patching; each gradient method's rank correlation with exact
   patching.
2. Edge attribution over the whole graph (embed, every head's q/k/v input, MLPs, logits): EAP and
   EAP-IG, with their rank correlation with exact edge patching on a sample of edges.
3. Circuits: top-n edges by each method's scores, pruned; faithfulness curves (MIB's CPR and
   CMD) under mean, zero, resample and counterfactual ablation; the smallest circuit reaching
   ``--target`` faithfulness under mean ablation, its heads and its figure.
4. Overlap between methods (Jaccard of their top edges) and stability of the EAP-IG circuit over
   bootstrap resamples of the prompts.

Writes runs/ioi_circuit/ (or --out): result.json (summary + provenance), one JSON per Result,
circuit.json and report.html.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

import interpkit as ik
from interpkit import circuits
from interpkit.plots.report import write_report
from interpkit.results import Result, json_text, make_provenance, write_text_atomic
from interpkit.scripting import command_line, config_dict, config_from_args


@dataclasses.dataclass
class Config:
    model: str = "smollm2-135m"
    n: int = 16  # IOI prompts (one template, so every position lines up)
    template: int = 0
    node_methods: str = "atp,atp*,ig,exact"
    edge_methods: str = "eap,eap-ig"
    ig_steps: int = 5
    select_method: str = "eap-ig"  # whose scores rank edges for the circuits
    ablations: str = "mean,zero,resample,counterfactual"
    target: float = 0.8  # faithfulness the reported circuit must reach (mean ablation)
    overlap_k: int = 200  # top edges compared between methods
    n_boot: int = 4  # bootstrap resamples for stability
    stability_edges: int = 200
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    out: str = "runs/ioi_circuit"


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def top_edges(res: Result, k: int) -> set[str]:
    order = res.scores.abs().argsort(descending=True)[:k]
    return {res.labels["edge"][int(i)] for i in order}


def size_grid(n_edges: int) -> list[int]:
    """Circuit sizes from 5 edges to the whole graph, roughly geometric."""
    sizes, k = [], 5
    while k < n_edges:
        sizes.append(k)
        k = int(k * 1.8) + 1
    return [*sizes, n_edges]


def smallest_reaching(model, task, ranking: Result, target: float, ablation: str, seed: int):
    """The smallest top-k circuit (pruned) whose faithfulness reaches ``target``, refined between grid points."""
    n_all = len(ranking.labels["edge"])
    coarse = circuits.faithfulness_curve(model, task, ranking, size_grid(n_all), ablation, seed=seed)
    sizes = [int(s) for s in coarse.meta["sizes"]] if "sizes" in coarse.meta else size_grid(n_all)
    values = coarse.scores.tolist()
    hit = next((i for i, v in enumerate(values) if v >= target), None)
    if hit is None:
        return coarse, None, None
    low = sizes[hit - 1] if hit > 0 else 1
    fine_sizes = sorted({int(x) for x in torch.linspace(low, sizes[hit], 10).round().tolist()})
    fine = circuits.faithfulness_curve(model, task, ranking, fine_sizes, ablation, seed=seed)
    k = next(s for s, v in zip(fine_sizes, fine.scores.tolist(), strict=True) if v >= target)
    circ = circuits.discover_circuit(model, task, scores=ranking, n_edges=k)
    return coarse, circ, k


def main(cfg: Config) -> dict:
    command = command_line("ioi_circuit.main()")
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
    results: dict[str, Result] = {}
    summary: dict = {"task": {"n": len(task), "example": task.clean_text[0], **values}, "node": {}, "edge": {}}
    sections: list = [
        (
            "Task",
            [
                f"{len(task)} IOI prompts like {task.clean_text[0]!r}; the corrupted prompts use three other names. "
                "Metric: logit(indirect object) - logit(subject) at the last token.",
                {"clean": round(values["clean"], 4), "corrupt": round(values["corrupt"], 4)},
            ],
        )
    ]

    # 1. node attribution over head outputs
    for method in _split(cfg.node_methods):
        t = time.perf_counter()
        options = {"ig_steps": cfg.ig_steps} if method == "ig" else {}
        res = ik.attribute(model, task, method=method, level="node", site="head_out", **options)
        tick(f"node {method}", t)
        results[f"node_{method}"] = res
        check = res.extras.get("check", {}) if isinstance(res.extras, dict) else {}
        summary["node"][method] = {"top": res.top(8), "check": check}
        note = (
            f"Rank correlation with exact patching: {check.get('spearman', check.get('spearman_vs_exact')):+.3f} "
            f"on {check.get('n', check.get('n_components'))} heads."
            if check
            else "Exact activation patching (the reference)."
        )
        sections.append((f"Heads: {method}", [note, res.figure()]))

    # 2. edge attribution
    for method in _split(cfg.edge_methods):
        t = time.perf_counter()
        options = {"ig_steps": cfg.ig_steps} if method.startswith("eap-ig") else {}
        res = ik.attribute(model, task, method=method, level="edge", direction="noise", **options)
        tick(f"edge {method}", t)
        results[f"edge_{method}"] = res
        check = res.extras.get("check", {}) if isinstance(res.extras, dict) else {}
        summary["edge"][method] = {"top": res.top(10), "check": check, "n_edges": len(res.labels["edge"])}
        rows = [{"edge": label, "score": round(value, 5)} for label, value in res.top(15)]
        sections.append((f"Edges: {method} (top 15 of {len(res.labels['edge'])})", [{"check": str(check)}, rows]))

    # 3. circuits and faithfulness
    ranking = results[f"edge_{cfg.select_method}"]
    curves = {}
    for ablation in _split(cfg.ablations):
        t = time.perf_counter()
        if ablation == "mean":
            curve, circ, k = smallest_reaching(model, task, ranking, cfg.target, ablation, cfg.seed)
        else:
            curve = circuits.faithfulness_curve(
                model, task, ranking, size_grid(len(ranking.labels["edge"])), ablation, seed=cfg.seed
            )
        tick(f"faithfulness curve ({ablation})", t)
        curves[ablation] = curve
        results[f"curve_{ablation}"] = curve
        sections.append(
            (
                f"Faithfulness curve, {ablation} ablation",
                [
                    f"Top-k edges by {cfg.select_method} (pruned), every other edge {ablation}-ablated. "
                    f"CPR {curve.meta.get('cpr', float('nan')):.3f}, CMD {curve.meta.get('cmd', float('nan')):.3f}.",
                    circuits.curve_figure(curve),
                ],
            )
        )
    summary["curves"] = {a: {"cpr": c.meta.get("cpr"), "cmd": c.meta.get("cmd")} for a, c in curves.items()}
    if "mean" in curves and circ is not None:
        rep = ik.faithfulness(model, task, circ, ablation="mean", seed=cfg.seed)
        heads = sorted({n for n in circ.nodes if n[0] == "L" and "H" in n and "." not in n})
        summary["circuit"] = {
            "target": cfg.target,
            "top_k": k,
            "n_edges": len(circ),
            "faithfulness_mean": float(rep.scores[0]),
            "heads": heads,
            "nodes": circ.nodes,
        }
        circ.save(out / "circuit.json")
        print(f"smallest circuit reaching {cfg.target} under mean ablation: {len(circ)} edges, heads {heads}")
        sections.append(
            (
                f"The smallest circuit reaching {cfg.target} faithfulness (mean ablation)",
                [
                    f"{len(circ)} edges (top {k} by {cfg.select_method}, pruned), faithfulness "
                    f"{float(rep.scores[0]):.3f}; heads: {', '.join(heads)}.",
                    circ.figure(),
                ],
            )
        )
    else:
        summary["circuit"] = {"target": cfg.target, "reached": False}

    # 4. overlap between methods, stability
    edge_sets = {
        m.removeprefix("edge_"): top_edges(r, cfg.overlap_k) for m, r in results.items() if m.startswith("edge_")
    }
    names = list(edge_sets)
    overlap = torch.tensor([[jaccard(edge_sets[a], edge_sets[b]) for b in names] for a in names])
    overlap_res = Result(overlap, ("method", "method_b"), {"method": names, "method_b": names}, kind="overlap")
    results["overlap"] = overlap_res
    summary["overlap"] = {
        f"{a} vs {b}": round(float(overlap[i, j]), 3) for i, a in enumerate(names) for j, b in enumerate(names) if i < j
    }
    t = time.perf_counter()
    stab = circuits.stability(
        model,
        task,
        cfg.select_method,
        n_boot=cfg.n_boot,
        n_edges=cfg.stability_edges,
        seed=cfg.seed,
        direction="noise",
        **({"ig_steps": cfg.ig_steps} if cfg.select_method.startswith("eap-ig") else {}),
    )
    tick("stability", t)
    results["stability"] = stab
    summary["stability"] = {k: v for k, v in stab.meta.items() if isinstance(v, (int, float, str))}
    sections.append(
        (
            "Overlap and stability",
            [
                f"Jaccard overlap of the top {cfg.overlap_k} edges of each edge method; stability of the "
                f"{cfg.select_method} top-{cfg.stability_edges} circuit over {cfg.n_boot} bootstrap resamples of the prompts.",
                overlap_res.figure(),
                summary["stability"],
            ],
        )
    )

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
        intro="Node and edge attribution, circuit discovery and faithfulness for indirect object identification.",
    )
    print(f"total {summary['seconds']['total']} s; wrote {out / 'result.json'} and {path}")
    return summary


def parse_args(argv: list[str] | None = None) -> Config:
    return config_from_args(Config, argv, __doc__)


if __name__ == "__main__":
    main(parse_args())
