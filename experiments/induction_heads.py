"""Induction heads: previous-token and induction scores of every head, and what ablating them costs.

Usage:
    .venv/bin/python experiments/induction_heads.py                          # toy-induction (seconds)
    .venv/bin/python experiments/induction_heads.py --model smollm2-135m     # embedded model (16 min, 1 thread of a 2-core CPU)
    .venv/bin/python experiments/induction_heads.py --ablation zero --n 64 --out runs/induction_zero

Olsson et al. 2022, "In-context Learning and Induction Heads": on ``[A][B] ... [A]`` an induction
head at the second ``A`` attends to ``B`` and copies it, helped by a previous-token head in an
earlier layer. On the ``induction`` task (a block of random tokens, then the block again; the
corrupt prompts replace the first block) this script measures

1. each head's previous-token and induction score, read from its attention pattern
   (``interpkit.attribution.head_scores``), and the patterns of the strongest heads;
2. the logit difference when each head alone is ablated (``ik.patch`` with ``ablation=``, one
   batched sweep), and when the heads above ``--threshold`` are ablated together
   (``ik.patching.ablate``): induction heads, previous-token heads, both, and as a control as
   many other heads (those with the lowest scores) as there are induction heads.

Writes runs/induction_heads/ (or --out): result.json and report.html.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

import interpkit as ik
from interpkit import plots
from interpkit.attribution.head_scores import head_patterns, induction_scores, previous_token_scores
from interpkit.patching import ablate
from interpkit.plots.report import write_report
from interpkit.results import Result, json_text, make_provenance, write_text_atomic
from interpkit.scripting import command_line, config_dict, config_from_args


@dataclasses.dataclass
class Config:
    model: str = "toy-induction"
    n: int = 32  # prompts
    length: int = 10  # tokens per random block
    threshold: float = 0.4  # a head "is" an induction / previous-token head above this score
    max_group: int = 12  # at most this many heads ablated together per group
    ablation: str = "mean"  # zero, mean, resample
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    out: str = "runs/induction_heads"


def head_labels(n_layers: int, n_heads: int) -> dict[str, list[str]]:
    return {"layer": [f"L{i}" for i in range(n_layers)], "head": [f"H{h}" for h in range(n_heads)]}


def ranked(scores: torch.Tensor, above: float | None = None, k: int | None = None) -> list[str]:
    """Head labels by decreasing score (optionally only those above a threshold, at most k)."""
    n_heads = scores.shape[1]
    order = torch.argsort(scores.flatten(), descending=True).tolist()
    heads = [(f"L{i // n_heads}H{i % n_heads}", float(scores.flatten()[i])) for i in order]
    if above is not None:
        heads = [(h, s) for h, s in heads if s > above]
    return [h for h, _ in heads[:k]]


def run(cfg: Config) -> dict:
    torch.manual_seed(cfg.seed)
    model = ik.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    print(model)
    task = ik.tasks.load("induction", model, n=cfg.n, length=cfg.length, seed=cfg.seed)
    patterns = head_patterns(model, task.clean)  # (layer, batch, head, q_pos, k_pos)
    prev = previous_token_scores(patterns).cpu()
    ind = induction_scores(patterns, task.clean).cpu()

    # Each head ablated alone: one batched sweep over every head.
    single = ik.patch(model, task, "head_out", ablation=cfg.ablation, seed=cfg.seed)
    clean, corrupt = single.clean_value, single.corrupt_value
    effect = single.scores - clean  # (layer, head): change of the metric when the head is ablated

    induction_heads = ranked(ind, cfg.threshold, cfg.max_group)
    previous_heads = [h for h in ranked(prev, cfg.threshold, cfg.max_group) if h not in induction_heads]
    named = set(induction_heads) | set(previous_heads)
    control = [h for h in reversed(ranked(ind + prev)) if h not in named][: max(1, len(induction_heads))]
    groups = {
        "induction heads": induction_heads,
        "previous-token heads": previous_heads,
        "induction + previous-token heads": induction_heads + previous_heads,
        "control (lowest-scoring heads)": control,
    }
    joint = {}
    for name, heads in groups.items():
        if heads:
            value = float(ablate(model, task, heads, ablation=cfg.ablation, seed=cfg.seed).scores.mean())
            joint[name] = {"heads": heads, "metric": value, "normalised": (value - corrupt) / (clean - corrupt)}
    for name, row in joint.items():
        print(
            f"ablate {name:<34} ({len(row['heads'])} heads): {row['metric']:+.3f}  (normalised {row['normalised']:.2f})"
        )

    per_head = [
        {
            "head": f"L{layer}H{head}",
            "previous_token": round(float(prev[layer, head]), 4),
            "induction": round(float(ind[layer, head]), 4),
            "ablation_effect": round(float(effect[layer, head]), 4),
        }
        for layer in range(model.cfg.n_layers)
        for head in range(model.cfg.n_heads)
    ]
    return {
        "model": model,
        "task": task,
        "patterns": patterns,
        "prev": prev,
        "ind": ind,
        "single": single,
        "effect": effect,
        "joint": joint,
        "summary": {
            "metric": single.metric,
            "clean": clean,
            "corrupt": corrupt,
            "ablation": cfg.ablation,
            "induction_heads": induction_heads,
            "previous_token_heads": previous_heads,
            "joint_ablations": joint,
            "heads": per_head,
        },
    }


def write_outputs(cfg: Config, out: dict, command: str) -> Path:
    model, task = out["model"], out["task"]
    labels = head_labels(model.cfg.n_layers, model.cfg.n_heads)
    summary = out["summary"]

    def grid(scores: torch.Tensor, what: str, **kw) -> Result:
        return Result(scores.float(), ("layer", "head"), labels, metric=what, kind=what, **kw)

    top = ranked(out["ind"], k=4) + [h for h in ranked(out["prev"], k=2) if h not in ranked(out["ind"], k=4)]
    index = [(int(h[1 : h.index("H")]), int(h[h.index("H") + 1 :])) for h in top]
    picker = plots.attention_pattern(
        torch.stack([out["patterns"][lay, 0, head] for lay, head in index]),
        model.to_str_tokens(task.clean[0]),
        head_labels=top,
        scores=[float(out["ind"][lay, head]) for lay, head in index],
        score_name="induction score",
        title="Attention on the first prompt",
    )
    effect = grid(
        out["effect"],
        f"change in {summary['metric']}",
        meta={"direction": f"ablate ({cfg.ablation}) one head in the clean run"},
    )
    joint_rows = [
        {
            "group": name,
            "heads": ", ".join(row["heads"]),
            summary["metric"]: round(row["metric"], 4),
            "normalised (clean 1, corrupt 0)": round(row["normalised"], 3),
        }
        for name, row in out["joint"].items()
    ]
    sections = [
        (
            "Task",
            {
                "prompts": len(task),
                "block length": cfg.length,
                f"{summary['metric']} clean": round(summary["clean"], 4),
                f"{summary['metric']} corrupt (first block replaced)": round(summary["corrupt"], 4),
                "ablation": cfg.ablation,
                "score threshold": cfg.threshold,
            },
        ),
        ("Induction scores", plots.heatmap(grid(out["ind"], "induction score"), signed=False, zmax=1.0)),
        ("Previous-token scores", plots.heatmap(grid(out["prev"], "previous-token score"), signed=False, zmax=1.0)),
        ("Attention patterns of the strongest heads (pick a head)", picker),
        (
            "Ablating one head at a time",
            plots.heatmap(
                effect, title=f"Change in {summary['metric']} when one head is {cfg.ablation}-ablated in the clean run"
            ),
        ),
        ("Ablating groups of heads", joint_rows or "no head scored above the threshold"),
        ("Every head", summary["heads"]),
    ]
    prov = make_provenance(model, task, cfg.seed, config=config_dict(cfg), command=command)
    outdir = Path(cfg.out)
    write_text_atomic(outdir / "result.json", json_text({**summary, "spec": prov}) + "\n")
    return write_report(outdir / "report.html", f"Induction heads in {model.name}", sections, prov, command)


def main(cfg: Config) -> dict:
    command = command_line("induction_heads.main()")
    out = run(cfg)
    path = write_outputs(cfg, out, command)
    print(
        f"induction heads: {out['summary']['induction_heads']}; previous-token heads: {out['summary']['previous_token_heads']}"
    )
    print(f"wrote {Path(cfg.out) / 'result.json'} and {path}")
    return out["summary"]


def parse_args(argv: list[str] | None = None) -> Config:
    return config_from_args(Config, argv, __doc__)


if __name__ == "__main__":
    main(parse_args())
