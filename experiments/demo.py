"""The main job: load the embedded model and show what interpkit measures on it.

Usage:
    python experiments/demo.py [--model smollm2-135m] [--n 16] [--seed 0] [--device cpu]

Loads the embedded SmolLM2-135M (no download), prints a greedy continuation, and the metric
(logit difference, answer vs wrong token) on the clean and corrupt runs of the IOI and
induction tasks. Writes runs/demo/result.json with the numbers and their provenance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

import interpkit as ik
from interpkit.results import make_provenance, write_text_atomic


@dataclasses.dataclass
class DemoConfig:
    model: str = "smollm2-135m"
    n: int = 16
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    out: str = "runs/demo"


def main(cfg: DemoConfig) -> dict:
    start = time.perf_counter()
    model = ik.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    load_s = time.perf_counter() - start
    print(f"loaded {model} in {load_s:.1f} s")
    if model.tokenizer is not None:
        prompt = "The capital of France is"
        print(f"greedy: {model.generate(prompt, max_new_tokens=8)!r}")

    report: dict = {"load_seconds": round(load_s, 2), "tasks": {}}
    task_names = ["ioi", "induction"] if model.tokenizer is not None else ["induction"]
    for name in task_names:
        task = ik.tasks.load(name, model, n=cfg.n, seed=cfg.seed)
        values = ik.metrics.clean_and_corrupt(model, task)
        print(
            f"{name:<10} n={len(task):<3} {values['metric']}: clean {values['clean']:+.3f}   corrupt {values['corrupt']:+.3f}"
        )
        report["tasks"][name] = {
            "metric": values["metric"],
            "clean": values["clean"],
            "corrupt": values["corrupt"],
            "task_hash": task.hash(),
        }
    report["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    report["spec"] = make_provenance(model, seed=cfg.seed, config=dataclasses.asdict(cfg))
    path = write_text_atomic(Path(cfg.out) / "result.json", json.dumps(report, indent=2) + "\n")
    print(f"peak RAM {report['peak_rss_gb']} GB; wrote {path}")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(DemoConfig):
        parser.add_argument(f"--{field.name}", type=int if field.type == "int" else str, default=field.default)
    main(DemoConfig(**vars(parser.parse_args())))
