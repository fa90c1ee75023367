"""Benchmark: interpkit's batched patching engine against transformer_lens.patching.

Usage:
    python benchmarks/bench_patching.py [--threads 1] [--n 4] [--quick]

Same run, same model, prompts and metric:
1. head-by-position output patching (``head_out``, per position) on the embedded model
   (IOI prompts) and on the toy model (induction): time of ``ik.patch`` vs
   ``transformer_lens.patching.get_act_patch_attn_head_out_by_pos`` and max |difference|;
   ours is the best of 3 after one warm-up call (the per-model exactness checks, reported as
   ``first_call_checks_s``), theirs one run (minutes on the embedded model);
2. residual layer x position sweep: time of ``ik.patch(site="resid_pre", per_position=True)``
   with prefix reuse (the suffix forward, the default) and with the hook engine alone, each vs
   plain batched forwards over the same total number of rows (the floor for this work without
   reuse);
3. peak memory of a sweep as the number of patches grows 10x (each size in a fresh subprocess);
4. ``forward_final`` on 32 x 20 rows of the embedded model from tokens and from the residual
   entering layers 0, 15 and 29 (the blocks below the start are skipped, so a later start is
   cheaper; issue 14 measured 21.6, 20.5 and 20.9 s when TransformerLens still ran them).
   ``--only forward-final`` runs this row alone.

On the embedded model transformer_lens patches the layers ``--tl-layers`` (default 0, 14, 29: its
one-forward-per-patch loop over all 30 layers takes about an hour on one CPU thread) and ours
the same layers for the ratio; ``--tl-layers all`` runs the whole sweep on both sides.
``--quick`` skips the transformer_lens run on the embedded model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

import interpkit as ik


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def hook_engine_only(model):
    """Switch off the suffix (prefix-reuse) path: ``ik.patch`` then runs the hook engine alone."""
    model.anatomy.verdicts["suffix"] = False


def warm(model, task, site: str) -> float:
    """One untimed call on the last layer: the per-model exactness checks (run once per model) happen here."""
    start = time.perf_counter()
    ik.patch(model, task, site, per_position=True, layers=[model.cfg.n_layers - 1])
    return round(time.perf_counter() - start, 2)


def head_by_pos(model, task, run_tl: bool, tl_layers: list[int] | None = None) -> dict:
    """head_out x position: ours vs transformer_lens on the same patches (``tl_layers``: a subset of layers)."""
    a, w, pos = task.answer, task.wrong, task.answer_pos
    rows = torch.arange(len(task))

    def metric(logits):
        final = logits[rows, pos]
        return (final[rows, a] - final[rows, w]).mean()

    row = {"first_call_checks_s": warm(model, task, "head_out")}
    ours_s, ours = timed(lambda: ik.patch(model, task, "head_out", per_position=True), repeat=3)
    row.update(ours_s=round(ours_s, 3), engine=ours.meta["engine"], patches=int(ours.scores.numel()))
    if not run_tl:
        return row
    import pandas as pd
    import transformer_lens.patching as tl_patching

    layers = list(range(model.cfg.n_layers)) if tl_layers is None else tl_layers
    _, clean_cache = model.bridge.run_with_cache(task.clean)
    grid = [(lay, p, h) for lay in layers for p in range(task.n_pos) for h in range(model.cfg.n_heads)]

    def theirs_run():
        if tl_layers is None:
            return tl_patching.get_act_patch_attn_head_out_by_pos(model.bridge, task.corrupt, clean_cache, metric)
        # the same function on a subset of its (layer, pos, head) grid: its generic form with index_df
        return tl_patching.generic_activation_patch(
            model.bridge,
            task.corrupt,
            clean_cache,
            metric,
            patch_setter=tl_patching.layer_pos_head_vector_patch_setter,
            activation_name="z",
            index_df=pd.DataFrame(grid, columns=["layer", "pos", "head"]),
        )

    with torch.no_grad():
        tl_s, theirs = timed(theirs_run)
    sub_s, sub = timed(lambda: ik.patch(model, task, "head_out", per_position=True, layers=layers), repeat=3)
    row.update(
        tl_layers="all" if tl_layers is None else layers,
        tl_patches=len(grid),
        tl_s=round(tl_s, 2),
        ours_same_patches_s=round(sub_s, 3),
        speedup=round(tl_s / sub_s, 1),
        max_abs_diff=float((sub.scores.reshape(-1) - theirs.float().reshape(-1)).abs().max()),
    )
    if tl_layers is not None:  # transformer_lens runs one full forward per patch, whatever its layer
        row["tl_full_sweep_extrapolated_s"] = round(tl_s * model.cfg.n_layers / len(layers), 1)
    return row


def resid_sweep(model, task) -> dict:
    """resid_pre x position sweep (prefix reuse, then the hook engine alone) vs plain forwards of the same rows."""
    from interpkit.runtime import auto_rows

    warm(model, task, "resid_pre")
    sweep_s, res = timed(lambda: ik.patch(model, task, "resid_pre", per_position=True), repeat=3)
    n_rows = res.scores.numel() * len(task)
    chunk = auto_rows(model, task.n_pos)
    tokens = task.corrupt.repeat((n_rows + len(task) - 1) // len(task), 1)[:n_rows]

    def plain():
        with torch.inference_mode():
            for start in range(0, n_rows, chunk):
                model.bridge(tokens[start : start + chunk])

    plain_s, _ = timed(plain, repeat=3)
    saved = model.anatomy.verdicts.get("suffix")
    hook_engine_only(model)
    hooks_s, hooked = timed(lambda: ik.patch(model, task, "resid_pre", per_position=True), repeat=3)
    model.anatomy.verdicts["suffix"] = saved
    return {
        "rows": n_rows,
        "plain_forward_same_rows_s": round(plain_s, 3),
        "prefix_reuse_s": round(sweep_s, 3),
        "prefix_reuse_ratio": round(sweep_s / plain_s, 2),
        "hook_engine_s": round(hooks_s, 3),
        "hook_engine_ratio": round(hooks_s / plain_s, 2),
        "engines_max_abs_diff": float((res.scores - hooked.scores).abs().max()),
    }


def forward_final_rows(model, rows: int = 32, length: int = 20, layers=(0, 15, 29)) -> dict:
    """Seconds of one ``forward_final`` of ``rows`` x ``length`` random tokens, from tokens and from each layer."""
    from interpkit.runtime import capture, forward_final

    gen = torch.Generator().manual_seed(0)
    tokens = model.check_tokens(torch.randint(1, model.cfg.d_vocab, (rows, length), generator=gen).tolist())
    names = [f"blocks.{k}.hook_resid_pre" for k in layers]
    acts, logits = capture(model, tokens, names)
    answer_pos = torch.full((rows,), length - 1)
    starts = {"tokens": (tokens, None)} | {
        f"layer {k}": (acts[model.resolve_hook(n)], k) for k, n in zip(layers, names, strict=True)
    }
    out: dict = {"rows": f"{rows} x {length}"}
    for label, (start, k) in starts.items():
        with torch.inference_mode():
            forward_final(model, start, k, answer_pos)  # warm-up: the once-per-model checks run here
            secs, final = timed(lambda start=start, k=k: forward_final(model, start, k, answer_pos), repeat=3)
        out[f"from {label} s"] = round(secs, 3)
        out[f"from {label} max_abs_diff"] = float((final - logits[:, -1]).abs().max())
    out["layer 29 / tokens"] = round(out["from layer 29 s"] / out["from tokens s"], 3)
    return out


def peak_rss_child(layers: int, n: int, threads: int) -> float:
    """Peak RSS growth (MB) over the loaded model of a resid_pre x position sweep on ``layers`` layers."""
    code = f"""
