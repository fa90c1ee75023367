"""Every code example in README.md runs, so a README example can never break silently.

The rules (what a README author needs to know):

* **Python blocks** (```` ```python ````) all run. The blocks of one ``## `` section share one
  namespace and run in order; every section starts from a fresh namespace, so each section
  imports and loads what it uses (a reader can copy one section alone).
* A block is left out only by an HTML comment on the line before its fence,
  ``<!-- readme-test: skip (the reason) -->``; a skip without a reason fails the test.
  ``<!-- readme-test: slow -->`` marks a heavy block: the default run executes its section up to
  that block, and the ``integration`` run (``pytest -m integration``) executes the whole section.
* **Shell blocks** (```` ```bash ````) show set-up, GPU and cluster commands, so they run only when
  marked ``<!-- readme-test: run -->`` (or ``slow``): each command must be ``interpkit ...`` or
  ``.venv/bin/interpkit ...`` and runs in this process as the console script does,
  ``interpkit.cli.main(argv)`` (a subprocess would spend most of its time importing torch), and
  must return 0.
* Everything runs in a temporary working directory (files the examples write, ``runs/...``, land
  there), which holds a link ``experiments`` to the repository's ``experiments/`` for the example
  data. ``ik.load_model(spec)`` with no other argument (and the command line's loads with no
  ``--device``/``--dtype``/``--device-map``) is cached for the module, so the embedded model
  loads once (a block that changes the model in place, e.g. ``model.to(...)``, must load it
  with arguments). Warnings are errors here as in the rest of the suite, so an example that warns
  fails.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<kind>\w+)\s*(?:\((?P<reason>[^)]*)\))?\s*-->$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")


@dataclass
class Block:
    section: str
    lang: str
    line: int  # README line of the first line of code (1-based)
    code: str
    marker: str | None
    reason: str | None


def parse(text: str) -> list[Block]:
    """The fenced code blocks of ``text`` with their section and the marker on the line before each."""
    blocks, section, lines = [], "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        fence = FENCE.match(line)
        if fence is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = MARKER.match(prev)
        blocks.append(
            Block(
                section,
                fence["lang"],
                i + 2,
                "\n".join(lines[i + 1 : end]),
                mark["kind"] if mark else None,
                mark["reason"] if mark else None,
            )
        )
        i = end + 1
    return blocks


BLOCKS = parse(README.read_text(encoding="utf-8"))
PY = [b for b in BLOCKS if b.lang == "python"]
SECTIONS = list(dict.fromkeys(b.section for b in PY))
SLOW_SECTIONS = [s for s in SECTIONS if any(b.marker == "slow" for b in PY if b.section == s)]
SHELL = [b for b in BLOCKS if b.lang == "bash" and b.marker in ("run", "slow")]


def test_markers_are_known_and_skips_give_a_reason():
    text = README.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(text, start=1):
        if "readme-test" not in line:
            continue
        mark = MARKER.match(line.strip())
        assert mark, f"README.md:{number}: malformed marker {line!r}"
        assert mark["kind"] in ("skip", "slow", "run"), f"README.md:{number}: unknown marker {mark['kind']!r}"
        if mark["kind"] == "skip":
            assert (mark["reason"] or "").strip(), f"README.md:{number}: a skip needs a reason: skip (why)"
        after = next(ln for ln in text[number:] if ln.strip())
        assert after.startswith("```"), f"README.md:{number}: a marker must come right before a code block"
    assert len(PY) >= 10 and SHELL, "the README lost its examples (or this parser broke)"
    assert not [b for b in PY if b.marker == "run"], "python blocks run anyway: 'run' is for shell blocks"


_MODELS: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def _drop_cached_models():
    """The cached models live for this module only (the embedded model holds about 0.6 GB)."""
    yield
    _MODELS.clear()


@pytest.fixture
def readme_dir(tmp_path, monkeypatch):
    """A scratch working directory with ``experiments/`` linked in, and ``ik.load_model(spec)`` cached
    (also as the command line calls it: ``interpkit.models.load_model`` with its options unset)."""
    import interpkit as ik
    import interpkit.models

    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    load = interpkit.models.load_model

    def cached(spec, *args, **kwargs):
        if args or any(v is not None for v in kwargs.values()) or not isinstance(spec, str):
            return load(spec, *args, **kwargs)
        if spec not in _MODELS:
            _MODELS[spec] = load(spec)
        return _MODELS[spec]

    monkeypatch.setattr(ik, "load_model", cached)
    monkeypatch.setattr(interpkit.models, "load_model", cached)
    return tmp_path


def _run_section(section: str, stop_at_slow: bool) -> None:
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for block in (b for b in PY if b.section == section):
        if block.marker == "skip":
            continue
        if block.marker == "slow" and stop_at_slow:
            break
        code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
        start = time.perf_counter()
        exec(code, namespace)  # an exception here fails the test, with the README line in the traceback
        print(f"README.md:{block.line} ({section}): {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("section", SECTIONS)
def test_readme_section(section, readme_dir):
    _run_section(section, stop_at_slow=True)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("section", SLOW_SECTIONS)
def test_readme_section_with_slow_blocks(section, readme_dir):
    _run_section(section, stop_at_slow=False)


def _commands(code: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    return [cmd for cmd in (shlex.split(line, comments=True) for line in joined.splitlines()) if cmd]


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=[pytest.mark.integration, pytest.mark.slow] if b.marker == "slow" else []) for b in SHELL],
    ids=[f"line{b.line}" for b in SHELL],
)
def test_readme_shell_block(block, readme_dir, capsys):
    from interpkit.cli import main

    for cmd in _commands(block.code):
        assert cmd[0] in ("interpkit", ".venv/bin/interpkit"), f"README.md:{block.line}: not an interpkit command"
        rc = main(cmd[1:])
        out = capsys.readouterr()
        assert rc == 0, f"README.md:{block.line}: {shlex.join(cmd)} failed:\n{out.out}\n{out.err}"
