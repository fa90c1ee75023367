"""Benchmark: activation caching on the embedded model (SmolLM2-135M), same batches throughout.

Usage:
    python benchmarks/bench_cache.py [--threads 1] [--tokens 2048] [--quick] [--only harvest|run|rss]

1. harvest of the residual stream after every layer (30 sites, float16) to disk: tokens/s
   against a plain forward pass (no hooks, ``inference_mode``) over exactly the same batches
   (target: >= 0.7x);
2. peak memory of a harvest over 1x and 10x as many tokens, each in a fresh subprocess:
   the process's peak RSS and the peak RSS during the harvest above the RSS before it
   (target: < 10% growth);
3. ``ik.cache.run`` with a one-site filter against a plain forward of the same batch
   (target: <= 1.1x), for a middle layer (the pass stops early), the last layer (only the
   unembedding is skipped) and the logits (the whole pass runs: the cost of the hooks).

Threads are pinned (``--threads``, default 1: on a shared 2-core machine one thread is
often faster than two) and printed. ``--quick`` skips the 10x memory run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import interpkit as ik
import interpkit.cache as ikc


def texts(n_tokens_wanted: int, model) -> list[str]:
    """English texts from the standard library's docstrings (deterministic, no download)."""
    import collections
    import email
    import functools
    import itertools
    import json as json_module
    import pathlib

    docs = []
    for module in (collections, email, functools, itertools, json_module, pathlib, os, threading, argparse):
        for name in sorted(dir(module)):
            doc = getattr(getattr(module, name), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200:
                docs.append(" ".join(doc.split()))
    out, total, i = [], 0, 0
    while total < n_tokens_wanted:
        text = docs[i % len(docs)][:600]
        i += 1
        out.append(text)
        total += len(model.tokenizer.encode(text, add_special_tokens=False))
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples the resident set size every few milliseconds while in the ``with`` block."""

    def __enter__(self):
        self.peak, self.stop = rss_mb(), False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()


def batches(model, data, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The harvest's own batches (same plan), as padded ids and masks."""
    from interpkit.cache import _data

    stream = _data.examples(
        model, data, prepend_bos=None, max_length=model.cfg.n_ctx, too_long="truncate", max_tokens=None
    )
    out = []
    for shard in _data.plan(stream, batch_size=batch_size, batch_tokens=10**9, shard_tokens=1):
        for batch in shard.batches:
            width = max(map(len, batch))
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for i, ex in enumerate(batch):
                ids[i, : len(ex)] = torch.tensor(ex)
                mask[i, : len(ex)] = 1
            out.append((ids, mask))
    return out


def plain_forward(model, prepared) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in prepared:
            model.bridge(ids, attention_mask=mask)
    return time.perf_counter() - start


def bench_harvest(model, data, batch_size: int) -> dict:
    prepared = batches(model, data, batch_size)
    n_tokens = int(sum(int(m.sum()) for _, m in prepared))
    plain_forward(model, prepared[:1])  # warm-up
    plain = []
    harvest = []
    for _ in range(2):  # interleaved, best of two, against drift on a shared machine
        plain.append(plain_forward(model, prepared))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            store = ikc.harvest(
                model, data, ["L*.resid_post"], Path(tmp) / "acts", batch_size=batch_size, progress=False
            )
            harvest.append(time.perf_counter() - start)
            assert len(store) == n_tokens
            size_mb = sum(s["bytes"] for s in store.manifest["shards"]) / 2**20
    row = {
        "tokens": n_tokens,
        "sites": 30,
        "store_mb": round(size_mb, 1),
        "plain_tok_s": round(n_tokens / min(plain)),
        "harvest_tok_s": round(n_tokens / min(harvest)),
    }
    row["ratio"] = round(row["harvest_tok_s"] / row["plain_tok_s"], 3)
    return row


def bench_run(model, data, batch_size: int, repeat: int = 7) -> dict:
    tokens = model.to_tokens(data[:batch_size])[:, :128]
    out = {}
    for site in ("L15.resid_post", "L29.resid_post", "logits"):
        plain, cached = [], []
        with torch.inference_mode():
            model(tokens)
        for _ in range(repeat):
            start = time.perf_counter()
            with torch.inference_mode():
                model(tokens)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            ikc.run(model, tokens, [site])
            cached.append(time.perf_counter() - start)
        out[site] = {
            "batch": list(tokens.shape),
            "plain_ms": round(1000 * statistics.median(plain), 1),
            "run_ms": round(1000 * statistics.median(cached), 1),
            "ratio": round(statistics.median(cached) / statistics.median(plain), 3),
        }
    return out


def rss_child(n_tokens: int, batch_size: int) -> None:
    model = ik.load_model("smollm2-135m")
    data = texts(n_tokens, model)
    ikc.run(model, model.to_tokens(data[:1]), ["L0.resid_post"])  # warm-up allocations
    before = rss_mb()
    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as peak:
        store = ikc.harvest(model, data, ["L*.resid_post"], Path(tmp) / "acts", batch_size=batch_size, progress=False)
    print(
        json.dumps(
            {
                "tokens": len(store),
                "rss_before_mb": round(before),
                "harvest_peak_mb": round(peak.peak),
                "process_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


def bench_rss(n_tokens: int, batch_size: int, threads: int, quick: bool) -> dict:
    rows = {}
    for scale in (1,) if quick else (1, 10):
        command = [sys.executable, __file__, "--rss-child", str(n_tokens * scale), "--threads", str(threads)]
        command += ["--batch-size", str(batch_size)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows[f"{scale}x"] = json.loads(done.stdout.strip().splitlines()[-1])
    if "10x" in rows:
        one, ten = rows["1x"], rows["10x"]
        rows["process_peak_growth"] = round(ten["process_peak_mb"] / one["process_peak_mb"] - 1, 3)
        rows["harvest_peak_growth"] = round(ten["harvest_peak_mb"] / one["harvest_peak_mb"] - 1, 3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=2048, help="tokens of text for the 1x runs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["harvest", "run", "rss"], default=None, help="run one part only")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child is not None:
        rss_child(args.rss_child, args.batch_size)
        return
    print(f"torch threads: {torch.get_num_threads()}  (torch {torch.__version__}, {os.cpu_count()} CPUs)")
    results = {"threads": torch.get_num_threads()}
    if args.only != "rss":
        model = ik.load_model("smollm2-135m")
        data = texts(args.tokens, model)
    if args.only in (None, "harvest"):
        results["harvest_vs_forward"] = bench_harvest(model, data, args.batch_size)
        print("harvest:", json.dumps(results["harvest_vs_forward"]), flush=True)
    if args.only in (None, "run"):
        results["run_one_site_vs_forward"] = bench_run(model, data, args.batch_size)
        print("run:", json.dumps(results["run_one_site_vs_forward"]), flush=True)
    if args.only in (None, "rss"):
        results["peak_rss"] = bench_rss(args.tokens, args.batch_size, args.threads, args.quick)
        print("rss:", json.dumps(results["peak_rss"]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
