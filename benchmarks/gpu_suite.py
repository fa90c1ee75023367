"""Benchmark suite: patching, harvest, probing and attribution on one device, one table.

Usage:
    python benchmarks/gpu_suite.py [--device cuda|cpu] [--threads 1] [--repeat 3]
                                   [--n 4] [--layers 4] [--tokens 2048] [--probe-n 600] [--quick]
                                   [--only multi-gpu] [--split-over cuda:0,cuda:1]

On CUDA every figure is the median of ``--repeat`` timed runs after one warm-up, timed with
CUDA events, with the peak of ``torch.cuda.max_memory_allocated`` over those runs; on CPU the
same runs are timed with ``time.perf_counter`` and the memory column is the process's peak RSS
so far (it only grows). Beside each figure stands its peer, the same work done another way, and
``peer/ours`` (above 1: interpkit is faster; for the "floor" peers, a plain forward pass over the
same rows, it is at most 1 and says how close to the floor interpkit gets):

| row | ours | peer |
| --- | --- | --- |
| patch head_out x pos (toy) | ``ik.patch`` | ``transformer_lens.patching`` (one forward per patch) |
| patch resid_pre x pos | ``ik.patch`` on ``--layers`` layers | plain batched forwards, same rows (floor) |
| harvest 30 x resid_post | ``ik.cache.harvest`` to disk | plain forwards, same batches (floor) |
| cache.run one site | ``ik.cache.run(["L15.resid_post"])`` | one plain forward (floor) |
| probes, every layer | ``ik.probing.fit_probes`` | scikit-learn grid (skipped if not installed) |
| attribution EAP edges | ``ik.attribute(method="eap")`` | one forward + backward (the unit) |

The work is that of the single-purpose scripts beside this one (``bench_patching.py``,
``bench_cache.py``, ``bench_probing.py``, ``bench_attribution.py``, whose helpers it imports);
the attribution row is skipped with a message when its script or method is absent.
``--quick`` skips the slow peers (transformer_lens patching, scikit-learn).

The multi-GPU check (with two CUDA devices or more; skipped with a message otherwise) loads the
model split over two GPUs (``device_map=2``) and compares it with the one-GPU load: logits, an
``ik.patch`` head_out sweep, a per-position resid_pre sweep across the devices' boundary, a mean
ablation, a path patch into the logits and EAP edge scores. Each line says pass or fail; the
script exits with status 1 if any fails. ``--split-over cuda:0,cpu`` runs the same check with
the blocks split over the devices named (one GPU and the CPU will do; ``cpu,cpu`` is a dry run of
the dispatch path on a machine without GPUs).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # transformer_lens.patching's progress bars

import torch

import interpkit as ik
import interpkit.cache as ikc

sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(fn: Callable[[], Any], device: torch.device, repeat: int) -> tuple[float, float]:
    """Median seconds of ``repeat`` runs of ``fn`` after one warm-up, and peak memory in MB."""
    cuda = device.type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeat):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return statistics.median(times), peak


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, str]] = []

    def add(self, name: str, ours: tuple[float, float], peer: tuple[float, float] | None, peer_name: str) -> None:
        ratio = f"{peer[0] / ours[0]:.2f}" if peer else "-"
        row = (
            name,
            f"{ours[0] * 1000:.1f}",
            f"{ours[1]:.0f}",
            f"{peer[0] * 1000:.1f}" if peer else "-",
            ratio,
            peer_name,
        )
        self.rows.append(row)
        print("  " + " | ".join(row), flush=True)

    def skip(self, name: str, why: str) -> None:
        self.rows.append((name, "-", "-", "-", "-", f"skipped: {why}"))
        print(f"  {name}: skipped ({why})", flush=True)

    def markdown(self) -> str:
        head = ("benchmark", "ours ms", "peak MB", "peer ms", "peer/ours", "peer")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in self.rows)])


def _metric(task):
    rows = torch.arange(len(task), device=task.clean.device)

    def metric(logits):
        final = logits[rows, task.answer_pos]
        return (final[rows, task.answer] - final[rows, task.wrong]).mean()

    return metric


def bench_patching(table: Table, model, toy, args, device) -> None:
    task = ik.tasks.load("induction", toy, n=args.n, length=8, seed=0).to(device)
    ours = measure(lambda: ik.patch(toy, task, "head_out", per_position=True), device, args.repeat)
    peer = None
    if not args.quick:
        import transformer_lens.patching as tl_patching

        _, clean_cache = toy.bridge.run_with_cache(task.clean)
        metric = _metric(task)

        def tl() -> None:
            with torch.no_grad():
                tl_patching.get_act_patch_attn_head_out_by_pos(toy.bridge, task.corrupt, clean_cache, metric)

        peer = measure(tl, device, args.repeat)
    table.add(f"patch head_out x pos (toy, n={args.n})", ours, peer, "transformer_lens.patching")

    from interpkit.runtime import auto_rows

    task = ik.tasks.load("ioi", model, n=args.n).to(device)
    layers = list(range(min(args.layers, model.cfg.n_layers)))
    ours = measure(lambda: ik.patch(model, task, "resid_pre", per_position=True, layers=layers), device, args.repeat)
    n_rows = len(layers) * task.n_pos * len(task)
    chunk = auto_rows(model, task.n_pos)
    tokens = task.corrupt.repeat((n_rows + len(task) - 1) // len(task), 1)[:n_rows]

    def plain() -> None:
        with torch.inference_mode():
            for start in range(0, n_rows, chunk):
                model.bridge(tokens[start : start + chunk])

    table.add(
        f"patch resid_pre x pos ({len(layers)} layers, {n_rows} rows)",
        ours,
        measure(plain, device, args.repeat),
        "plain forwards, same rows (floor)",
    )


def bench_cache(table: Table, model, args, device) -> None:
    import bench_cache

    data = bench_cache.texts(args.tokens, model)
    prepared = [(i.to(device), m.to(device)) for i, m in bench_cache.batches(model, data, 8)]
    n_tokens = int(sum(int(m.sum()) for _, m in prepared))

    def harvest() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            ikc.harvest(model, data, ["L*.resid_post"], Path(tmp) / "acts", batch_size=8, progress=False)

    table.add(
        f"harvest 30 x resid_post ({n_tokens} tokens)",
        measure(harvest, device, args.repeat),
        measure(lambda: bench_cache.plain_forward(model, prepared), device, args.repeat),
        "plain forwards, same batches (floor)",
    )
    tokens = model.to_tokens(data[:8])[:, :128].to(device)

    def plain() -> None:
        with torch.inference_mode():
            model(tokens)

    table.add(
        f"cache.run L15.resid_post {tuple(tokens.shape)}",
        measure(lambda: ikc.run(model, tokens, ["L15.resid_post"]), device, args.repeat),
        measure(plain, device, args.repeat),
        "one plain forward (floor)",
    )


def bench_probing(table: Table, model, args, device) -> None:
    import bench_probing

    from interpkit.probing import collect, fit_probes

    texts, labels = bench_probing.sentences(args.probe_n, 0)
    ds = collect(model, texts, labels, positions="last", batch_size=64, seed=0)
    ours = measure(lambda: fit_probes(ds, "logistic"), device, args.repeat)
    try:
        importlib.import_module("sklearn")
    except ImportError:
        table.add(f"probes, {len(ds.sites)} layers ({args.probe_n} sentences)", ours, None, "skipped: no scikit-learn")
        return
    if args.quick:
        table.add(f"probes, {len(ds.sites)} layers ({args.probe_n} sentences)", ours, None, "skipped: --quick")
        return
    from interpkit.probing._fit import L2_GRIDS

    peer = measure(lambda: bench_probing.sklearn_grid(ds, list(L2_GRIDS["logistic"])), device, 1)
    table.add(f"probes, {len(ds.sites)} layers ({args.probe_n} sentences)", ours, peer, "scikit-learn grid")


def bench_attribution(table: Table, model, args, device) -> None:
    name = f"attribution EAP, every edge (n={args.n})"
    try:
        bench = importlib.import_module("bench_attribution")
    except ImportError as exc:
        table.skip(name, f"benchmarks/bench_attribution.py not importable: {exc}")
        return
    task = ik.tasks.load("ioi", model, n=args.n).to(device)
    try:
        ours = measure(lambda: ik.attribute(model, task, method="eap", level="edge", check=0), device, args.repeat)
    except (ik.InterpkitError, NotImplementedError, TypeError) as exc:
        table.skip(name, f"ik.attribute failed: {exc}")
        return
    metric = bench.logit_diff_mean(task)

    def unit() -> None:
        with torch.enable_grad():
            metric(model.bridge(task.corrupt)).backward()
        model.bridge.zero_grad(set_to_none=True)

    table.add(name, ours, measure(unit, device, args.repeat), "one forward + backward (the unit)")


def _split(model_spec: str, devices: list[str]) -> Any:
    if devices == [f"cuda:{i}" for i in range(len(devices))]:
        return ik.load_model(model_spec, device_map=len(devices))  # the int form, as a user writes it
    from interpkit.models._device_map import layout, split_plan

    model = ik.load_model(model_spec)
    plan = split_plan(layout(model.bridge.original_model, model.cfg.n_layers), devices)
    return ik.load_model(model, device_map=plan)


def check_multi_gpu(args) -> bool:
    """Split model against the one-device model; prints one pass/fail line per check, returns whether all passed."""
    from interpkit.models._device_map import split_blocks

    devices = args.split_over.split(",") if args.split_over else ["cuda:0", "cuda:1"]
    n_gpus = torch.cuda.device_count()
    gpus = {d for d in devices if d.startswith("cuda")}
    if (not args.split_over and n_gpus < 2) or any(int(d.partition(":")[2] or 0) >= n_gpus for d in gpus):
        print(f"multi-GPU check: skipped ({n_gpus} CUDA device(s); it needs {', '.join(sorted(gpus))})")
        return True
    single = ik.load_model(args.model, device="cuda:0" if gpus else "cpu")
    split = _split(args.model, devices)
    boundary = split_blocks(split.cfg.n_layers, len(devices)).count(0)  # the first block of the second device
    where = ", ".join(str(d) for d in split.devices)
    print(f"multi-GPU check: {args.model} over {where}; blocks 0..{boundary - 1} on the first device")
    task = ik.tasks.load("ioi", single, n=args.n, seed=0)
    layers = sorted({0, boundary - 1, boundary, split.cfg.n_layers - 1})
    heads = ["L0H0", f"L{boundary}H1"]
    checks = {
        "logits": lambda m: m(task.clean),
        "patch head_out": lambda m: ik.patch(m, task, "head_out").scores,
        f"patch resid_pre x pos, layers {layers}": lambda m: (
            ik.patch(m, task, "resid_pre", per_position=True, layers=layers).scores
        ),
        f"ablate mean {', '.join(heads)}": lambda m: ik.patching.ablate(m, task, heads, "mean").scores,
        "path_patch heads -> logits": lambda m: ik.patching.path_patch(m, task, ["logits"], "heads").scores,
        "attribute eap edges": lambda m: ik.attribute(m, task, method="eap", level="edge", check=0).scores,
    }
    ok = True
    for name, fn in checks.items():
        try:
            with torch.inference_mode(name == "logits"):
                want, got = fn(single).float().cpu(), fn(split).float().cpu()
            err = float((want - got).abs().max()) / float(want.abs().max().clamp_min(1e-6))
            passed, detail = err <= 1e-4, f"max |diff| / max |value| = {err:.1e}"
        except Exception as exc:  # a device mismatch deep inside torch is what this check looks for
            passed, detail = False, f"{type(exc).__name__}: {str(exc)[:300]}"
        ok &= passed
        print(f"  {'pass' if passed else 'FAIL'}  {name}: {detail}", flush=True)
    print(f"multi-GPU check: {'all passed' if ok else 'FAILED'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=4, help="prompts per patching / attribution task")
    parser.add_argument("--layers", type=int, default=4, help="layers of the resid_pre x position sweep")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens of text to harvest")
    parser.add_argument("--probe-n", type=int, default=600, help="sentences for the probing dataset")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--only", nargs="*", choices=["patching", "cache", "probing", "attribution", "multi-gpu"], default=None
    )
    parser.add_argument(
        "--split-over", default=None, help="multi-GPU check: devices to split over (default cuda:0,cuda:1)"
    )
    parser.add_argument("--quick", action="store_true", help="skip the slow peers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if importlib.util.find_spec("sklearn") is not None:  # its peer row: every pool pinned alike
        import bench_probing as probing_script

        probing_script.pin_threads(args.threads)
    device = torch.device(args.device)
    what = args.only or ["patching", "cache", "probing", "attribution", "multi-gpu"]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({gpu}), torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    multi_ok = check_multi_gpu(args) if "multi-gpu" in what else True
    if set(what) == {"multi-gpu"}:
        sys.exit(0 if multi_ok else 1)
    model = ik.load_model(args.model, device=str(device))
    table = Table()
    if "patching" in what:
        bench_patching(table, model, ik.load_model("toy-induction", device=str(device)), args, device)
    if "cache" in what:
        bench_cache(table, model, args, device)
    if "probing" in what:
        bench_probing(table, model, args, device)
    if "attribution" in what:
        bench_attribution(table, model, args, device)
    print()
    print(table.markdown())
    if not multi_ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
