"""Benchmark: interpkit against nnsight, captum and pyvene on the same jobs, in the same run.

Usage:
    pip install -e ".[bench]"          # the peers: benchmark-only, not needed by interpkit or its tests
    python benchmarks/bench_peers.py [--threads 1] [--n 8] [--jobs resid heads atp ig das honesty]
                                     [--layers 0,5,10,15,20,25] [--repeats 3] [--atp-repeats 5]
                                     [--honesty-n 8,16] [--tol 5e-6] [--quick]

Same model (the embedded SmolLM2-135M for interpkit; the same GGUF read by transformers' own
loader, eager attention, for the peers), same IOI prompts (``ik.tasks.load("ioi", model, n=8,
seed=0)``), same metric (mean logit difference), one torch thread. Before any timing each job
runs once on both sides and checks that the results agree (max |difference| printed; the run
stops if it exceeds ``--tol``, or the job's stated tolerance); that run is also the warm-up (it
holds interpkit's once-per-model exactness checks and nnsight's first trace). Then each side
runs ``--repeats`` times and the median is reported with ``peer / interpkit`` (above 1:
interpkit is faster).

Jobs:
- ``resid``: ``resid_pre`` x position on ``--layers`` (all positions): ``ik.patch(site="resid_pre",
  per_position=True)`` vs an nnsight loop, one trace per (layer, position);
- ``heads``: ``head_out`` per head on ``--layers``: ``ik.patch(site="head_out")`` vs nnsight, one
  trace per (layer, head) patching that head's slice of ``o_proj``'s input;
- ``atp``: node AtP over every head (``ik.attribute(method="atp", level="node", site="head_out")``,
  ``check=0`` and with the default check) vs nnsight's attribution-patching recipe,
  ``--atp-repeats`` runs; also in forward+backward units;
- ``ig``: IG with ``--ig-steps`` midpoint steps on ``--layers``, per position, ``check=0``
  (``ik.attribute(method="ig", site="resid_pre", per_position=True)``) vs captum's
  ``LayerIntegratedGradients`` at each layer's input with ``method="riemann_middle"`` (the same
  rule, so the two agree to float noise);
- ``das``: 1-D DAS, ``--das-steps`` Adam steps at ``L{--das-layer}.resid_post`` on the
  subject-number prompts (``interpkit.probing.das``) vs pyvene's ``LowRankRotatedSpaceIntervention``
  (rank 1) with the same pairs, batches, start direction, loss and optimiser; the IIA before
  training must agree, after training the two IIAs are compared (different parametrisations of
  the direction take different paths);
- ``honesty``: the cost of the default honesty checks in forward+backward units (one forward +
  backward of the task's batch, measured in the same run): node AtP with and without its check
  and EAP over every edge with and without its check, at each of ``--honesty-n`` prompts.

``--quick``: a smoke run (2 layers, 3 positions, 1 repeat, 3 DAS steps, honesty at 8 prompts).
Prints one JSON row per measurement as it goes (the machine's load average in the first), then
a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # interpkit's and transformer_lens's progress bars

import torch

import interpkit as ik

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_recipes as peers

JOBS = ("resid", "heads", "atp", "ig", "das", "honesty")
SUBJECT_NUMBER = Path(__file__).resolve().parents[1] / "experiments" / "data" / "subject_number.jsonl"


def emit(**row: Any) -> None:
    print(json.dumps(row), flush=True)


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """Median seconds of ``repeats`` runs of ``fn``, each run's seconds, and the last run's output."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), [round(t, 3) for t in times], out


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` run in turn, ``repeats`` rounds: every round times each once, so a
    machine that slows down or speeds up during the run moves all of them alike (shared hosts drift)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def timed_once(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 3)


def agree(job: str, ours: torch.Tensor, theirs: torch.Tensor, tol: float) -> float:
    """Max |ours - theirs|, printed; stops the run when it is over ``tol`` (no timing of unequal work)."""
    diff = float((ours.float().cpu() - theirs.float().cpu()).abs().max())
    emit(job=job, check="results agree before timing", max_abs_diff=diff, tol=tol, ok=diff <= tol)
    if diff > tol:
        raise SystemExit(f"{job}: interpkit and the peer disagree by {diff:.3g} > {tol:g}; nothing timed")
    return diff


class Bench:
    """What every job needs: the model both ways, the task as tensors, the options, the table."""

    def __init__(self, model: ik.Model, hf: torch.nn.Module, task: Any, args: argparse.Namespace) -> None:
        self.model, self.hf, self.task, self.args = model, hf, task, args
        self.metric = peers.logit_diff(task.answer_pos, task.answer, task.wrong)
        self.table: list[tuple[str, str, str, str, str]] = []
        self._nnsight = None

    @property
    def nm(self):
        if self._nnsight is None:
            # its own copy: nnsight wraps the modules it is given, the captum and pyvene rows keep the plain model
            self._nnsight = peers.nnsight_model(copy.deepcopy(self.hf), self.model.tokenizer)
        return self._nnsight

    def compare(
        self,
        job: str,
        peer: str,
        ours: Callable[[], Any],
        theirs: Callable[[], Any],
        repeats: int,
        diff: float | str,
        first: tuple[float, float] | None = None,
    ) -> dict:
        times = interleaved({"ours": ours, "theirs": theirs}, repeats)
        ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["theirs"])
        ours_runs, theirs_runs = [round(t, 3) for t in times["ours"]], [round(t, 3) for t in times["theirs"]]
        row = {
            "job": job,
            "interpkit_s": round(ours_s, 3),
            "interpkit_runs_s": ours_runs,
            "peer": peer,
            "peer_s": round(theirs_s, 3),
            "peer_runs_s": theirs_runs,
            "ratio_peer_over_interpkit": round(theirs_s / ours_s, 2),
            "agreement": diff,
            "checked_run_s": first,  # the first (warm-up and agreement) run of each side, not in the median
        }
        emit(**row)
        agreement = f"{diff:.1e}" if isinstance(diff, float) else diff
        self.table.append((job, f"{ours_s:.2f} s", f"{peer} {theirs_s:.2f} s", f"{theirs_s / ours_s:.2f}x", agreement))
        return row


# ------------------------------------------------------------------------------------------------ jobs
def job_resid(b: Bench) -> None:
    layers, positions = b.args.layer_list, list(range(b.args.positions or b.task.n_pos))
    t = b.task

    def ours() -> torch.Tensor:
        return ik.patch(b.model, t, "resid_pre", per_position=True, layers=layers, positions=positions).scores

    def theirs() -> torch.Tensor:
        return peers.nnsight_resid_pre(b.nm, t.clean, t.corrupt, b.metric, layers, positions)

    (o, o_s), (p, p_s) = timed_once(ours), timed_once(theirs)
    diff = agree("resid", o, p, b.args.tol)
    name = f"resid_pre x position, {len(layers)} layers x {len(positions)} positions"
    b.compare(name, "nnsight (one trace per patch)", ours, theirs, b.args.repeats, diff, (o_s, p_s))


def job_heads(b: Bench) -> None:
    layers, t, heads = b.args.layer_list, b.task, b.model.cfg.n_heads

    def ours() -> torch.Tensor:
        return ik.patch(b.model, t, "head_out", layers=layers).scores

    def theirs() -> torch.Tensor:
        return peers.nnsight_head_out(b.nm, t.clean, t.corrupt, b.metric, layers, heads)

    (o, o_s), (p, p_s) = timed_once(ours), timed_once(theirs)
    diff = agree("heads", o, p, b.args.tol)
    name = f"head_out per head, {len(layers)} layers x {heads} heads"
    b.compare(name, "nnsight (one trace per patch)", ours, theirs, b.args.repeats, diff, (o_s, p_s))


def unit(model: ik.Model, task: Any, repeats: int = 3, warm: bool = True) -> float:
    """Seconds of one forward + backward of the task's corrupt batch (the attribution unit), median."""
    metric = peers.logit_diff(task.answer_pos, task.answer, task.wrong)

    def once() -> None:
        with torch.enable_grad():
            metric(model.bridge(task.corrupt)).backward()
        model.bridge.zero_grad(set_to_none=True)

    if warm:
        once()
    return median_time(once, repeats)[0]


def job_atp(b: Bench) -> None:
    t, c = b.task, b.model.cfg

    def ours(check: int | None = 0) -> Any:
        options = {} if check is None else {"check": check}
        return ik.attribute(b.model, t, method="atp", level="node", site="head_out", **options)

    def theirs() -> torch.Tensor:
        return peers.nnsight_atp(b.nm, t.clean, t.corrupt, b.metric, c.n_layers, c.n_heads)

    (res, o_s), (p, p_s) = timed_once(ours), timed_once(theirs)
    diff = agree("atp", res.scores - res.corrupt_value, p, b.args.attr_tol)
    reps, name = b.args.atp_repeats, f"node AtP, {c.n_layers * c.n_heads} heads, check=0"
    row = b.compare(name, "nnsight AtP recipe", ours, theirs, reps, diff, (o_s, p_s))
    ours(None)  # warm the exact-patching check
    checked_s, check0_s, u = check_cost(b.model, t, lambda: ours(0), lambda: ours(None), reps)
    emit(job="node AtP with its default check", interpkit_s=round(checked_s, 3), check0_s=round(check0_s, 3),
         unit_s=round(u, 3), units=round(checked_s / u, 2), units_check0=round(check0_s / u, 2),
         check_units=round((checked_s - check0_s) / u, 2), units_peer=round(row["peer_s"] / u, 2))  # fmt: skip
    b.table.append(
        ("node AtP with the default check", f"{checked_s:.2f} s", f"nnsight AtP recipe {row['peer_s']:.2f} s",
         f"{row['peer_s'] / checked_s:.2f}x", f"{checked_s / u:.2f} units (check=0: {check0_s / u:.2f})")
    )  # fmt: skip


def check_cost(
    model: ik.Model, task: Any, alone: Callable[[], Any], checked: Callable[[], Any], repeats: int
) -> tuple[float, float, float]:
    """Medians of a method with its check, without, and of the unit, the three taking turns."""
    times = interleaved({"checked": checked, "alone": alone, "unit": lambda: unit(model, task, 1, warm=False)}, repeats)
    return tuple(statistics.median(times[k]) for k in ("checked", "alone", "unit"))  # type: ignore[return-value]


def job_ig(b: Bench) -> None:
    layers, t, steps = b.args.layer_list, b.task, b.args.ig_steps

    def ours() -> Any:
        return ik.attribute(
            b.model, t, method="ig", level="node", site="resid_pre", per_position=True, layers=layers, ig_steps=steps,
            check=0,
        )  # fmt: skip

    def theirs() -> torch.Tensor:
        return peers.captum_ig_resid_pre(b.hf, t.clean, t.corrupt, t.answer_pos, t.answer, t.wrong, layers, steps)

    (res, o_s), (p, p_s) = timed_once(ours), timed_once(theirs)
    diff = agree("ig", res.scores - res.corrupt_value, p, b.args.attr_tol)
    name = f"IG, {steps} midpoint steps, {len(layers)} layers x {t.n_pos} positions"
    peer = "captum LayerIntegratedGradients (riemann_middle)"
    b.compare(name, peer, ours, theirs, b.args.repeats, diff, (o_s, p_s))


def job_honesty(b: Bench) -> None:
    for n in b.args.honesty_sizes:
        task = ik.tasks.load("ioi", b.model, n=n, seed=0)
        methods = {
            "node AtP": lambda check, t=task: ik.attribute(b.model, t, "atp", "node", site="head_out", **check),
            "EAP all edges": lambda check, t=task: ik.attribute(
                b.model, t, "eap", "edge", direction="denoise", **check
            ),
        }
        # warm-up: interpkit's once-per-model exactness checks (the hook engine's, the suffix forward's)
        ik.patch(b.model, task, "head_out", layers=[b.model.cfg.n_layers - 1])
        for method, fn in methods.items():
            fn({})
            checked, alone, u = check_cost(b.model, task, lambda f=fn: f({"check": 0}), lambda f=fn: f({}),
                                           b.args.honesty_repeats)  # fmt: skip
            emit(job="honesty", what=method, n=n, alone_s=round(alone, 3), checked_s=round(checked, 3),
                 unit_s=round(u, 3), units_alone=round(alone / u, 2), units_checked=round(checked / u, 2),
                 check_units=round((checked - alone) / u, 2))  # fmt: skip
            b.table.append(
                (f"{method}, {n} prompts: check cost", f"{alone:.2f} s -> {checked:.2f} s", f"unit {u:.2f} s",
                 f"{checked / alone:.2f}x", f"{alone / u:.2f} -> {checked / u:.2f} units (check {(checked - alone) / u:.2f})")
            )  # fmt: skip


# ------------------------------------------------------------------------------------------------ main
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=8, help="IOI prompts")
    p.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    p.add_argument("--layers", default=None, help="layers of the resid, heads and ig jobs (default 0,5,10,15,20,25)")
    p.add_argument("--positions", type=int, default=0, help="resid job: the first N positions (0: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (median), after the checked run")
    p.add_argument("--atp-repeats", type=int, default=5)
    p.add_argument("--honesty-repeats", type=int, default=3)
    p.add_argument("--honesty-n", default="8,16", help="prompts for the honesty-cost job")
    p.add_argument("--ig-steps", type=int, default=5)
    p.add_argument("--das-layer", type=int, default=4)
    p.add_argument("--das-steps", type=int, default=20)
    p.add_argument("--tol", type=float, default=5e-6, help="max |difference| of patching results (logit diff)")
    p.add_argument("--attr-tol", type=float, default=2e-5, help="the same for AtP and IG (sums over many products)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 layers, 3 positions, 1 repeat, 3 DAS steps")
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.positions, args.repeats, args.atp_repeats = args.layers or "0,15", 3, 1, 1
        args.honesty_repeats, args.honesty_n, args.das_steps = 1, "8", min(args.das_steps, 3)
    args.layers = args.layers or "0,5,10,15,20,25"
    args.layer_list = [int(x) for x in args.layers.split(",")]
    args.honesty_sizes = [int(x) for x in args.honesty_n.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    missing = peers.missing_peers()
    if missing:
        raise SystemExit(f"peer packages missing: {', '.join(missing)}; install them with: pip install -e '.[bench]'")
    torch.set_num_threads(args.threads)
    model = ik.load_model(args.model)
    task = ik.tasks.load("ioi", model, n=args.n, seed=0)
    hf = peers.plain_hf(embedded_gguf()) if args.model == "smollm2-135m" else None
    if hf is None:
        raise SystemExit("bench_peers.py runs on the embedded model (--model smollm2-135m)")
    emit(what="setup", model=args.model, n=args.n, pos=task.n_pos, threads=torch.get_num_threads(),
         loadavg=os.getloadavg(), cpus=os.cpu_count(), versions=peers.peer_versions())  # fmt: skip
    b = Bench(model, hf, task, args)
    for job in args.jobs:
        if job == "das":
            import bench_peers_das

            bench_peers_das.job_das(b)
        else:
            globals()[f"job_{job}"](b)
    emit(what="end", loadavg=os.getloadavg())
    print("\n| job | interpkit | peer | peer / interpkit | agreement |\n|---|---|---|---|---|")
    for row in b.table:
        print("| " + " | ".join(row) + " |")


def embedded_gguf() -> Path:
    from interpkit.models._load import embedded_gguf_path

    return embedded_gguf_path()


if __name__ == "__main__":
    main()
