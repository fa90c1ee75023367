"""``interpkit``: the command line over the library's functions.

    interpkit models                                   # registry names and whether they load here
    interpkit hooks --model toy-induction              # real hook points, aliases folded
    interpkit sites --model toy-induction --kind z     # component labels (L0H1, L1.resid_pre, ...)
    interpkit run-task --model smollm2-135m --task ioi --n 16
                                                       # metric on the clean and corrupt runs
    interpkit patch --model smollm2-135m --task ioi --site head_out --out runs/ioi-heads
                                                       # patching sweep -> result.json + report.html
    interpkit cache --model smollm2-135m --data texts.txt --sites "L*.resid_post" --out acts/
    interpkit cache-info acts/ --verify                # streaming harvest to disk, and its check

Every subcommand prints a clear one-line error (exit status 2) for a user mistake.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from interpkit.errors import InterpkitError

DESCRIPTION = """interpkit: a mechanistic interpretability workbench.

Start with `interpkit models` to see which models load here (smollm2-135m is the embedded
default, no download needed), then `interpkit run-task --model smollm2-135m --task ioi` to
see a task's metric on clean and corrupted prompts."""


def _parse_params(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise InterpkitError(f"--param takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            params[key] = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            params[key] = value
    return params


def check_out_dir(out: str) -> None:
    """Refuse an output folder that cannot be written, before any work is done (not after a long sweep)."""
    import os
    from pathlib import Path

    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise InterpkitError(f"--out {out!r} is a file, not a folder: choose another --out")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InterpkitError(f"--out {out!r} lies inside {str(parent)!r}, which is a file: choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InterpkitError(f"--out {out!r}: the folder {str(parent)!r} is not writable")


def cmd_models(args: argparse.Namespace) -> int:
    from interpkit.models import list_models

    for entry in list_models():
        mark = "yes" if entry["available"] else "no (not installed)"
        print(f"{entry['name']:<16} available: {mark:<20} {entry['description']}")
    print("\nAlso accepted: a path to a Hugging Face model dir, a .gguf file, a native dir, or a hub id (online).")
    return 0


def _load(args: argparse.Namespace) -> Any:
    from interpkit.models import load_model
    from interpkit.models._device_map import parse_device_map

    device_map = parse_device_map(getattr(args, "device_map", None))
    return load_model(args.model, device=args.device, dtype=args.dtype, device_map=device_map)


def cmd_hooks(args: argparse.Namespace) -> int:
    model = _load(args)
    for name in model.hook_names():
        if args.filter and args.filter not in name:
            continue
        aliases = [a for a in model.hook_aliases(name) if a != name]
        print(name + (f"    (also: {', '.join(aliases)})" if aliases and args.aliases else ""))
    return 0


def cmd_sites(args: argparse.Namespace) -> int:
    from interpkit.sites import all_sites

    model = _load(args)
    for site in all_sites(model, args.kind):
        print(f"{site.label:<16} {site.hook}")
    return 0


def cmd_run_task(args: argparse.Namespace) -> int:
    from interpkit.metrics import clean_and_corrupt

    model = _load(args)
    task = _task_from_args(args, model)
    values = clean_and_corrupt(model, task)
    report = {
        "model": model.spec,
        "task": task.name,
        "n_examples": len(task),
        "metric": values["metric"],
        "clean": values["clean"],
        "corrupt": values["corrupt"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{task.name} on {model.spec} ({len(task)} examples), metric {values['metric']}:")
        print(f"  clean   {values['clean']:+.4f}")
        print(f"  corrupt {values['corrupt']:+.4f}")
    return 0


def _task_from_args(args: argparse.Namespace, model: Any) -> Any:
    from interpkit import tasks

    params = _parse_params(args.param)
    if args.n is not None:
        params["n"] = args.n
    if args.seed is not None:
        params["seed"] = args.seed
    return tasks.load(args.task, model, metric=args.metric, **params)


def _write_outputs(args: argparse.Namespace, result: Any, title: str) -> None:
    from pathlib import Path

    from interpkit.plots.report import write_report

    out = Path(args.out)
    command = "interpkit " + " ".join(sys.argv[1:]) if sys.argv else None
    result.provenance["command"] = command
    result.to_json(out / "result.json")
    write_report(
        out / "report.html",
        title,
        [("Scores", result.figure()), ("Summary", _summary(result))],
        result.provenance,
        command,
    )
    print(f"wrote {out / 'result.json'} and {out / 'report.html'}")


def _summary(result: Any) -> dict[str, Any]:
    top = result.top(5)
    return {
        "metric": result.metric,
        "clean": result.clean_value,
        "corrupt": result.corrupt_value,
        **{f"top {i + 1}": f"{label}: {value:+.4f}" for i, (label, value) in enumerate(top)},
    }


def cmd_patch(args: argparse.Namespace) -> int:
    check_out_dir(args.out)
    from interpkit.patching import patch

    model = _load(args)
    task = _task_from_args(args, model)
    result = patch(
        model,
        task,
        site=args.site,
        per_position=args.per_position,
        direction=args.direction,
        ablation=args.ablation,
        batch_size=args.batch_size,
    )
    for label, value in result.top(5):
        print(f"  {label:<30} {value:+.4f}")
    _write_outputs(args, result, f"Activation patching: {args.site} on {task.name} ({result.meta['direction']})")
    return 0


def cmd_attribute(args: argparse.Namespace) -> int:
    check_out_dir(args.out)
    from interpkit.attribution import attribute

    model = _load(args)
    task = _task_from_args(args, model)
    options: dict[str, Any] = _parse_params(args.option)
    if args.site is not None:
        options["site"] = args.site
    if args.method != "dla":
        options.setdefault("direction", args.direction)
    result = attribute(model, task, method=args.method, level=args.level, **options)
    for label, value in result.top(5):
        print(f"  {label:<30} {value:+.4f}")
    check = result.extras.get("check") if isinstance(result.extras, dict) else None
    if isinstance(check, dict) and "spearman" in check:
        print(f"  rank correlation with exact patching on {check['n']} sampled: {check['spearman']:+.3f}")
    _write_outputs(args, result, f"Attribution: {args.method} ({args.level}) on {task.name}")
    return 0


def cmd_circuit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from interpkit.attribution import attribute
    from interpkit.circuits import discover_circuit, faithfulness
    from interpkit.plots.report import write_report

    check_out_dir(args.out)
    model = _load(args)
    task = _task_from_args(args, model)
    options: dict[str, Any] = {"ig_steps": args.ig_steps} if args.method == "eap-ig" else {}
    if args.select == "acdc":
        circ = discover_circuit(model, task, select="acdc", tau=args.tau, ablation=args.ablation)
        scores = None
    else:
        scores = attribute(model, task, method=args.method, level="edge", direction=args.direction, **options)
        sized = args.n_edges is not None or args.threshold is not None
        circ = discover_circuit(
            model, task, scores=scores, select=args.select, n_edges=args.n_edges, threshold=args.threshold,
            target=None if sized else args.target, ablation=args.ablation,
        )  # fmt: skip
        if not sized:
            state = "reaches" if circ.meta["reached"] else "is the most faithful found; none reaches"
            print(f"  the smallest circuit found: {len(circ)} edges, {state} faithfulness {args.target}")
    rep = faithfulness(model, task, circ, ablation=args.ablation)
    out = Path(args.out)
    command = "interpkit " + " ".join(sys.argv[1:]) if sys.argv else None
    rep.provenance["command"] = command
    circ.save(out / "circuit.json")
    rep.to_json(out / "result.json")
    value = float(rep.scores[0])
    print(f"  {len(circ)} edges, {len(circ.nodes)} nodes; faithfulness ({args.ablation} ablation) {value:.3f}")
    sections: list = [
        ("Circuit", circ.figure()),
        ("Faithfulness", {"ablation": args.ablation, "edges": len(circ), "faithfulness": value}),
    ]
    if "curve" in circ.meta:
        sections.append(("Sizes searched (faithfulness of the pruned top-k)", circ.meta["curve"]))
    if scores is not None:
        sections.append(("Edge scores (top 20)", [{"edge": e, "score": round(v, 5)} for e, v in scores.top(20)]))
    write_report(out / "report.html", f"Circuit: {args.method} on {task.name}", sections, rep.provenance, command)
    print(f"wrote {out / 'circuit.json'}, {out / 'result.json'} and {out / 'report.html'}")
    return 0


EXAMPLES = {
    "models": "interpkit models",
    "hooks": "interpkit hooks --model toy-induction --filter attn",
    "sites": "interpkit sites --model toy-induction --kind z",
    "run-task": "interpkit run-task --model smollm2-135m --task ioi --n 16",
    "patch": "interpkit patch --model smollm2-135m --task ioi --n 8 --site head_out --out runs/ioi-heads",
    "circuit": "interpkit circuit --model toy-induction --task induction --n 16 --method eap-ig --n-edges 30 "
    "--ablation mean --out runs/toy-circuit",
    "attribute": "interpkit attribute --model smollm2-135m --task ioi --n 16 --method eap-ig --level edge --out runs/ioi-eap",
}


def _example(name: str) -> dict[str, Any]:
    return {"epilog": f"example:\n  {EXAMPLES[name]}", "formatter_class": argparse.RawDescriptionHelpFormatter}


def with_model(p: argparse.ArgumentParser, device_map: bool = True) -> None:
    """The model options every model-loading subcommand takes."""
    p.add_argument("--model", default="smollm2-135m", help="registry name, path or hub id (default: smollm2-135m)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    if device_map:
        from interpkit.models._device_map import CLI_HELP

        p.add_argument("--device-map", default=None, help=CLI_HELP)
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model's own)")


def with_task(p: argparse.ArgumentParser) -> None:
    """The task options of the subcommands that run a task."""
    p.add_argument("--task", required=True, help="induction, ioi, factual, greater-than, or a .jsonl file")
    p.add_argument("--n", type=int, default=None, help="number of examples (generators only)")
    p.add_argument("--seed", type=int, default=None, help="generator seed")
    p.add_argument("--metric", default=None, help="logit_diff (default), logprob, prob, kl, accuracy")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="extra generator parameter")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interpkit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", **_example("models"), help="list registry models and whether they load here")
    p.set_defaults(fn=cmd_models)

    p = sub.add_parser("hooks", **_example("hooks"), help="list a model's hook points (aliases folded)")
    with_model(p)
    p.add_argument("--filter", default=None, help="show only names containing this text")
    p.add_argument("--aliases", action="store_true", help="also print every other name of each hook point")
    p.set_defaults(fn=cmd_hooks)

    p = sub.add_parser("sites", **_example("sites"), help="list a model's component labels (L3H5, L3.mlp, ...)")
    with_model(p)
    p.add_argument(
        "--kind", default=None, help="only this kind: resid_pre, attn_out, mlp_out, z, q, k, v, pattern, ..."
    )
    p.set_defaults(fn=cmd_sites)

    p = sub.add_parser("run-task", **_example("run-task"), help="print a task's metric on the clean and corrupt runs")
    with_model(p)
    with_task(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(fn=cmd_run_task)

    _add_analysis_parsers(sub)

    from interpkit.cache.cli import add_parsers as add_cache_parsers

    add_cache_parsers(sub, with_model)
    from interpkit.probing.cli import add_parsers as add_probe_parsers

    # The probe commands load their model themselves, without a device map: no --device-map there.
    add_probe_parsers(sub, with_model)
    from interpkit.dictionaries.cli import add_parsers as add_dictionary_parsers

    add_dictionary_parsers(sub, lambda p: with_model(p, device_map=False))
    return parser


def _add_analysis_parsers(sub: Any) -> None:
    """``patch``, ``attribute`` and ``circuit``."""
    p = sub.add_parser(
        "patch",
        **_example("patch"),
        help="activation patching sweep over one site kind; writes result.json + report.html",
    )
    with_model(p)
    with_task(p)
    p.add_argument(
        "--site",
        required=True,
        help="resid_pre, resid_mid, resid_post, attn_out, mlp_out, head_out, head_q, head_k, head_v, head_pattern",
    )
    p.add_argument("--per-position", action="store_true", help="patch each position separately")
    p.add_argument(
        "--direction", default="denoise", help="denoise (clean into corrupt, default) or noise (corrupt into clean)"
    )
    p.add_argument("--ablation", default=None, help="zero, mean, resample or counterfactual (replaces --direction)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per forward (default: from free memory)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(fn=cmd_patch)

    p = sub.add_parser(
        "attribute", **_example("attribute"), help="node or edge attribution; writes result.json + report.html"
    )
    with_model(p)
    with_task(p)
    p.add_argument("--method", default="eap", help="node: atp, atp*, ig, exact; edge: eap, eap-ig, exact")
    p.add_argument("--level", default="edge", help="node or edge (default: edge)")
    p.add_argument("--site", default=None, help="node level: the site kind (default: head_out)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra method option")
    p.add_argument("--direction", default="denoise", help="denoise (default) or noise")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(fn=cmd_attribute)

    p = sub.add_parser(
        "circuit", **_example("circuit"), help="discover a circuit and its faithfulness; writes circuit.json too"
    )
    with_model(p)
    with_task(p)
    p.add_argument("--method", default="eap-ig", help="edge scores: eap, eap-ig (default) or exact")
    p.add_argument("--select", default="top_n", help="top_n (default), threshold, greedy or acdc")
    p.add_argument("--n-edges", type=int, default=None, help="edges kept (top_n, greedy); default: see --target")
    p.add_argument(
        "--target", type=float, default=0.9, help="without --n-edges: the smallest circuit reaching this faithfulness"
    )
    p.add_argument("--direction", default="denoise", help="edge scores: denoise (default) or noise")
    p.add_argument("--threshold", type=float, default=None, help="|score| kept (threshold)")
    p.add_argument("--tau", type=float, default=None, help="ACDC's threshold on the metric change")
    p.add_argument("--ig-steps", type=int, default=5, help="EAP-IG steps (default 5)")
    p.add_argument("--ablation", default="counterfactual", help="zero, mean, resample or counterfactual (default)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(fn=cmd_circuit)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except InterpkitError as err:
        print(f"interpkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
