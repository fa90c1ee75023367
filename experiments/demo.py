"""The main job: what interpkit finds in the embedded model, as one self-contained HTML report.

Usage:
    .venv/bin/python experiments/demo.py                              # embedded SmolLM2-135M, 2 CPU cores
    .venv/bin/python experiments/demo.py --n 16 --n_per_position 8    # more prompts (slower)
    .venv/bin/python experiments/demo.py --no-per_position            # quicker
    .venv/bin/python experiments/demo.py --model toy-induction        # a token-id model: induction part only

Loads the embedded SmolLM2-135M (no download) and writes runs/demo/report.html and
runs/demo/result.json:

1. Induction heads (Olsson et al. 2022): previous-token and induction scores of every head on
   repeated random tokens, the attention patterns of the strongest heads (with a head picker),
   and the induction task's logit difference on clean and corrupted prompts.
2. Indirect object identification (Wang et al. 2022): the logit difference between the right
   and the wrong name, activation patching of every head's output (denoising: clean into the
   corrupted run, whose names are all different), patching of the residual stream per layer and
   position, direct logit attribution of every head and MLP, and the logit lens on one prompt.
3. An IOI circuit: EAP-IG scores of every edge, the faithfulness curve of the top-k edges under
   mean ablation, and the smallest of them reaching 0.8, drawn as a graph.
4. Probing: where the subject's grammatical number is linearly decodable, layer by layer,
   against a shuffled-label baseline.

Every number in the report carries its provenance (model hash, dtype, task hash, seed, package
versions, this command line).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import time
from pathlib import Path

import torch
from tqdm import tqdm

import interpkit as ik
from interpkit import plots
from interpkit.attribution.head_scores import head_patterns, induction_scores, previous_token_scores
from interpkit.plots.report import write_report
from interpkit.results import Result, json_text, make_provenance, write_text_atomic
from interpkit.scripting import command_line, config_dict, config_from_args


@dataclasses.dataclass
class DemoConfig:
    model: str = "smollm2-135m"
    n: int = 4  # IOI prompts (one template, so every position lines up; names vary)
    n_induction: int = 8  # repeated random sequences
    induction_length: int = 16  # tokens per repeated block
    per_position: bool = True  # also patch the residual stream per layer and position ...
    n_per_position: int = 2  # ... on this many of the IOI prompts
    layers_per_step: int = 5  # patching runs this many layers per progress step
    top_heads: int = 6  # attention patterns shown
    circuit: bool = True  # find an IOI circuit with EAP-IG and measure its faithfulness
    ig_steps: int = 5  # EAP-IG integration steps
    faithfulness_target: float = 0.8  # the circuit shown is the smallest top-k reaching this
    circuit_fractions: str = "0.005,0.01,0.02,0.05,0.1"  # top-k sizes tried, as fractions of all edges
    probe: bool = True  # probe every layer for the subject's grammatical number
    seed: int = 0
    threads: int = 0  # torch threads; 0: all cores on an idle machine, 1 on a busy one
    device: str | None = None
    dtype: str | None = None
    out: str = "runs/demo"


def timed(label: str, timings: dict[str, float]):
    """Context manager that prints and records how long a step took."""

    class _Timer:
        def __enter__(self) -> None:
            self.start = time.perf_counter()
            print(f"- {label} ...", flush=True)

        def __exit__(self, *exc: object) -> None:
            timings[label] = round(time.perf_counter() - self.start, 1)
            print(f"  {label}: {timings[label]} s", flush=True)

    return _Timer()


def patch_in_steps(model: ik.Model, task: ik.Task, site: str, cfg: DemoConfig, **options) -> Result:
    """``ik.patch`` over all layers, a few layers at a time with a progress bar; one Result."""
    layers = list(range(model.cfg.n_layers))
    steps = [layers[i : i + cfg.layers_per_step] for i in range(0, len(layers), cfg.layers_per_step)]
    parts = [ik.patch(model, task, site, layers=chunk, **options) for chunk in tqdm(steps, desc=site, unit="step")]
    first = parts[0]
    labels = dict(first.labels)
    labels["layer"] = [lab for part in parts for lab in part.labels["layer"]]
    extras = dict(first.extras)
    extras["per_example"] = torch.cat([part.extras["per_example"] for part in parts])
    return dataclasses.replace(first, scores=torch.cat([part.scores for part in parts]), labels=labels, extras=extras)


def top_heads(scores: torch.Tensor, k: int) -> list[tuple[str, float]]:
    n_heads = scores.shape[1]
    order = torch.argsort(scores.flatten(), descending=True)[:k].tolist()
    return [(f"L{i // n_heads}H{i % n_heads}", float(scores.flatten()[i])) for i in order]


def head_result(scores: torch.Tensor, what: str) -> Result:
    n_layers, n_heads = scores.shape
    labels = {"layer": [f"L{i}" for i in range(n_layers)], "head": [f"H{h}" for h in range(n_heads)]}
    return Result(scores.float(), ("layer", "head"), labels, metric=what, kind=what)


def induction_part(model: ik.Model, cfg: DemoConfig, timings: dict) -> tuple[list, dict]:
    with timed("induction heads", timings):
        task = ik.tasks.load("induction", model, n=cfg.n_induction, length=cfg.induction_length, seed=cfg.seed)
        values = ik.metrics.clean_and_corrupt(model, task)
        patterns = head_patterns(model, task.clean)  # (layer, batch, head, q_pos, k_pos)
        prev = previous_token_scores(patterns).cpu()
        ind = induction_scores(patterns, task.clean).cpu()
    top_ind, top_prev = top_heads(ind, cfg.top_heads), top_heads(prev, 2)
    shown = list(dict.fromkeys([h for h, _ in top_ind] + [h for h, _ in top_prev]))
    index = [(int(h[1 : h.index("H")]), int(h[h.index("H") + 1 :])) for h in shown]
    example = torch.stack([patterns[lay, 0, head] for lay, head in index])  # (head, q_pos, k_pos)
    tokens = model.to_str_tokens(task.clean[0])
    picker = plots.attention_pattern(
        example,
        tokens,
        head_labels=shown,
        scores=[float(ind[lay, head]) for lay, head in index],
        score_name="induction score",
        title="Attention on a repeated random sequence",
    )
    sections = [
        (
            "Induction heads: scores",
            [
                f"{len(task)} sequences of {cfg.induction_length} random tokens, then the same tokens again. "
                "An induction head attends from a repeated token to the token that followed its first "
                "occurrence; a previous-token head attends one position back.",
                plots.heatmap(
                    head_result(ind, "induction score"),
                    signed=False,
                    zmax=1.0,
                    title="Induction score per head (mean attention to the token after the earlier copy)",
                ),
                plots.heatmap(
                    head_result(prev, "previous-token score"),
                    signed=False,
                    zmax=1.0,
                    title="Previous-token score per head (mean attention to the position before)",
                ),
            ],
        ),
        ("Induction heads: attention patterns (pick a head)", picker),
        (
            "Induction task",
            {
                "metric": values["metric"],
                "clean (second block predictable)": round(values["clean"], 4),
                "corrupt (first block replaced)": round(values["corrupt"], 4),
                **{f"induction head {i + 1}": f"{h}: {s:.3f}" for i, (h, s) in enumerate(top_ind)},
                **{f"previous-token head {i + 1}": f"{h}: {s:.3f}" for i, (h, s) in enumerate(top_prev)},
            },
        ),
    ]
    summary = {
        "metric": values["metric"],
        "clean": values["clean"],
        "corrupt": values["corrupt"],
        "task_hash": task.hash(),
        "top_induction_heads": top_ind,
        "top_previous_token_heads": top_prev,
    }
    return sections, summary


def ioi_part(model: ik.Model, cfg: DemoConfig, timings: dict) -> tuple[list, dict]:
    task = ik.tasks.load("ioi", model, n=cfg.n, seed=cfg.seed, templates=[0])
    values = ik.metrics.clean_and_corrupt(model, task)
    print(f"  IOI logit difference: clean {values['clean']:+.3f}, corrupt {values['corrupt']:+.3f}")
    sections: list = [
        (
            "IOI: the task",
            [
                f"{len(task)} prompts like {task.clean_text[0]!r} -> answer {model.to_str_tokens(task.answer[:1])[0]!r}. "
                "The corrupted prompts use three new names, so they carry no information about the answer. "
                "Metric: logit(right name) - logit(wrong name).",
                {"clean": round(values["clean"], 4), "corrupt": round(values["corrupt"], 4)},
            ],
        )
    ]
    summary: dict = {"metric": values["metric"], "clean": values["clean"], "corrupt": values["corrupt"]}
    with timed("IOI head patching", timings):
        heads = patch_in_steps(model, task, "head_out", cfg, direction="denoise")
    sections.append(("IOI: patching each head's output", heads.figure()))
    summary["head_patching_top"] = heads.top(8)
    if cfg.per_position:
        with timed("IOI residual stream patching per position", timings):
            few = task.subset(slice(0, cfg.n_per_position))
            resid = patch_in_steps(model, few, "resid_pre", cfg, per_position=True, direction="denoise")
        sections.append(("IOI: patching the residual stream per layer and position", resid.figure()))
        summary["resid_patching_top"] = resid.top(8)
    with timed("IOI direct logit attribution and logit lens", timings):
        cache = ik.cache.run(model, task)
        attrs = cache.logit_attrs(task.answer, task.wrong)  # (component, batch, pos)
        rows = torch.arange(len(task), device=attrs.scores.device)
        at_answer = attrs.scores[:, rows, task.answer_pos.to(attrs.scores.device)].cpu()  # (component, batch)
        dla = Result(
            at_answer, ("component", "batch"), attrs.labels, metric="logit_diff", kind="direct logit attribution"
        )
        lens = ik.cache.run(model, task.clean[:1]).logit_lens()  # one prompt: (layer, 1, pos, d_vocab) is big
    sections += [
        (
            "IOI: direct logit attribution",
            [
                "Each component's output pushed through the final norm (at this run's scale) and the unembedding, "
                "projected on logit(right) - logit(wrong), at the answer position; the components sum to the "
                f"model's logit difference (here {float(at_answer.sum(0).mean()):+.3f}). Whiskers: standard error over prompts.",
                plots.dla_bars(dla, top=20),
                plots.head_grid(dla),
            ],
        ),
        (
            "IOI: logit lens on the first prompt",
            plots.logit_lens_table(
                lens, decode=model.to_str_tokens, tokens=model.to_str_tokens(task.clean[0]), answer=int(task.answer[0])
            ),
        ),
    ]
    summary["dla_all"] = list(zip(dla.labels["component"], at_answer.mean(1).tolist(), strict=True))
    summary["dla_top"] = sorted(summary["dla_all"], key=lambda item: -abs(item[1]))[:8]  # mean over prompts
    summary["task_hash"] = task.hash()
    return sections, summary


def circuit_part(model: ik.Model, cfg: DemoConfig, timings: dict) -> tuple[list, dict]:
    """An IOI circuit: EAP-IG scores of every edge, the faithfulness curve, the smallest top-k circuit reaching 0.8."""
    from interpkit import circuits

    task = ik.tasks.load("ioi", model, n=cfg.n, seed=cfg.seed, templates=[0])
    with timed("IOI circuit: EAP-IG edge scores and faithfulness curve", timings):
        scores = ik.attribute(model, task, method="eap-ig", level="edge", ig_steps=cfg.ig_steps, direction="noise")
        n_all = len(scores.labels["edge"])
        # with the empty and the full graph (free: they are the normalisation's runs) the curve spans 0..1
        sizes = sorted({0, n_all, *(max(1, round(n_all * float(f))) for f in cfg.circuit_fractions.split(","))})
        curve = circuits.faithfulness_curve(model, task, scores, sizes, ablation="mean", seed=cfg.seed)
        values = curve.scores.tolist()
        tried = [(s, v) for s, v in zip(sizes, values, strict=True) if 0 < s < n_all]
        reached = [s for s, v in tried if v >= cfg.faithfulness_target]
        # the smallest size reaching the target, else the most faithful size tried (said so in the report)
        k = reached[0] if reached else max(tried, key=lambda sv: (sv[1], -sv[0]))[0]
        circ = circuits.discover_circuit(model, task, scores=scores, n_edges=k)
        rep = ik.faithfulness(model, task, circ, ablation="mean", seed=cfg.seed)
    faith, (lo, hi) = float(rep.scores[0]), rep.meta["ci95"][0]
    heads = [node for node in circ.nodes if re.fullmatch(r"L\d+H\d+", node)]  # graph order
    print(f"  circuit: {len(circ)} of {n_all} edges, faithfulness {faith:.3f} [{lo:.3f}, {hi:.3f}]")
    sections = [
        (
            "IOI: a circuit (EAP-IG, mean ablation)",
            [
                f"Every edge of the model's graph ({n_all} edges: embeddings, heads with separate q/k/v inputs, MLPs, "
                f"logits) scored by EAP-IG ({cfg.ig_steps} steps) on the same {len(task)} prompts. The curve shows the "
                "normalised faithfulness of the top-k edges (pruned to edges on a path from the embeddings to the "
                "logits), with every other edge mean-ablated: 1 is the full model, 0 the model with every edge "
                "ablated. "
                + (
                    f"The circuit below is the smallest size tried reaching {cfg.faithfulness_target}: "
                    if reached
                    else f"No size tried reached {cfg.faithfulness_target}; the circuit below is the most faithful one: "
                )
                + f"{len(circ)} edges, {len(heads)} heads, faithfulness {faith:.3f} (95% bootstrap interval "
                f"{lo:.3f} to {hi:.3f}). With {len(task)} prompts of one template this is a demonstration, not a "
                "finding: experiments/ioi_circuit.py runs the full study.",
                circuits.curve_figure(curve),
                circ.figure(),
            ],
        )
    ]
    summary = {
        "n_edges_graph": n_all,
        "curve": dict(zip([str(s) for s in sizes], [round(v, 4) for v in values], strict=True)),
        "cpr": curve.meta["cpr"],
        "target_reached": bool(reached),
        "circuit_top_k": k,  # the curve's size; pruning can leave fewer edges
        "circuit_edges": len(circ),
        "circuit_heads": heads,
        "faithfulness": faith,
        "faithfulness_ci95": [lo, hi],
    }
    return sections, summary


PROBE_DATA = Path(__file__).resolve().parent / "data" / "subject_number.jsonl"


def probe_part(model: ik.Model, cfg: DemoConfig, timings: dict) -> tuple[list, dict]:
    """Linear probes for the subject's grammatical number at the last token, every layer, with a shuffled baseline."""
    from interpkit import probing

    rows = [json.loads(line) for line in PROBE_DATA.read_text().splitlines() if line.strip()]
    with timed(f"probing {len(rows)} prompts on every layer", timings):
        ds = probing.collect(
            model,
            [probing.strip_marks(r["text"])[0] for r in rows],
            [r["label"] for r in rows],
            classes=["singular", "plural"],
            seed=cfg.seed,
        )
        res = probing.probe(ds)
        shuffled = probing.shuffled_labels(ds, n_shuffles=2)
    accuracy = res.scores[:, res.labels["metric"].index("accuracy"), 0]
    best = int(accuracy.argmax())
    sections = [
        (
            "Probing: where is the subject's number?",
            [
                f"{len(rows)} prompts like {probing.strip_marks(rows[0]['text'])[0]!r}; label: is the subject singular "
                "or plural (the last noun is an attractor of either number, so the last word alone does not tell). "
                "A logistic probe per layer on the last token's residual stream (all layers fitted as one batch, L2 "
                "strength chosen on a validation split), test accuracy with its 95% band, against probes fitted "
                "on shuffled labels.",
                probing.accuracy_by_layer(res, shuffled=shuffled),
            ],
        )
    ]
    summary = {
        "n": len(rows),
        "accuracy_by_site": dict(zip(res.labels["site"], [round(float(a), 4) for a in accuracy], strict=True)),
        "best_site": res.labels["site"][best],
        "best_accuracy": float(accuracy[best]),
    }
    print(f"  best probe: {summary['best_site']} accuracy {summary['best_accuracy']:.3f}")
    return sections, summary


