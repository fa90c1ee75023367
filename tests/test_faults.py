"""Faults: killed harvests resume to the same bytes, hooks never outlive a failing call, interrupted
CLI runs leave nothing that looks complete, and nothing is ever unpickled.

The harvest is killed with SIGKILL in a forked child at seeded points: the k-th of the "events"
a harvest goes through (a block's forward, each ``os.fsync`` and ``os.replace``, before or
after), so the kills land mid-forward, mid-write, between a file's fsync and its rename, and
between a shard's rename and its progress record.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
from pathlib import Path

import pytest
import torch

import interpkit as ik
import interpkit.cache as ikc
import interpkit.patching._api as api
import interpkit.runtime._rows as rows
from interpkit.hooks import active_hook_count
from interpkit.patching import ablate, path_patch
from tiny_models import random_task

SRC = Path(ik.__file__).parent
SITES = ["L*.resid_post", "L1H2", "ln_final.hook_scale"]


def _data(n: int = 30, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 61, (int(k),), generator=g).tolist() for k in torch.randint(1, 25, (n,), generator=g)]


def _harvest(model, out: Path, **kw) -> ikc.ActivationStore:
    return ikc.harvest(model, _data(), SITES, out, shard_mb=0.01, batch_tokens=64, progress=False, **kw)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_with_kill(model, out: Path, kill_at: int | None) -> int:
    """Harvest into ``out`` in a forked child that SIGKILLs itself at event ``kill_at``; returns the event count.

    ``kill_at=None`` runs to the end and reports how many events there were.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count events, die at the chosen one
        os.close(read)
        code = 1
        try:
            count = [0]

            def event() -> None:
                count[0] += 1
                if kill_at is not None and count[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            def counted(fn):
                def wrapper(*args, **kwargs):
                    event()
                    result = fn(*args, **kwargs)
                    event()
                    return result

                return wrapper

            os.fsync = counted(os.fsync)
            os.replace = counted(os.replace)
            handle = model.bridge.blocks[0].register_forward_hook(lambda *a: event())
            try:
                _harvest(model, out)
            finally:
                handle.remove()
            os.write(write, str(count[0]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as fh:
        reported = fh.read()
    if kill_at is None:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        return int(reported)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    return kill_at


@pytest.fixture(scope="module")
def reference(native_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "whole"
    store = _harvest(native_tiny, out)
    assert store.n_shards >= 4
    return out


def test_sigkilled_harvests_resume_to_identical_bytes(native_tiny, reference, tmp_path):
    n_events = _run_with_kill(native_tiny, tmp_path / "count", None)
    assert _files(tmp_path / "count") == _files(reference)
    rng = random.Random(8)
    points = sorted(rng.sample(range(1, n_events + 1), 5))
    for i, k in enumerate(points):
        out = tmp_path / f"kill{i}"
        _run_with_kill(native_tiny, out, k)
        if i % 2:  # a second kill, in the resumed run, before the final resume
            _run_with_kill(native_tiny, out, rng.randint(1, max(1, n_events - k)))
        manifest = out / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text())["status"] == "complete":
            assert _files(out) == _files(reference)  # killed after the last rename: already whole
        store = _harvest(native_tiny, out)
        assert _files(out) == _files(reference), f"kill at event {k} of {n_events}"
        store.verify()


# ------------------------------------------------------------------------------ hooks
class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_hooks_never_outlive_a_failing_call(tiny_llama, monkeypatch, error):
    task = random_task(tiny_llama, n=2, pos=5)
    assert active_hook_count(tiny_llama) == 0

    def raising(*args, **kwargs):
        def hook(act, hook):
            raise error("in a hook")

        return hook

    monkeypatch.setattr(api, "masked_patch_hook", raising)
    with pytest.raises(error):
        ik.patch(tiny_llama, task, site="head_q")  # a hook-engine site (head_out runs hook-free)
    assert active_hook_count(tiny_llama) == 0
    with pytest.raises(error):
        ablate(tiny_llama, task, ["L1H0"], "zero")
    assert active_hook_count(tiny_llama) == 0
    monkeypatch.undo()

    def bad_metric(*args):
        raise error("in a metric")

    monkeypatch.setattr(rows, "get_metric", lambda name: bad_metric)
    with pytest.raises(error):
        ik.patch(tiny_llama, task, site="head_q")
    assert active_hook_count(tiny_llama) == 0
    import interpkit.patching._path as path

    monkeypatch.setattr(path, "get_metric", lambda name: bad_metric)
    with pytest.raises(error):
        path_patch(tiny_llama, task, receivers=["L2H0.q"], direction="noise")
    assert active_hook_count(tiny_llama) == 0
    monkeypatch.undo()
    # and the model still works afterwards
    assert ik.patch(tiny_llama, task, site="resid_pre").scores.isfinite().all()


# ------------------------------------------------------------------------------ CLI
def _fork(child) -> int:
    """Run ``child()`` in a forked process; its exit code, or minus the signal that killed it."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            code = int(child() or 0)
        except BaseException as exc:  # report like an uncaught exception would
            sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


@pytest.mark.parametrize("mode", ["kill", "fail", "kill-write"])
def test_interrupted_cli_leaves_nothing_that_looks_complete(tmp_path, mode):
    from interpkit import results
    from interpkit.cli import main

    out = tmp_path / "out"
    # head_v: a hook-engine site, whose chunks go through forward_final
    args = ["patch", "--model", "toy-induction", "--task", "induction", "--n", "4", "--site", "head_v"]
    args += ["--batch-size", "2", "--out", str(out)]
    marker = tmp_path / "marker"

    def child() -> int:
        real = rows.forward_final
        calls = [0]

        def interrupted(*a, **kw):
            calls[0] += 1
            if calls[0] == 2:  # one chunk of the sweep done, the second starting
                marker.touch()
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if mode == "fail":
                    raise RuntimeError("injected failure in the middle of the sweep")
            return real(*a, **kw)

        rows.forward_final = interrupted
        if mode == "kill-write":  # die after writing a temporary file, before renaming it into place
            real_replace = os.replace

            def replace(src, dst):
                if str(dst).endswith(("result.json", "report.html")):
                    marker.write_text(Path(src).name)
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_replace(src, dst)

            results.os.replace = replace
        return main(args)

    code = _fork(child)
    assert marker.exists()
    assert code == (1 if mode == "fail" else -signal.SIGKILL)
    left = [p.name for p in out.iterdir()] if out.is_dir() else []
    assert "result.json" not in left and "report.html" not in left, left
    if mode == "kill-write":  # the half-written file sits under a hidden temporary name
        assert marker.read_text().startswith(".result.json.") and (out / marker.read_text()).is_file()


# ------------------------------------------------------------------------------ loading
def _sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text(encoding="utf-8")) for p in sorted(SRC.rglob("*.py"))]


def test_nothing_is_ever_unpickled():
    assert len(_sources()) > 20
    problems = []
    for path, text in _sources():
        name = path.relative_to(SRC)
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start() : text.find(")", m.start()) + 1]
            if "weights_only=True" not in call:
                problems.append(f"{name}: torch.load without weights_only=True: {call}")
        for pattern in (r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib|cloudpickle)\b", r"\bpickle\.loads?\("):
            if re.search(pattern, text, re.M):
                problems.append(f"{name}: uses {pattern}")
        if re.search(r"trust_remote_code\s*=\s*True", text) or re.search(r"allow_pickle\s*=\s*True", text):
            problems.append(f"{name}: turns on remote code or pickles")
        for m in re.finditer(r"trust_remote_code\s*=\s*([^,)\s]+)", text):
            if m.group(1) != "False":
                problems.append(f"{name}: trust_remote_code={m.group(1)} (only False, or the user's own choice)")
    assert problems == []
