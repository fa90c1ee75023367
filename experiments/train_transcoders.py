"""Per-layer transcoders for every MLP of the embedded model, for attribution graphs (a long run, not CI).

Usage:
    .venv/bin/python experiments/train_transcoders.py                              # all 30 layers, 1M tokens each
    .venv/bin/python experiments/train_transcoders.py --layers 0,1 --tokens 100000 --out runs/transcoders_try
    .venv/bin/python experiments/train_transcoders.py --layers 10-19 --group 5     # a slice, 5 layers per harvest

Rerun the same command after an interruption: finished layers are skipped, a harvest or a
training that was cut resumes from its last shard or checkpoint. Read the result with
``ik.dictionaries.load_transcoders("runs/transcoders")`` -> ``{layer: Dictionary}``.

For each group of ``--group`` consecutive layers: one harvest (``ik.cache.harvest``) of every
layer's MLP input after its norm (``blocks.{l}.mlp.hook_in``) and output (``L{l}.mlp`` =
``blocks.{l}.hook_mlp_out``) over ``--tokens`` tokens of the offline corpus (float16, 2.3 KB per
token per layer: 1M tokens x 5 layers = 11.5 GB), then one skip-transcoder per layer
(``ik.dictionaries.train``: TopK, ``--n_latents`` latents, ``--k`` active, one pass, batch
``--batch_size``), saved to ``<out>/layer_{l}/`` (interpkit layout); the group's store is deleted
once its layers are done (``--keep_stores`` keeps it). Larger groups share the forward pass
(a harvest runs the model up to the group's last layer) at the cost of disk.
``<out>/manifest.json`` records each layer's time and final training FVU.

Measured: see the README section "Sparse dictionaries" (time per layer on the 2-core CPU).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

import interpkit as ik
from interpkit.results import json_text, write_text_atomic
from interpkit.scripting import config_from_args


@dataclasses.dataclass
class Config:
    model: str = "smollm2-135m"
    layers: str = "all"  # "all", "0,1,2" or "10-19"
    group: int = 3
    tokens: int = 1_000_000
    corpus: str = "runs/corpus"
    sdist: str | None = None
    stdlib: bool = True  # add Python's standard library source to the corpus
    kind: str = "skip_transcoder"
    n_latents: int = 4608
    k: int = 32
    batch_size: int = 1024
    lr: float = 2e-3
    seed: int = 0
    threads: int = 1
    keep_stores: bool = False
    acts: str = "runs/acts/transcoders"
    out: str = "runs/transcoders"


def layer_list(text: str, n_layers: int) -> list[int]:
    if text == "all":
        return list(range(n_layers))
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    bad = [layer for layer in out if not 0 <= layer < n_layers]
    if bad:
        raise ik.InterpkitError(f"layers {bad} are out of range: the model has {n_layers} (0..{n_layers - 1})")
    return out


def done(out: Path, layer: int) -> bool:
    return (out / f"layer_{layer}" / "dictionary.safetensors").is_file()


def train_group(model: ik.Model, cfg: Config, data: str, group: list[int], manifest: dict[str, Any]) -> None:
    out = Path(cfg.out)
    todo = [layer for layer in group if not done(out, layer)]
    if not todo:
        return
    sites = [s for layer in todo for s in (f"blocks.{layer}.mlp.hook_in", f"L{layer}.mlp")]
    acts = Path(cfg.acts) / f"layers-{todo[0]}-{todo[-1]}"
    t = time.time()
    store = ik.cache.harvest(model, data, sites, acts, max_tokens=cfg.tokens, progress=False)
    harvest_s = time.time() - t
    for layer in todo:
        t = time.time()
        d = ik.dictionaries.train(
            store,
            cfg.kind,
            n_latents=cfg.n_latents,
            k=cfg.k,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=cfg.seed,
            out=out / f"layer_{layer}",
            input_site=f"blocks.{layer}.mlp.hook_in",
            output_site=f"L{layer}.mlp",
            progress=False,
        )
        manifest["layers"][str(layer)] = {
            "train_s": round(time.time() - t, 1),
            "harvest_s (group)": round(harvest_s, 1),
            "group": todo,
            "final": d.meta.get("final"),
            "tokens": len(store),
        }
        write_text_atomic(out / "manifest.json", json_text(manifest))
        print(f"layer {layer}: fvu {d.meta['final']['fvu']:.4f}, dead {d.meta['final']['dead']:.4f}", flush=True)
    if not cfg.keep_stores:
        shutil.rmtree(acts)


def main(cfg: Config, model: ik.Model | None = None) -> dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    corpus = ik.dictionaries.build_corpus(cfg.corpus, sdist=cfg.sdist, stdlib=cfg.stdlib, seed=cfg.seed)
    model = model or ik.load_model(cfg.model)
    layers = layer_list(cfg.layers, model.cfg.n_layers)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {"config": dataclasses.asdict(cfg), "layers": {}}
    for start in range(0, len(layers), cfg.group):
        train_group(model, cfg, corpus["files"]["train"], layers[start : start + cfg.group], manifest)
    found = ik.dictionaries.load_transcoders(out)
    print(f"{len(found)} transcoders in {out}: layers {sorted(found)}")
    return manifest


def parse(argv: list[str] | None = None) -> Config:
    return config_from_args(Config, argv, __doc__)


if __name__ == "__main__":
    main(parse())
