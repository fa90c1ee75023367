"""Benchmark: attribution cost in units of one forward+backward, and transformer_lens's tooling.

Usage:
    python benchmarks/bench_attribution.py [--threads 1] [--n 16] [--model smollm2-135m]
                                           [--steps 5] [--edges 256] [--act] [--quick]

Same run, same model (the embedded SmolLM2-135M by default), IOI prompts, metric logit diff:
1. the unit: one forward + backward of the corrupt batch (``n`` prompts), best of 3;
2. EAP over every edge (``check=0``, and with the default 32-edge honesty check) / unit
   (target <= 4);
3. EAP-IG (inputs variant) with ``--steps`` m / unit (target <= m + 2); ``--act`` also times
   the activations variant (about (2L+1) m / 2 units: minutes on a CPU);
4. exact patching of ``--edges`` random edges in one batched pass: edges per second;
5. node AtP on ``head_out``: interpkit vs ``transformer_lens.tools.analysis.attribution_patching``
   (node granularity; its edge granularity is tried and its answer reported) vs the textbook
   TransformerLens recipe (``run_with_cache`` on clean, forward + backward hooks on corrupt).

Prints one JSON row per measurement as it goes; the machine's load average is in the first row.
``--quick`` skips the transformer_lens timings.
"""

from __future__ import annotations

import argparse
import json
import os
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


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def logit_diff_mean(task):
    rows = torch.arange(len(task))

    def metric(logits):
        final = logits[rows, task.answer_pos]
        return (final[rows, task.answer] - final[rows, task.wrong]).mean()

    return metric


def unit(model, task) -> float:
    metric = logit_diff_mean(task)

    def once():
        with torch.enable_grad():
            metric(model.bridge(task.corrupt)).backward()
        model.bridge.zero_grad(set_to_none=True)

    once()  # warm-up
    return timed(once, repeat=3)[0]


def textbook_tl(model, task) -> torch.Tensor:
    """Node AtP the TransformerLens way: cache clean, hook grads on the corrupt run."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    metric = logit_diff_mean(task)
    with torch.no_grad():
        _, clean = model.bridge.run_with_cache(task.clean, names_filter=lambda n: n in names)
    acts, grads = {}, {}

    def fwd(act, hook, name):  # keyed by the classic name: hook.name is the bridge's canonical one
        acts[name] = act.detach()

    def bwd(grad, hook, name):
        grads[name] = grad.detach()

    model.bridge.reset_hooks()
    with torch.enable_grad():
        for name in names:
            model.bridge.add_hook(name, lambda act, hook, n=name: fwd(act, hook, n), "fwd")
            model.bridge.add_hook(name, lambda grad, hook, n=name: bwd(grad, hook, n), "bwd")
        try:
            metric(model.bridge(task.corrupt)).backward()
        finally:
            model.bridge.reset_hooks()
    model.bridge.zero_grad(set_to_none=True)
    return torch.stack([((clean[n] - acts[n]) * grads[n]).sum((0, 1, 3)) for n in names])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--edges", type=int, default=256)
    parser.add_argument("--act", action="store_true", help="also time EAP-IG (activations variant)")
    parser.add_argument("--quick", action="store_true", help="skip the transformer_lens timings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from interpkit.attribution.edge_exact import exact_edges
    from interpkit.graph import build_graph
    from interpkit.runtime import baseline

    load_s, model = timed(lambda: ik.load_model(args.model))
    task = ik.tasks.load("ioi", model, n=args.n)
    emit(
        what="setup",
        model=args.model,
        threads=args.threads,
        n=args.n,
        pos=task.n_pos,
        load_s=round(load_s, 1),
        loadavg=os.getloadavg(),
        cpus=os.cpu_count(),
        device=str(model.device),
    )
    u = unit(model, task)
    emit(what="unit: forward+backward", s=round(u, 3))

    s, res = timed(lambda: ik.attribute(model, task, "eap", "edge", direction="denoise", check=0))
    emit(what="EAP all edges", edges=len(res.scores), s=round(s, 2), units=round(s / u, 2), target="<= 4")
    s, res = timed(lambda: ik.attribute(model, task, "eap", "edge", direction="denoise"))
    chk = res.extras["check"]
    emit(what="EAP + 32-edge check", s=round(s, 2), units=round(s / u, 2), spearman=round(chk["spearman"], 3),
         pearson=round(chk["pearson"], 3))  # fmt: skip
    m = args.steps
    s, res = timed(lambda: ik.attribute(model, task, "eap-ig", "edge", direction="denoise", ig_steps=m, check=0))
    emit(what=f"EAP-IG inputs m={m}", s=round(s, 2), units=round(s / u, 2), target=f"<= {m + 2}")
    if args.act:
        s, res = timed(
            lambda: ik.attribute(model, task, "eap-ig-act", "edge", direction="denoise", ig_steps=m, check=0)
        )
        emit(what=f"EAP-IG activations m={m}", s=round(s, 2), units=round(s / u, 2))

    graph = build_graph(model)
    pairs = [tuple(p) for p in graph.mask.nonzero().tolist()]
    pick = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))[: args.edges].tolist()
    base = baseline(model, task.to(model.device), task.metric)
    s, _ = timed(
        lambda: exact_edges(model, task, graph, [pairs[i] for i in pick], "noise", task.metric, base["clean_logprobs"])
    )
    emit(what=f"exact patching of {len(pick)} edges, batched", s=round(s, 2), edges_per_s=round(len(pick) / s, 1),
         rows=len(pick) * len(task))  # fmt: skip

    s, ours = timed(lambda: ik.attribute(model, task, "atp", "node", site="head_out", check=0))
    emit(what="node AtP head_out (interpkit)", s=round(s, 2), units=round(s / u, 2))
    s, _ = timed(lambda: ik.attribute(model, task, "atp*", "node", site="head_out", check=0))
    emit(what="node AtP* head_out with GradDrop (interpkit)", s=round(s, 2), units=round(s / u, 2))
    if args.quick:
        return
    s, theirs = timed(lambda: textbook_tl(model, task))
    ours_change = (ours.scores - ours.corrupt_value).float()
    emit(what="node AtP head_out, textbook TL (run_with_cache + bwd hooks)", s=round(s, 2), units=round(s / u, 2),
         max_abs_diff_vs_interpkit=float((theirs.cpu() - ours_change).abs().max()))  # fmt: skip
    try:
        from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

        metric = logit_diff_mean(task)
        s, _ = timed(lambda: attribution_patch(model.bridge, task.clean, task.corrupt, metric))
        emit(what="node AtP, transformer_lens attribution_patch (node)", s=round(s, 2), units=round(s / u, 2))
        try:
            cfg = EdgeAttributionConfig(granularity="edge")
            s, _ = timed(lambda: attribution_patch(model.bridge, task.clean, task.corrupt, metric, cfg))
            emit(what="EAP, transformer_lens attribution_patch (edge)", s=round(s, 2), units=round(s / u, 2))
        except Exception as exc:  # report, do not hide, what transformer_lens says
            emit(what="EAP, transformer_lens attribution_patch (edge)", error=f"{type(exc).__name__}: {exc}"[:300])
    except Exception as exc:  # ImportError, or transformer_lens's tool failing on this model: report it
        emit(what="transformer_lens attribution_patch", error=f"{type(exc).__name__}: {exc}"[:300])


if __name__ == "__main__":
    main()
