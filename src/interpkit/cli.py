"""``interpkit``: the command line over the library's functions.

    interpkit models                                   # registry names and whether they load here
    interpkit hooks --model toy-induction              # real hook points, aliases folded
    interpkit sites --model toy-induction --kind z     # component labels (L0H1, L1.resid_pre, ...)
    interpkit run-task --model smollm2-135m --task ioi --n 16
                                                       # metric on the clean and corrupt runs

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
        except json.JSONDecodeError:
            params[key] = value
    return params


def cmd_models(args: argparse.Namespace) -> int:
    from interpkit.models import list_models

    for entry in list_models():
        mark = "yes" if entry["available"] else "no (not installed)"
        print(f"{entry['name']:<16} available: {mark:<20} {entry['description']}")
    print("\nAlso accepted: a path to a Hugging Face model dir, a .gguf file, a native dir, or a hub id (online).")
    return 0


def _load(args: argparse.Namespace) -> Any:
    from interpkit.models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


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
    from interpkit import tasks
    from interpkit.metrics import clean_and_corrupt

    model = _load(args)
    params = _parse_params(args.param)
    if args.n is not None:
        params["n"] = args.n
    if args.seed is not None:
        params["seed"] = args.seed
    task = tasks.load(args.task, model, metric=args.metric, **params)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interpkit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_model(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="smollm2-135m", help="registry name, path or hub id (default: smollm2-135m)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
        p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model's own)")

    p = sub.add_parser("models", help="list registry models and whether they load here")
    p.set_defaults(fn=cmd_models)

    p = sub.add_parser("hooks", help="list a model's hook points (aliases folded)")
    with_model(p)
    p.add_argument("--filter", default=None, help="show only names containing this text")
    p.add_argument("--aliases", action="store_true", help="also print every other name of each hook point")
    p.set_defaults(fn=cmd_hooks)

    p = sub.add_parser("sites", help="list a model's component labels (L3H5, L3.mlp, ...)")
    with_model(p)
    p.add_argument(
        "--kind", default=None, help="only this kind: resid_pre, attn_out, mlp_out, z, q, k, v, pattern, ..."
    )
    p.set_defaults(fn=cmd_sites)

    p = sub.add_parser("run-task", help="print a task's metric on the clean and corrupt runs")
    with_model(p)
    p.add_argument("--task", required=True, help="induction, ioi, factual, greater-than, or a .jsonl file")
    p.add_argument("--n", type=int, default=None, help="number of examples (generators only)")
    p.add_argument("--seed", type=int, default=None, help="generator seed")
    p.add_argument("--metric", default=None, help="logit_diff (default), logprob, prob, kl, accuracy")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="extra generator parameter")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(fn=cmd_run_task)
    return parser


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
