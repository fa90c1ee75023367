"""Benchmark: training sparse dictionaries, against sparsify's trainer, and memory as the store grows.

Usage:
    python benchmarks/bench_dictionaries.py                      # both parts, one thread
    python benchmarks/bench_dictionaries.py --only speed --steps 100 --store runs/acts/l12-train
    python benchmarks/bench_dictionaries.py --only rss

1. speed: ``ik.dictionaries.train`` and sparsify's ``Trainer`` (``eai-sparsify``, its default
   optimiser: sign-SGD under schedule-free, Adam for ``--sparsify-optimizer adam``) on the same
   activations, the same batches of ``--batch-size`` tokens, ``--n-latents`` latents and ``--k``,
   for ``--steps`` steps each, one after the other in this process, on ``--threads`` threads:
   training tokens per second (target: interpkit >= 1x sparsify) and the fraction of variance
   unexplained of both dictionaries on the same held-out tokens (target: interpkit's <= sparsify's).
   The activations are the first tokens of ``--store``'s ``--site`` (position 0 and
   attention-sink tokens left out, as both trainers then see the same rows), or, without a store,
   synthetic sparse features in superposition. sparsify's trainer reads a Hugging Face model's
   hidden states: it gets a one-layer model whose layer looks the activations up by token index.
2. rss: peak RSS of a training run streaming from a store of N and of 10 N tokens (harvested
   from the toy model in another subprocess), each in a fresh subprocess, for the same number
   of steps (one pass over the larger store, ten over the smaller) (target: < 10% growth).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import interpkit as ik


def activations(store: str | None, site: str, n: int) -> torch.Tensor:
    """``n`` tokens of real activations (no position 0, no attention sinks), or synthetic ones."""
    if store and Path(store).is_dir():
        st = ik.cache.ActivationStore(store)
        x, pos = st.get(site, slice(0, int(n * 1.1))).float(), st.get("position", slice(0, int(n * 1.1)))
        x = x[pos > 0]
        x = x[x.norm(dim=-1) <= 10 * x.norm(dim=-1).median()]
        return x[:n]
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(4096, 576, generator=g), dim=-1)
    on = torch.rand(n, 4096, generator=g) < 8 / 4096
    return (on * torch.rand(n, 4096, generator=g)) @ feats + 0.05 * torch.randn(n, 576, generator=g)


def fvu(d_fn, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((d_fn(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def run_sparsify(train_x: torch.Tensor, args: argparse.Namespace, tmp: str) -> tuple[float, object]:
    from datasets import Dataset
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

    with contextlib.redirect_stdout(io.StringIO()):
        from sparsify import SparseCoderConfig, TrainConfig, Trainer

    class Lookup(nn.Module):
        def __init__(self, acts: torch.Tensor) -> None:
            super().__init__()
            self.acts = nn.Embedding.from_pretrained(acts, freeze=True)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.acts(ids)

    class Acts(PreTrainedModel):
        config_class = PretrainedConfig
        base_model_prefix = ""

        def __init__(self, config: PretrainedConfig, acts: torch.Tensor) -> None:
            super().__init__(config)
            self.layers = nn.ModuleList([Lookup(acts)])

        def forward(self, input_ids: torch.Tensor, **_: object) -> torch.Tensor:
            return self.layers[0](input_ids)

    seq = 128
    n_seq = train_x.shape[0] // seq
    model = Acts(PretrainedConfig(num_hidden_layers=1), train_x)
    data = Dataset.from_dict({"input_ids": torch.arange(n_seq * seq).reshape(n_seq, seq).tolist()}).with_format("torch")
    cfg = TrainConfig(
        SparseCoderConfig(num_latents=args.n_latents, k=args.k),
        batch_size=args.batch_size // seq,
        optimizer=args.sparsify_optimizer,
        log_to_wandb=False,
        save_every=10**9,
        save_dir=tmp,
        layers=[0],
    )
    data = data.select(range(args.steps * (args.batch_size // seq)))
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = Trainer(cfg, data, model)
        start = time.perf_counter()
        trainer.fit()
    seconds = time.perf_counter() - start
    sae = next(iter(trainer.saes.values()))
    for opt in trainer.optimizers:  # schedule-free keeps its evaluation weights apart
        if hasattr(opt, "eval"):
            opt.eval()
    return seconds, sae


def bench_speed(args: argparse.Namespace) -> dict:
    n_train = args.steps * args.batch_size
    x = activations(args.store, args.site, n_train + args.heldout)
    train_x, held = x[:n_train], x[n_train:]
    start = time.perf_counter()
    ours = ik.dictionaries.train(
        train_x, n_latents=args.n_latents, k=args.k, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, progress=False, exclude_first=False, max_norm_ratio=None,
    )  # fmt: skip
    ours_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        theirs_s, sae = run_sparsify(train_x, args, tmp)
    out = {
        "tokens": n_train,
        "data": f"{args.store}:{args.site}" if args.store and Path(args.store).is_dir() else "synthetic",
        "interpkit_tok_s": round(n_train / ours_s),
        "sparsify_tok_s": round(n_train / theirs_s),
        "speedup": round(theirs_s / ours_s, 2),
        "interpkit_heldout_fvu": round(fvu(ours, held), 4),
        "sparsify_heldout_fvu": round(fvu(lambda v: sae(v).sae_out, held), 4),
        "sparsify_optimizer": args.sparsify_optimizer,
    }
    return out


def harvest_child(n_tokens: int, folder: str) -> None:
    model = ik.load_model("toy-induction")
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(1, 128, (64,), generator=g).tolist() for _ in range(n_tokens // 64)]
    ik.cache.harvest(model, data, ["L1.resid_pre"], folder, progress=False)


def train_child(folder: str) -> None:
    store = ik.cache.ActivationStore(folder)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    steps = int(os.environ["BENCH_STEPS"])
    ik.dictionaries.train(  # buffers of 16k tokens, so that both stores hold several
        store, site="L1.resid_pre", n_latents=1024, k=16, batch_size=1024, steps=steps, buffer_tokens=1 << 14,
        progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(json.dumps({
        "tokens": len(store),
        "store_mb": round(sum(s["bytes"] for s in store.manifest["shards"]) / 2**20),
        "peak_before_train_mb": round(before),
        "process_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "train_s": round(seconds, 1),
    }))  # fmt: skip


def bench_rss(args: argparse.Namespace) -> dict:
    """Harvest in one subprocess, then train (one pass) in a fresh one: its peak RSS is the training's."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 10):
            folder = str(Path(tmp) / f"x{scale}")
            base = [sys.executable, __file__, "--threads", str(args.threads), "--rss-store", folder]
            subprocess.run([*base, "--rss-child", str(args.rss_tokens * scale)], check=True, capture_output=True)
            env = {**os.environ, "BENCH_STEPS": str(args.rss_tokens * 10 // 1024)}  # one pass over the larger store
            done = subprocess.run([*base, "--rss-child", "0"], capture_output=True, text=True, check=True, env=env)
            out[f"{scale}x"] = json.loads(done.stdout.strip().splitlines()[-1])
    out["growth"] = round(out["10x"]["process_peak_mb"] / out["1x"]["process_peak_mb"] - 1, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["speed", "rss"], default=None)
    parser.add_argument(
        "--store", default="runs/acts/l12-train", help="activation store (default: synthetic if absent)"
    )
    parser.add_argument("--site", default="L12.resid_post")
    parser.add_argument("--n-latents", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--heldout", type=int, default=16384)
    parser.add_argument("--sparsify-optimizer", default="signum", choices=["signum", "adam"])
    parser.add_argument("--rss-tokens", type=int, default=50_000)
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-store", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child is not None:  # a subprocess of bench_rss: harvest N tokens, or (0) train on the store
        harvest_child(args.rss_child, args.rss_store) if args.rss_child else train_child(args.rss_store)
        return
    print(f"threads: {torch.get_num_threads()}", flush=True)
    results = {}
    if args.only in (None, "speed"):
        results["speed"] = bench_speed(args)
        print("speed:", json.dumps(results["speed"]), flush=True)
    if args.only in (None, "rss"):
        results["rss"] = bench_rss(args)
        print("rss:", json.dumps(results["rss"]), flush=True)


if __name__ == "__main__":
    main()
