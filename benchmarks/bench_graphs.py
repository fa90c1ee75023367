"""Benchmark: attribution-graph build time and peak memory against prompt length and feature count,
and the method's FLOPs against circuit-tracer's published algorithm.

Usage:
    python benchmarks/bench_graphs.py [--threads 1] [--model smollm2-135m] [--quick]
    python benchmarks/bench_graphs.py --flops-only          # the FLOP table alone (no model run)

Each measurement runs in a fresh process (so its peak RSS is its own): load the model, build one
graph with ``verify=0``, report the build time, the process's peak RSS and the RSS right after
loading (the model's share). Rows:

1. neuron graphs (every MLP neuron at every position is a candidate) of prompts of 8, 16, 32 and
   64 tokens, 256 feature rows;
2. neuron graphs of a 16-token prompt with 128, 512 and 2048 feature rows;
3. transcoder graphs of a 16-token prompt, 1024 feature rows, over random TopK transcoders (4608
   latents, k = 64 per position: the sparsity of a trained one, untrained weights) on every layer.

FLOPs per row (one target), counted from the shapes: interpkit's closed-form backward (the
attention value/output path of every layer, then each layer's decoder rows: every unit at every
position where most are active, as with neurons, else only the active (position, unit) pairs)
against circuit-tracer's algorithm (``attribution.py``: a forward pass of the whole model over a
batch that replicates the prompt once per row, autograd's backward through the same linear paths,
and a contraction with the active features' decoder rows). circuit-tracer cannot be installed
beside TransformerLens 4, so this is a count, not a race.

Prints one JSON row per measurement. ``--quick``: lengths 8 and 16 only, one feature count.

Measured 2026-12-03, SmolLM2-135M, 1 thread on the shared 2-core machine (load average 8):
neurons, 256 rows: 8 / 16 / 32 / 64 tokens in 22 / 40 / 71 / 137 s, peak RSS 2.15 / 2.55 / 2.45 /
2.94 GB (1.28 GB after loading the model); 16 tokens with 128 / 512 / 2048 rows: 29 / 77 / 239 s,
2.37 / 2.60 / 2.77 GB; random TopK transcoders (4608 latents, k 64, every layer), 16 tokens, 1024
rows: 13 s, 2.56 GB. FLOPs per row, 16 tokens: 1.28 GFLOP (neurons) and 0.47 (transcoders) against
4.70 and 3.89 for circuit-tracer's algorithm (3.7x and 8.3x; the ratio holds from 8 to 64 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

TEXT = (
    "The history of the city begins with a small settlement on the river, where traders met to exchange "
    "grain, salt and cloth. Over the centuries the town grew into a centre of learning, with a university, "
    "a cathedral and a busy market that drew merchants from distant countries and"
)


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def one_run(args: argparse.Namespace) -> None:
    """Child process: build one graph and print its measurements."""
    import resource

    import torch

    import interpkit as ik

    torch.set_num_threads(args.threads)
    model = ik.load_model(args.model)
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    ids = model.to_tokens(TEXT)[0, : args.length]
    features = "neurons" if args.features == "neurons" else topk_transcoders(model, args.latents, args.k)
    start = time.perf_counter()
    graph = ik.graphs.attribute(model, ids, features, max_feature_nodes=args.rows, verify=0)
    seconds = time.perf_counter() - start
    emit(
        features=args.features,
        length=args.length,
        feature_rows=args.rows,
        active_features=graph.meta["n_active_features"],
        nodes=len(graph),
        edges=graph.n_edges,
        seconds=round(seconds, 2),
        batch_rows=graph.meta["batch_rows"],
        exact_rows=graph.meta["exact_rows"],
        peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        rss_after_load_gb=round(loaded_rss, 3),
        replacement=round(graph.scores["replacement"], 4),
        threads=args.threads,
    )


class TopKTranscoder:
    """A random transcoder with TopK sparsity (``k`` active latents per position)."""

    def __init__(self, d: int, n_latents: int, k: int, seed: int) -> None:
        import torch

        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n_latents, d, generator=g)
        self.W_dec = w / w.norm(dim=1, keepdim=True)
        self.W_enc = self.W_dec.clone()
        self.b_enc = torch.zeros(n_latents)
        self.b_dec = torch.zeros(d)
        self.W_skip = None
        self.k = k

    def encode(self, x):
        import torch

        pre = x @ self.W_enc.T + self.b_enc
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def topk_transcoders(model, n_latents: int, k: int) -> dict:
    return {layer: TopKTranscoder(model.cfg.d_model, n_latents, k, layer) for layer in range(model.cfg.n_layers)}


def flops(cfg: dict, n: int, units: list[int], active: list[int]) -> dict:
    """FLOPs per row: interpkit's backward and contraction vs circuit-tracer's forward + backward +
    contraction. ``units[l]``: distinct active units in layer l; ``active[l]``: active (position, unit) pairs."""
    d, heads, kv, dh, d_mlp, vocab = (
        cfg["d_model"],
        cfg["n_heads"],
        cfg["n_kv"],
        cfg["d_head"],
        cfg["d_mlp"],
        cfg["vocab"],
    )
    attn_vo = 2 * n * d * (heads * dh + kv * dh) + 2 * heads * n * n * dh  # W_O^T, pattern^T, W_V^T
    # each layer's contraction: all units at every position (dense) or only the active pairs (sparse)
    ours = sum(
        attn_vo + 2 * d * (n * u if 4 * a >= n * u else a) + 4 * n * d for u, a in zip(units, active, strict=True)
    )
    qkv = 2 * n * d * (heads * dh + 2 * kv * dh) + 2 * n * heads * dh * d
    mlp = 2 * n * d * d_mlp * (3 if cfg["gated"] else 2)
    forward = cfg["n_layers"] * (qkv + 4 * heads * n * n * dh + mlp)
    backward = cfg["n_layers"] * attn_vo
    contraction = sum(2 * a * d for a in active)
    theirs = forward + backward + contraction + 2 * d * vocab // max(1, n)  # the unembedding row, amortised
    return {"ours_gflop_per_row": ours / 1e9, "circuit_tracer_gflop_per_row": theirs / 1e9, "ratio": theirs / ours}


def flop_table(args: argparse.Namespace) -> None:
    smol = {
        "d_model": 576,
        "n_heads": 9,
        "n_kv": 3,
        "d_head": 64,
        "d_mlp": 1536,
        "vocab": 49152,
        "n_layers": 30,
        "gated": True,
    }
    for length in (8, 16, 32, 64):
        neurons = flops(smol, length, [smol["d_mlp"]] * 30, [length * smol["d_mlp"]] * 30)
        emit(flops="neurons", length=length, **{k: round(v, 3) for k, v in neurons.items()})
        units = [min(4608, 64 * length)] * 30  # distinct latents active somewhere in the prompt (at most all)
        tcs = flops(smol, length, units, [64 * length] * 30)
        emit(flops="transcoders (4608 latents, k=64)", length=length, **{k: round(v, 3) for k, v in tcs.items()})


def spawn(args: argparse.Namespace, **over) -> None:
    cmd = [sys.executable, __file__, "--child", "--threads", str(args.threads), "--model", args.model]
    for key, value in over.items():
        cmd += [f"--{key}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        emit(error=proc.stderr[-1500:], **over)
        return
    print(proc.stdout.strip().splitlines()[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--flops-only", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--features", default="neurons")
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--latents", type=int, default=4608)
    parser.add_argument("--k", type=int, default=64)
    args = parser.parse_args()
    if args.child:
        one_run(args)
        return
    emit(load_average=os.getloadavg(), threads=args.threads, model=args.model)
    flop_table(args)
    if args.flops_only:
        return
    lengths = (8, 16) if args.quick else (8, 16, 32, 64)
    for length in lengths:
        spawn(args, features="neurons", length=length, rows=256)
    for rows in (128,) if args.quick else (128, 512, 2048):
        spawn(args, features="neurons", length=16, rows=rows)
    spawn(args, features="topk", length=16, rows=1024)


if __name__ == "__main__":
    main()
