"""The on-disk store's layout and its JSON manifest.

A store folder holds ``manifest.json`` and ``shard-00000.safetensors, shard-00001...``. Each
shard holds, for its tokens in order, one tensor per site ``(n_tokens, *site_shape)`` plus
``tokens``, ``example`` and ``position`` (int64). The manifest records what was harvested and
how (model spec and weights hash, sites with their shapes, storage dtype, the settings that fix
the shard plan), the counts, every shard's sha256, byte size and example range, and finally the
token ids of every example (``"tokens"``, one list per example, written last).

While a harvest runs, the manifest says ``"status": "in_progress"`` and each finished shard is
recorded in ``.progress/shard-NNNNN.json`` (written after the shard itself is in place). When
every shard is done, the complete manifest replaces it and ``.progress`` is removed. Nothing in
the manifest depends on time, process count or interruptions, so a resumed or data-parallel
harvest leaves exactly the files an uninterrupted single-process one does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.cache._errors import CacheError
from interpkit.cache._integrity import check_manifest, recorded_shard, shard_name, shard_path
from interpkit.cache._safetensors import TMP_MARK

if TYPE_CHECKING:
    from interpkit.models import Model

FORMAT = "interpkit-activations/1"
MANIFEST = "manifest.json"
PROGRESS = ".progress"
IDENTITY_KEYS = ("model", "sites", "dtype", "settings")
# The temporary files this module and the shard writer leave when killed mid-write, and nothing else.
_TEMP = re.compile(r"\.(shard-\d{5,}\.safetensors|manifest\.json|shard-\d{5,}\.json)" + re.escape(TMP_MARK) + r"\d+")
_RECORD = re.compile(r"shard-\d{5,}\.json")

__all__ = ["shard_name"]


def model_block(model: Model) -> dict[str, Any]:
    """What identifies the model: its spec, name, dtype and a hash of its weights."""
    import torch

    weights = model.weights_hash
    if weights is None:  # models built in code: hash the parameters themselves
        digest = hashlib.sha256()
        for name, t in sorted(model.bridge.state_dict().items()):
            digest.update(name.encode())
            digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        weights = "state_dict:" + digest.hexdigest()
    return {"spec": model.spec, "name": model.name, "weights_hash": weights, "dtype": str(model.dtype).split(".")[-1]}


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"cannot read {str(path)!r}: {exc}") from None
    except RecursionError:
        raise CacheError(f"cannot read {str(path)!r}: JSON nested too deeply") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CacheError(f"{str(path)!r} is not an interpkit activation store manifest (format {FORMAT})")
    check_manifest(data, str(path))
    return data


def differences(existing: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """Readable differences between a store's identity and a requested harvest's."""
    out = []
    old_model, new_model = existing.get("model", {}), identity["model"]
    if old_model.get("weights_hash") != new_model["weights_hash"] or old_model.get("dtype") != new_model["dtype"]:
        out.append(
            f"model: {old_model.get('spec')!r} ({old_model.get('dtype')}) vs {new_model['spec']!r} ({new_model['dtype']})"
        )
    old_sites = [s["key"] for s in existing.get("sites", [])]
    new_sites = [s["key"] for s in identity["sites"]]
    if old_sites != new_sites:
        out.append(f"sites: {old_sites} vs {new_sites}")
    if existing.get("dtype") != identity["dtype"]:
        out.append(f"dtype: {existing.get('dtype')} vs {identity['dtype']}")
    old_settings, new_settings = existing.get("settings", {}), identity["settings"]
    for key in sorted(set(old_settings) | set(new_settings)):
        if old_settings.get(key) != new_settings.get(key):
            out.append(f"{key}: {old_settings.get(key)!r} vs {new_settings.get(key)!r}")
    return out


def _progress_records(out: Path) -> list[Path]:
    folder = out / PROGRESS
    if folder.is_symlink() or not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if _RECORD.fullmatch(p.name) and p.is_file() and not p.is_symlink()]


def _temporary_records(out: Path) -> list[Path]:
    folder = out / PROGRESS
    if folder.is_symlink() or not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if _TEMP.fullmatch(p.name) and not p.is_symlink()]


def _remove_store(out: Path, existing: dict[str, Any] | None) -> None:
    """Delete the harvest in ``out``: the files its manifest and progress records name, and nothing else.

    A user's own files in the folder (``shard-notes.txt``, ``shard-backup.safetensors``) stay.
    """
    named = []
    if existing is not None and existing.get("status") == "complete":
        named = [(i, e["file"]) for i, e in enumerate(existing["shards"])]
    for record in _progress_records(out):
        try:
            entry = json.loads(record.read_text(encoding="utf-8"))
            named.append((int(entry["index"]), entry["file"]))
        except (OSError, ValueError, TypeError, KeyError, RecursionError):
            pass  # a record that cannot be read names nothing
        record.unlink()
    for index, name in named:
        try:
            shard_path(out, index, name).unlink(missing_ok=True)
        except CacheError:
            continue  # a name pointing anywhere else is never followed
    for temporary in _temporary_records(out):
        temporary.unlink(missing_ok=True)
    progress = out / PROGRESS
    if progress.is_dir() and not progress.is_symlink() and not any(progress.iterdir()):
        progress.rmdir()
    (out / MANIFEST).unlink(missing_ok=True)


def prepare(out: Path, identity: dict[str, Any], *, writer: bool, overwrite: bool) -> str:
    """Check ``out`` against the requested harvest; the writer rank creates it. Returns the mode.

    Modes: ``"fresh"`` (nothing there yet), ``"resume"`` (an interrupted harvest of the same
    thing), ``"complete"`` (a finished harvest of the same thing). A folder holding something
    else is refused, never mixed.
    """
    if out.exists() and not out.is_dir():
        raise CacheError(f"out_dir {str(out)!r} exists and is not a folder")
    existing = read_manifest(out) if out.is_dir() else None
    mode = "fresh"
    if existing is not None:
        diffs = differences(existing, identity)
        if diffs and not overwrite:
            raise CacheError(
                f"out_dir {str(out)!r} already holds a different harvest ({'; '.join(diffs)}): refusing to mix "
                "them. Choose another out_dir, or pass overwrite=True (--overwrite) to replace it"
            )
        mode = "fresh" if diffs else ("complete" if existing.get("status") == "complete" else "resume")
    elif out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise CacheError(f"out_dir {str(out)!r} is not empty and holds no interpkit activation store")
    if not writer:
        return mode
    try:
        if mode == "fresh" and out.is_dir():
            _remove_store(out, existing)
        out.mkdir(parents=True, exist_ok=True)
        for p in out.iterdir():  # temporary files of an interrupted run
            if _TEMP.fullmatch(p.name):
                p.unlink(missing_ok=True)
        if mode != "complete":
            (out / PROGRESS).mkdir(exist_ok=True)
        else:  # killed between writing the complete manifest and removing the records
            shutil.rmtree(out / PROGRESS, ignore_errors=True)
        if mode == "fresh":
            write_json(out / MANIFEST, {"format": FORMAT, "status": "in_progress", **identity})
    except OSError as exc:
        raise CacheError(f"cannot write to out_dir {str(out)!r}: {exc.strerror or exc}") from None
    return mode


def write_json(path: Path, data: dict[str, Any], tail: Iterable[str] = (), tail_key: str | None = None) -> None:
    """Write JSON atomically; ``tail`` lines (already JSON) become the list ``tail_key``, streamed."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            text = json.dumps(data, indent=1)
            if tail_key is None:
                fh.write(text + "\n")
            else:
                fh.write(text[:-2] + f',\n "{tail_key}": [')
                for i, line in enumerate(tail):
                    fh.write(("\n  " if i == 0 else ",\n  ") + line)
                fh.write("\n ]\n}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def record_progress(out: Path, entry: dict[str, Any]) -> None:
    try:
        write_json(out / PROGRESS / f"{Path(entry['file']).stem}.json", entry)
    except OSError as exc:
        raise CacheError(
            f"could not record shard {entry['file']} in {str(out)!r}: {exc.strerror or exc} (disk full?); "
            "rerun the same harvest to resume"
        ) from None


def done_shards(out: Path, existing: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    """Shards already finished: from the complete manifest, else from the progress records."""
    if existing is not None and existing.get("status") == "complete":
        return {i: e for i, e in enumerate(existing["shards"])}
    done = {}
    for p in sorted(_progress_records(out)):
        try:
            entry = recorded_shard(out, json.loads(p.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue  # an unreadable record: the shard is simply redone
        if entry is not None:  # its shard re-hashed: one damaged while interrupted is redone
            done[entry["index"]] = entry
    return done


def finish(out: Path, identity: dict[str, Any], entries: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    """Write the complete manifest (tokens streamed from the shards) and drop the progress records."""
    from safetensors import safe_open

    start = 0
    shards = []
    for entry in entries:
        shards.append({**{k: v for k, v in entry.items() if k != "index"}, "token_start": start})
        start += entry["n_tokens"]

    def token_lines() -> Iterable[str]:
        import torch

        for entry in entries:
            with safe_open(str(out / entry["file"]), framework="pt") as fh:
                tokens = fh.get_tensor("tokens").tolist()
                example = fh.get_tensor("example")
            first, stop = entry["examples"]
            counts = torch.bincount(example - first, minlength=stop - first).tolist() if len(tokens) else []
            counts = counts or [0] * (stop - first)
            at = 0
            for n in counts:
                yield json.dumps(tokens[at : at + n], separators=(",", ":"))
                at += n

    n_examples = sum(e["examples"][1] - e["examples"][0] for e in entries)
    manifest = {
        "format": FORMAT,
        "status": "complete",
        **identity,
        **extra,
        "n_examples": n_examples,
        "n_tokens": start,
        "n_shards": len(entries),
        "shards": shards,
    }
    try:
        write_json(out / MANIFEST, manifest, token_lines(), "tokens")
    except OSError as exc:
        raise CacheError(
            f"could not write the manifest of {str(out)!r}: {exc.strerror or exc} (disk full?); every shard is "
            "kept: rerun the same harvest to write it"
        ) from None
    shutil.rmtree(out / PROGRESS, ignore_errors=True)