def choose_threads(requested: int) -> int:
    """``requested``, or for 0: every core when the machine is idle, one when it is busy.

    On a CPU shared with other jobs, torch's threads spin waiting for each other; one thread
    was several times faster than two on a loaded 2-core machine.
    """
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] > 0.5 * cores if hasattr(os, "getloadavg") else False
    return 1 if busy else cores


def main(cfg: DemoConfig) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(choose_threads(cfg.threads))
    try:
        return run(cfg)
    finally:
        torch.set_num_threads(before)  # called from other code (the tests), leave torch as it was


def run(cfg: DemoConfig) -> dict:
    print(f"torch threads: {torch.get_num_threads()}")
    command = command_line("demo.main()")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with timed("load model", timings):
        model = ik.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    print(f"  {model}")
    sections: list = []
    report: dict = {"model": model.spec, "tasks": {}}
    if model.tokenizer is not None:
        prompt = "The capital of France is"
        text = model.generate(prompt, max_new_tokens=8)
        print(f"  greedy: {text!r}")
        sections.append(
            ("The model", {"model": model.name, "greedy continuation": text, **dataclasses.asdict(model.cfg)})
        )
    ind_sections, report["tasks"]["induction"] = induction_part(model, cfg, timings)
    sections += ind_sections
    if model.tokenizer is not None:
        ioi_sections, report["tasks"]["ioi"] = ioi_part(model, cfg, timings)
        sections += ioi_sections
        if cfg.circuit:
            circuit_sections, report["tasks"]["ioi_circuit"] = circuit_part(model, cfg, timings)
            sections += circuit_sections
        if cfg.probe:
            probe_sections, report["tasks"]["probe"] = probe_part(model, cfg, timings)
            sections += probe_sections
    else:
        sections.append(("IOI", f"skipped: {model.spec} has no tokenizer, and the IOI task is built from text"))
    report["seconds"] = timings | {"total": round(time.perf_counter() - start, 1)}
    report["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    report["spec"] = make_provenance(model, seed=cfg.seed, config=config_dict(cfg), command=command)
    out = Path(cfg.out)
    write_text_atomic(out / "result.json", json_text(report) + "\n")
    sections.append(("Timings (seconds)", report["seconds"]))
    path = write_report(
        out / "report.html",
        f"interpkit demo: {model.name}",
        sections,
        report["spec"],
        command,
        intro="Induction heads and indirect object identification, measured with interpkit. Hover over any "
        "cell for its exact value; patching results also show the normalised value (clean 1, corrupt 0).",
    )
    print(
        f"total {report['seconds']['total']} s, peak RAM {report['peak_rss_gb']} GB; wrote {out / 'result.json'} and {path}"
    )
    return report


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    return config_from_args(DemoConfig, argv, __doc__)


if __name__ == "__main__":
    main(parse_args())
