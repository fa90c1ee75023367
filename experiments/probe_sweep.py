"""Probe sweep: where the model represents the subject's grammatical number, and whether it uses it.

Usage:
    .venv/bin/python experiments/probe_sweep.py                                # embedded model (2 min on this 2-core CPU, 6 shared)
    .venv/bin/python experiments/probe_sweep.py --das_steps 40 --out runs/probe_quick
    .venv/bin/python experiments/probe_sweep.py --model path/to/hf_dir --device cuda --dtype bfloat16

Data: ``experiments/data/subject_number.jsonl``, 240 curated prompts "The [[keys]] near the old
cabinet" (30 nouns, singular and plural, each with singular and plural attractor nouns, so the
last word says nothing about the subject's number), the label (singular / plural) and the
agreeing verb as the answer (" is" / " are") against the other as the wrong token.

1. Behaviour: the logit difference answer - wrong at the last token (the model's task metric).
2. Probes on every layer's residual stream at two positions: the last token (``--positions``;
   where the verb is predicted, so number must arrive there) and the subject noun (``marked``;
   number is a property of the word itself there). Logistic regression (every layer in one
   batched fit, L2 chosen on validation) and the mass-mean (difference-of-means) probe; test
   accuracy, balanced accuracy and AUC with standard errors.
3. Controls: shuffled labels (``--n_shuffles``); Hewitt and Liang control tasks and selectivity,
   keyed by the token at the probed position and, at the last token, by the subject noun (number
   is a function of the noun, so this control asks whether the last token holds number rather than
   just the noun's identity); the same probes on a randomly initialised copy of the model;
   accuracy against the number of training examples.
4. Causal checks at ``--causal_layers``, at both positions: remove the probe direction
   (projection) and the INLP subspace and measure the refitted probe and the task metric (a
   random subspace as control); steer along the mass-mean direction at ``--das_layer`` with a
   scale sweep; a 1-D DAS there, with interchange intervention accuracy and the
   subspace-illusion check (Makelov et al. 2023), at the noun's residual stream, the last
   token's, and the noun's MLP hidden units.

Writes ``runs/probe_sweep/`` (or ``--out``): ``result.json`` (the summary and provenance),
one ``<name>.json`` per Result, and ``report.html``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

import interpkit as ik
from interpkit import probing as P
from interpkit.plots.report import write_report
from interpkit.results import json_text, make_provenance, write_text_atomic
from interpkit.scripting import command_line, config_from_args

DATA = Path(__file__).resolve().parent / "data" / "subject_number.jsonl"


@dataclasses.dataclass
class Config:
    model: str = "smollm2-135m"
    data: str = str(DATA)
    positions: str = "last"  # where the main probes read: last token (predicts the verb)
    method: str = "logistic"
    n_shuffles: int = 5
    causal_layers: str = "auto"  # comma-separated layers, or auto: five spread over the depth
    das_layer: int = -1  # -1: the first causal layer (steering and DAS site)
    das_steps: int = 40
    inlp_iter: int = 6
    seed: int = 0
    threads: int = 0  # 0: leave torch's default
    device: str | None = None
    dtype: str | None = None
    out: str = "runs/probe_sweep"


def read_data(path: str) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise ik.InterpkitError(f"{path} holds no examples")
    return rows


def causal_layers(cfg: Config, n_layers: int) -> list[int]:
    if cfg.causal_layers != "auto":
        return [int(x) for x in cfg.causal_layers.split(",")]
    return sorted({round(f * (n_layers - 1)) for f in (0.15, 0.35, 0.5, 0.65, 0.85)})


def run(cfg: Config, model: ik.Model | None = None) -> dict:
    """Every step of the study; returns ``{"summary": ..., "results": {name: Result}, "figures": [...]}``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now
        print(f"[{name}] {timings[name]:.1f} s", flush=True)

    model = model or ik.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    tick("load")
    rows = read_data(cfg.data)
    marked = [r["text"] for r in rows]
    labels = [r["label"] for r in rows]
    common = {"answers": [r["answer"] for r in rows], "wrongs": [r["wrong"] for r in rows], "seed": cfg.seed}
    classes = ["singular", "plural"]  # probe directions point towards plural
    inputs = marked if cfg.positions == "marked" else [P.strip_marks(t)[0] for t in marked]
    data = {
        "last": P.collect(model, inputs, labels, positions=cfg.positions, classes=classes, **common),
        "noun": P.collect(model, marked, labels, positions="marked", classes=classes, **common),
    }
    behaviour = behaviour_of(model, data["last"], P.dataset_task(model, data["last"]))
    tick("collect")

    results: dict[str, ik.Result] = {}
    subject = data["noun"].token  # the subject noun of each example (one row per example in both datasets)
    for where, ds in data.items():
        results[f"probe_{where}"] = P.probe(ds, cfg.method)
        results[f"probe_diff_means_{where}"] = P.probe(ds, "diff_means")
        results[f"shuffled_{where}"] = P.shuffled_labels(ds, cfg.method, n_shuffles=cfg.n_shuffles, seed=cfg.seed)
        results[f"control_{where}"] = P.control_task(ds, cfg.method, seed=cfg.seed)
    # Hewitt-Liang control keyed by the subject noun: number is a function of the noun, so this asks
    # whether the last token holds number itself or just which noun the subject was.
    results["control_subject_last"] = P.control_task(data["last"], cfg.method, key=subject, seed=cfg.seed)
    results["learning_curve_last"] = P.learning_curve(data["last"], method=cfg.method, seed=cfg.seed)
    tick("probes and controls")
    fresh = P.random_init_model(model, cfg.seed)
    for where, ds in data.items():
        results[f"random_init_{where}"] = P.probe(P.recollect(ds, fresh), cfg.method)
        results[f"random_init_{where}"].kind = "probe_random_init"
    del fresh
    tick("random-init model")

    layers = causal_layers(cfg, model.cfg.n_layers)
    sites = [f"L{layer}.resid_post" for layer in layers]
    das_layer = cfg.das_layer if cfg.das_layer >= 0 else layers[0]
    das_site = f"L{das_layer}.resid_post"
    results["inlp_last"] = P.inlp(data["last"], n_iter=cfg.inlp_iter, sites=sites)
    for where, ds in data.items():
        probes = P.Probes.from_result(results[f"probe_{where}"])
        mass_mean = P.Probes.from_result(results[f"probe_diff_means_{where}"])
        results[f"remove_projection_{where}"] = P.remove(model, ds, probes, sites=sites, seed=cfg.seed)
        results[f"remove_inlp_{where}"] = P.remove(model, ds, probes, sites=sites, method="inlp", n_iter=cfg.inlp_iter)
        results[f"steering_{where}"] = P.steer(model, ds, mass_mean, das_site, scales=(-8, -4, -2, -1, 0, 1, 2, 4, 8))
    tick("removal and steering")
    noun_probes = P.Probes.from_result(results["probe_diff_means_noun"])
    results["das_noun"] = P.das(model, data["noun"], das_site, probes=noun_probes, steps=cfg.das_steps, seed=cfg.seed)
    results["das_last"] = P.das(model, data["last"], das_site, steps=cfg.das_steps, seed=cfg.seed)
    if not model.cfg.attn_only:
        mlp = f"blocks.{das_layer}.mlp.hook_post"
        results["das_mlp_noun"] = P.das(model, data["noun"], mlp, steps=cfg.das_steps, seed=cfg.seed)
    tick("DAS")
    results["pca_last"] = P.pca(data["last"], sites[len(sites) // 2])
    results["pca_noun"] = P.pca(data["noun"], das_site)
    summary = summarise(results, behaviour, data, das_site)
    summary["timings_s"] = timings
    return {"summary": summary, "results": results, "figures": figures(results), "model": model}


def figures(results: dict) -> list:
    r = results
    out = [
        (
            "Probe accuracy by layer at the last token, with baselines",
            P.accuracy_by_layer(r["probe_last"], r["shuffled_last"], r["control_subject_last"], r["random_init_last"]),
        ),
        (
            "Probe accuracy by layer at the subject noun, with baselines",
            P.accuracy_by_layer(
                r["probe_noun"],
                r["shuffled_noun"],
                r["control_noun"],
                r["random_init_noun"],
                title="At the subject noun",
            ),
        ),
        (
            "Selectivity at the last token (control task keyed by the subject noun)",
            P.selectivity_figure(r["control_subject_last"]),
        ),
        (
            "Selectivity at the last token (control task keyed by the last token)",
            P.selectivity_figure(r["control_last"]),
        ),
        ("Selectivity at the subject noun", P.selectivity_figure(r["control_noun"])),
        ("PCA at the last token", P.pca_figure(r["pca_last"])),
        ("PCA at the subject noun", P.pca_figure(r["pca_noun"])),
        ("Accuracy against training examples (last token)", P.learning_curve_figure(r["learning_curve_last"])),
        ("INLP at the last token", P.inlp_figure(r["inlp_last"])),
    ]
    for where in ("noun", "last"):
        out.append((f"Removing the probe direction ({where})", P.removal_figure(r[f"remove_projection_{where}"])))
        out.append((f"Removing the INLP subspace ({where})", P.removal_figure(r[f"remove_inlp_{where}"])))
        out.append((f"Steering along the mass-mean direction ({where})", P.steering_figure(r[f"steering_{where}"])))
    for key in ("das_noun", "das_last", "das_mlp_noun"):
        if key in r:
            out.append((f"DAS ({key})", P.das_figure(r[key])))
    return out


def behaviour_of(model: ik.Model, ds: P.ProbeDataset, task: ik.Task) -> dict:
    """The model's logit difference (agreeing verb - the other) per example, one batched pass."""
    from interpkit.runtime import baseline

    values = baseline(model, task, task.metric)["clean"].cpu()
    labels = ds.example_labels()
    return {
        "logit_diff_mean": round(float(values.mean()), 4),
        "agreement_accuracy": round(float((values > 0).float().mean()), 4),
        **{f"logit_diff_{c}": round(float(values[labels == k].mean()), 4) for k, c in enumerate(ds.classes)},
    }


def _col(res: ik.Result, dim: str, name: str) -> list[float]:
    j = res.labels[dim].index(name)
    return [round(float(v), 4) for v in res.scores[:, j, 0]]


def _table(res: ik.Result, dim: str) -> dict:
    return {
        name: dict(zip(res.labels[res.dims[1]], [round(float(v), 4) for v in res.scores[i, :, 0]], strict=True))
        for i, name in enumerate(res.labels[dim])
    }


def summarise(results: dict, behaviour: dict, data: dict, das_site: str) -> dict:
    out: dict = {
        "n_examples": data["last"].n_examples,
        "rows": results["probe_last"].meta["rows"],
        "behaviour": behaviour,
    }
    out["sites"] = list(results["probe_last"].labels["site"])
    for where in ("last", "noun"):
        acc = _col(results[f"probe_{where}"], "metric", "accuracy")
        best = max(range(len(acc)), key=lambda i: acc[i])
        out[where] = {
            "accuracy": acc,
            "accuracy_se": [round(float(v), 4) for v in results[f"probe_{where}"].scores[:, 0, 1]],
            "accuracy_diff_means": _col(results[f"probe_diff_means_{where}"], "metric", "accuracy"),
            "shuffled_mean": _col(results[f"shuffled_{where}"], "metric", "accuracy"),
            "random_init_accuracy": _col(results[f"random_init_{where}"], "metric", "accuracy"),
            "control_accuracy": _col(results[f"control_{where}"], "quantity", "control_accuracy"),
            "selectivity": _col(results[f"control_{where}"], "quantity", "selectivity"),
            "best": {"site": out["sites"][best], "accuracy": acc[best]},
            "removal_projection": _table(results[f"remove_projection_{where}"], "site"),
            "removal_inlp": _table(results[f"remove_inlp_{where}"], "site"),
            "steering": {
                "site": das_site,
                "scales": results[f"steering_{where}"].labels["scale"],
                **{
                    c: [round(float(v), 4) for v in results[f"steering_{where}"].scores[:, k, 0]]
                    for k, c in enumerate(results[f"steering_{where}"].labels["class"])
                },
                "class_gap_sd": round(results[f"steering_{where}"].meta["class_gap_sd"], 3),
            },
        }
    out["last"]["control_subject_accuracy"] = _col(results["control_subject_last"], "quantity", "control_accuracy")
    out["last"]["selectivity_subject"] = _col(results["control_subject_last"], "quantity", "selectivity")
    inlp = results["inlp_last"]
    out["last"]["inlp"] = {
        s: [round(float(v), 4) for v in inlp.scores[i, :, 0]] for i, s in enumerate(inlp.labels["site"])
    }
    out["das"] = {
        key: {**_table(results[key], "direction"), "site": results[key].meta["site"]}
        for key in results
        if key.startswith("das")
    }
    return out


def write_outputs(cfg: Config, out: dict, command: str) -> Path:
    folder = Path(cfg.out)
    model = out["model"]
    spec = make_provenance(model, seed=cfg.seed, config=dataclasses.asdict(cfg), command=command)
    for name, res in out["results"].items():
        res.to_json(folder / f"{name}.json")
    summary = {**out["summary"], "spec": spec}
    path = write_text_atomic(folder / "result.json", json_text(summary) + "\n")
    table = {k: out["summary"][k] for k in ("n_examples", "rows", "behaviour")}
    table.update({f"best site ({w})": out["summary"][w]["best"] for w in ("last", "noun")})
    write_report(folder / "report.html", "Probing subject number", [("Summary", table), *out["figures"]], spec, command)
    return path


def main(cfg: Config) -> dict:
    command = command_line("probe_sweep.main()")
    out = run(cfg)
    path = write_outputs(cfg, out, command)
    print(json.dumps({"behaviour": out["summary"]["behaviour"], "best": out["summary"]["last"]["best"]}, indent=1))
    print(f"wrote {path} and {Path(cfg.out) / 'report.html'}")
    return out["summary"]


def parse(argv: list[str] | None = None) -> Config:
    return config_from_args(Config, argv, __doc__)


if __name__ == "__main__":
    main(parse())
