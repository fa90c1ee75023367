"""``interpkit probe`` and ``interpkit probe-collect``: probing from the command line.

    interpkit probe-collect --model smollm2-135m --data experiments/data/subject_number.jsonl \\
        --positions last --out runs/number-acts
    interpkit probe --acts runs/number-acts --out runs/number-probe --controls
    interpkit cache --model smollm2-135m --data texts.txt --sites "L*.resid_post" --out acts/
    interpkit probe --acts acts/ --labels labels.txt --positions last --out runs/probe

``--acts`` is a probe dataset folder (written by ``probe-collect``; labels inside, ``--labels``
replaces them) or an activation store folder (written by ``interpkit cache``; ``--labels``
needed, one per stored example). A labels file is a text file with one label per line or a
``.jsonl`` file whose lines are values or objects with a ``label`` field. ``probe`` writes
``result.json`` (test metrics per site with standard errors, the probe weights) and
``report.html``; with ``--controls`` also ``shuffled.json`` and ``control.json`` and their bands.
:func:`add_parsers` adds both subcommands to interpkit's main parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from interpkit.probing._errors import ProbeError


def _sites(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def read_labels(path: str) -> list[Any]:
    """Labels from a text file (one per line) or JSONL (values, or objects with a ``label`` field)."""
    p = Path(path)
    if not p.is_file():
        raise ProbeError(f"labels file {path!r} does not exist")
    lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if p.suffix not in (".jsonl", ".json"):
        return [line.strip() for line in lines]
    out = []
    for i, line in enumerate(lines, 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeError(f"{path}, line {i}: not JSON ({exc.msg})") from None
        if isinstance(value, dict):
            if "label" not in value:
                raise ProbeError(f"{path}, line {i}: an object needs a 'label' field; it has {sorted(value)}")
            value = value["label"]
        out.append(value)
    return out


def _dataset(args: argparse.Namespace) -> Any:
    from interpkit.probing._dataset import ProbeDataset
    from interpkit.probing._store import from_store

    folder = Path(args.acts)
    split = tuple(float(x) for x in args.split.split(","))
    if (folder / "dataset.json").is_file():
        ds = ProbeDataset.load(folder)
        if args.sites:
            ds = ds.select_sites(_sites(args.sites))
        if args.labels:
            import dataclasses

            from interpkit.probing._dataset import encode_labels

            y, classes = encode_labels(read_labels(args.labels), ds.source["positions"], args.kind)
            ds = dataclasses.replace(ds, y=y.to(ds.y.device), classes=classes)
        return ds.resplit(split, args.seed)
    if (folder / "manifest.json").is_file():
        if not args.labels:
            raise ProbeError(f"{args.acts!r} is an activation store: give --labels (one per stored example)")
        return from_store(
            folder,
            read_labels(args.labels),
            _sites(args.sites),
            args.positions,
            kind=args.kind,
            split=split,
            seed=args.seed,
        )
    raise ProbeError(f"{args.acts!r} is neither a probe dataset (dataset.json) nor an activation store (manifest.json)")


def cmd_probe(args: argparse.Namespace) -> int:
    from interpkit.plots import accuracy_by_layer, selectivity_figure
    from interpkit.plots.report import write_report
    from interpkit.probing._controls import control_task, shuffled_labels
    from interpkit.probing._probes import probe

    ds = _dataset(args)
    print(ds)
    out = Path(args.out)
    command = "interpkit " + " ".join(sys.argv[1:]) if sys.argv else None
    result = probe(ds, args.method)
    result.provenance["command"] = command
    shuffled = control = None
    sections: list[tuple[str, Any]] = []
    if args.controls and ds.is_classification:
        shuffled = shuffled_labels(ds, args.method, seed=args.seed)
        shuffled.to_json(out / "shuffled.json")
        try:
            control = control_task(ds, args.method, seed=args.seed)
            control.to_json(out / "control.json")
            sections.append(("Selectivity", selectivity_figure(control)))
        except ProbeError as exc:
            print(f"no control task: {exc}")
    metric = result.labels["metric"][0]
    sections.insert(0, (f"Test {metric} by site", accuracy_by_layer(result, shuffled, control)))
    values = result.scores[:, 0, 0].tolist()
    best = max(range(len(values)), key=lambda i: values[i])
    summary = {"method": args.method, "rows": result.meta["rows"], "best site": f"{ds.sites[best]}: {values[best]:.4f}"}
    sections.append(("Summary", summary))
    result.to_json(out / "result.json")
    write_report(out / "report.html", f"Probes ({args.method})", sections, result.provenance, command)
    for site, value, se in zip(ds.sites, values, result.scores[:, 0, 1].tolist(), strict=True):
        print(f"  {site:<28} {metric} {value:.4f} +- {se:.4f}")
    print(f"wrote {out / 'result.json'} and {out / 'report.html'}")
    return 0


def cmd_probe_collect(args: argparse.Namespace) -> int:
    from interpkit.models import load_model
    from interpkit.models._device_map import parse_device_map
    from interpkit.probing._dataset import collect

    rows = []
    for i, line in enumerate(Path(args.data).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ProbeError(f"{args.data}, line {i}: not JSON ({exc.msg})") from None
    missing = [
        i
        for i, r in enumerate(rows, 1)
        if not isinstance(r, dict) or not ({"text", "ids"} & set(r)) or "label" not in r
    ]
    if missing:
        raise ProbeError(f"{args.data}: lines {missing[:5]} lack a 'text' (or 'ids') or a 'label' field")
    device_map = parse_device_map(getattr(args, "device_map", None))
    model = load_model(args.model, device=args.device, dtype=args.dtype, device_map=device_map)
    with_answers = all("answer" in r and "wrong" in r for r in rows)
    ds = collect(
        model,
        [r["text"] if "text" in r else r["ids"] for r in rows],
        [r["label"] for r in rows],
        _sites(args.sites),
        args.positions,
        answers=[r["answer"] for r in rows] if with_answers else None,
        wrongs=[r["wrong"] for r in rows] if with_answers else None,
        kind=args.kind,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    ds.save(args.out)
    print(f"{ds}\nwrote {args.out}")
    return 0


def add_parsers(subparsers: Any, with_model: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``probe`` and ``probe-collect`` to interpkit's subcommand parser."""
    p = subparsers.add_parser(
        "probe",
        epilog="example:\n  interpkit probe --acts runs/number-acts --out runs/number-probe --controls",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="fit probes on every site of a probe dataset or activation store",
    )
    p.add_argument("--acts", required=True, help="probe dataset folder (probe-collect) or activation store (cache)")
    p.add_argument("--labels", default=None, help="labels file: one per line, or JSONL values / {'label': ...}")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sites", action="append", default=None, help="sites to probe (default: all held)")
    p.add_argument("--positions", default="last", help="for a store: last, all (default: last)")
    p.add_argument("--method", default="logistic", help="logistic, ridge or diff_means (default: logistic)")
    p.add_argument("--kind", default=None, help="classification or regression (default: from the labels)")
    p.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test fractions over examples")
    p.add_argument("--seed", type=int, default=0, help="split and control seed")
    p.add_argument("--controls", action="store_true", help="also shuffled labels and a Hewitt-Liang control task")
    p.set_defaults(fn=cmd_probe)

    p = subparsers.add_parser(
        "probe-collect",
        epilog="example:\n  interpkit probe-collect --model smollm2-135m --data experiments/data/subject_number.jsonl "
        "--positions last --out runs/number-acts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="collect a labelled probe dataset from a JSONL of texts",
    )
    with_model(p)
    p.add_argument("--data", required=True, help="JSONL: text (or ids), label; answer, wrong for causal checks")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sites", action="append", default=None, help="sites (default: every layer's resid_post)")
    p.add_argument("--positions", default="last", help="last, all, marked ([[word]] in the text), match:REGEX")
    p.add_argument("--kind", default=None, help="classification or regression (default: from the labels)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_probe_collect)
