"""The CLI skeleton and the cost of ``import interpkit``."""

from __future__ import annotations

import json
import subprocess
import sys

from interpkit.cli import main


def test_import_is_light():
    code = "import time; t = time.perf_counter(); import interpkit, sys; print(time.perf_counter() - t, 'torch' in sys.modules)"
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        for _ in range(3)
    ]
    assert all(r[1] == "False" for r in runs), "import interpkit must not import torch"
    # best of three: ~0.1-0.3 s on an idle 2-core machine, ~1.1 s when four other jobs share it
    assert min(float(r[0]) for r in runs) < 2.0


def test_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "toy-induction" in out


def test_hooks_and_sites(capsys):
    assert main(["hooks", "--model", "toy-induction", "--filter", "hook_z"]) == 0
    assert capsys.readouterr().out.split() == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert main(["sites", "--model", "toy-induction", "--kind", "z"]) == 0
    assert "L1H3" in capsys.readouterr().out


def test_run_task_json(capsys):
    assert main(["run-task", "--model", "toy-induction", "--task", "induction", "--n", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_examples"] == 8 and report["clean"] > report["corrupt"]


def test_user_errors_exit_2(capsys):
    assert main(["run-task", "--model", "toy-inductin", "--task", "induction"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("interpkit: error:") and "toy-induction" in err
    assert main(["run-task", "--model", "toy-induction", "--task", "ioi"]) == 2
    assert "tokenizer" in capsys.readouterr().err


def test_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "interpkit", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "run-task" in out and "models" in out


def _subcommands() -> list[str]:
    from interpkit.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_every_subcommand_help_has_an_example(capsys):
    import pytest

    names = _subcommands()
    assert {"patch", "attribute", "cache", "probe", "probe-collect"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as stop:
            main([name, "--help"])
        assert stop.value.code == 0
        out = capsys.readouterr().out
        assert "example:" in out and f"interpkit {name}" in out, name


def test_patch_and_attribute_write_result_and_report(tmp_path, capsys):
    from interpkit.results import Result

    task = ["--model", "toy-induction", "--task", "induction", "--n", "4"]
    assert main(["patch", *task, "--site", "head_out", "--out", str(tmp_path / "p")]) == 0
    assert main(["attribute", *task, "--method", "atp", "--level", "node", "--out", str(tmp_path / "a")]) == 0
    for run in ("p", "a"):
        res = Result.from_json(tmp_path / run / "result.json")
        assert res.dims == ("layer", "head") and res.provenance["command"].startswith("interpkit ")
        assert (tmp_path / run / "report.html").stat().st_size > 100_000
    capsys.readouterr()
    assert main(["attribute", *task, "--method", "eapp", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eap" in err
    assert not (tmp_path / "x").exists()
