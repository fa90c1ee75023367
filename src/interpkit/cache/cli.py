"""``interpkit cache`` and ``interpkit cache-info``: the activation store from the command line.

    interpkit cache --model smollm2-135m --data texts.txt --sites "L*.resid_post" --out acts/
    interpkit cache-info acts/ --verify
    torchrun --nproc_per_node=2 -m interpkit.cli cache --model M --data F --sites S --out D

``--data`` is a text file (one text per line), a ``.jsonl`` file (a ``text`` field, or ``ids``
for token ids) or a Hugging Face ``datasets`` folder (needs the optional ``datasets`` package).
:func:`add_parsers` adds both subcommands to interpkit's main parser; ``python -m
interpkit.cache.cli`` runs them on their own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from interpkit.errors import InterpkitError


def _default_with_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="registry name, path or hub id (default: smollm2-135m)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    from interpkit.models._device_map import CLI_HELP

    p.add_argument("--device-map", default=None, help=CLI_HELP)
    p.add_argument("--dtype", default=None, help="model dtype: float32, bfloat16 or float16 (default: its own)")


def _sites(values: Sequence[str]) -> list[str]:
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def cmd_cache(args: argparse.Namespace) -> int:
    from interpkit.cache import harvest
    from interpkit.models import load_model
    from interpkit.models._device_map import parse_device_map

    device, device_map = args.device, parse_device_map(getattr(args, "device_map", None))
    if device is None and device_map is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():  # one GPU per torchrun process
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    model = load_model(args.model, device=device, dtype=args.dtype, device_map=device_map)
    store = harvest(
        model,
        args.data,
        _sites(args.sites),
        args.out,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        dtype=args.store_dtype,
        max_length=args.max_length,
        too_long=args.too_long,
        text_field=args.text_field,
        split=args.split,
        shard_mb=args.shard_mb,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {len(store)} tokens of {store.n_examples} examples in {store.n_shards} shards to {store.path}")
    return 0


def info(path: str, verify: bool = False) -> dict[str, Any]:
    """A summary of the store in ``path`` (what ``cache-info`` prints)."""
    from interpkit.cache import ActivationStore

    store = ActivationStore(path)
    if verify:
        store.verify()
    m = store.manifest
    return {
        "path": str(store.path),
        "model": m["model"],
        "sites": [{"key": s["key"], "label": s["label"], "shape": s["shape"]} for s in m["sites"]],
        "dtype": m["dtype"],
        "n_tokens": len(store),
        "n_examples": store.n_examples,
        "n_shards": store.n_shards,
        "bytes": sum(s["bytes"] for s in m["shards"]),
        "n_truncated": m.get("n_truncated", 0),
        "settings": m["settings"],
        "verified": verify,
    }


def cmd_cache_info(args: argparse.Namespace) -> int:
    report = info(args.store, verify=args.verify)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    model = report["model"]
    print(f"store      {report['path']}")
    print(f"model      {model['spec']} ({model['name']}, {model['dtype']}), weights {model['weights_hash'][:23]}")
    print(f"tokens     {report['n_tokens']} in {report['n_examples']} examples, {report['n_truncated']} truncated")
    print(f"shards     {report['n_shards']} ({report['bytes'] / 2**20:.1f} MiB), dtype {report['dtype']}")
    for site in report["sites"]:
        label = f"  ({site['label']})" if site["label"] and site["label"] != site["key"] else ""
        print(f"site       {site['key']}{label}  {tuple(site['shape'])}")
    if report["verified"]:
        print("checksums  ok")
    return 0


def add_parsers(subparsers: Any, with_model: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Add ``cache`` and ``cache-info`` to ``subparsers``; ``with_model`` adds --model/--device/--dtype."""
    with_model = with_model or _default_with_model
    p = subparsers.add_parser(
        "cache",
        epilog='example:\n  interpkit cache --model smollm2-135m --data texts.txt --sites "L*.resid_post" --out acts/',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="harvest activations over a dataset into a sharded store on disk",
    )
    with_model(p)
    p.add_argument("--data", required=True, help="text file (one text per line), .jsonl, or a datasets folder")
    p.add_argument("--sites", required=True, nargs="+", help="site labels, hook names or wildcards (L*.resid_post)")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes an interrupted harvest)")
    p.add_argument("--store-dtype", default="float16", help="storage dtype: float16 (default), bfloat16, float32")
    p.add_argument("--batch-size", type=int, default=None, help="examples per batch (default: fit 4096 tokens)")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens")
    p.add_argument("--max-length", type=int, default=None, help="tokens per text at most (default: the context)")
    p.add_argument(
        "--too-long",
        choices=["truncate", "error"],
        default="truncate",
        help="longer texts: (default) keep their start, or refuse",
    )
    p.add_argument("--text-field", default="text", help="JSONL / dataset field holding the text (default: text)")
    p.add_argument("--split", default=None, help="dataset split, for a datasets folder with several")
    p.add_argument("--shard-mb", type=float, default=64.0, help="target shard size in MiB; bounds memory (default 64)")
    p.add_argument("--overwrite", action="store_true", help="replace a different harvest already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_cache)

    p = subparsers.add_parser(
        "cache-info",
        epilog="example:\n  interpkit cache-info acts/ --verify",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="summarise an activation store (and verify its checksums)",
    )
    p.add_argument("store", help="the store's folder")
    p.add_argument("--verify", action="store_true", help="check every shard's sha256")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(fn=cmd_cache_info)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interpkit.cache.cli", description=__doc__.split("\n\n")[0])
    add_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except InterpkitError as err:
        print(f"interpkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