import resource, torch, interpkit as ik
torch.set_num_threads({threads})
m = ik.load_model("smollm2-135m")
t = ik.tasks.load("induction", m, n={n}, length=8, seed=0)
ik.metrics.clean_and_corrupt(m, t)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ik.patch(m, t, "resid_pre", per_position=True, layers=list(range({layers})))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1e3)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=4, help="prompts per task")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["forward-final"], default=None, help="run one row alone")
    parser.add_argument(
        "--tl-layers",
        default="0,14,29",
        help="layers transformer_lens patches on the embedded model ('all': the whole sweep, ~1 h on one CPU thread)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, device: cpu, torch {torch.__version__}")
    report = {}

    def show(key: str) -> None:
        print(f"{key:<55} {json.dumps(report[key])}", flush=True)

    if args.only == "forward-final":
        report["smollm2 forward_final by start layer"] = forward_final_rows(ik.load_model("smollm2-135m"))
        show("smollm2 forward_final by start layer")
        return
    toy = ik.load_model("toy-induction")
    toy_task = ik.tasks.load("induction", toy, n=args.n, length=8, seed=0)
    report["toy head_out x pos"] = head_by_pos(toy, toy_task, run_tl=True)
    show("toy head_out x pos")
    report["toy resid_pre x pos"] = resid_sweep(toy, toy_task)
    show("toy resid_pre x pos")

    smol = ik.load_model("smollm2-135m")
    ioi = ik.tasks.load("ioi", smol, n=args.n, seed=0, templates="ABBA")
    ioi = ioi.subset([i for i in range(len(ioi)) if ioi.answer_pos[i] == ioi.answer_pos[0]])
    tl_layers = None if args.tl_layers == "all" else [int(x) for x in args.tl_layers.split(",")]
    report["smollm2 head_out x pos"] = head_by_pos(smol, ioi, run_tl=not args.quick, tl_layers=tl_layers)
    show("smollm2 head_out x pos")
    report["smollm2 resid_pre x pos"] = resid_sweep(smol, ioi)
    show("smollm2 resid_pre x pos")
    report["smollm2 forward_final by start layer"] = forward_final_rows(smol)
    show("smollm2 forward_final by start layer")

    mem = {f"{layers} layers": peak_rss_child(layers, args.n, args.threads) for layers in (3, 30)}
    report["smollm2 resid_pre x pos sweep, peak RSS growth (MB), 10x patches"] = mem
    show("smollm2 resid_pre x pos sweep, peak RSS growth (MB), 10x patches")


if __name__ == "__main__":
    main()
