"""Data-parallel patching under ``torchrun`` (two CPU processes, gloo) equals a single process, bit for bit."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import interpkit as ik
from interpkit.distributed import Group, example_range, gather_examples, share
from interpkit.patching import PatchingError, ablate, path_patch
from interpkit.results import Result

TESTS = Path(__file__).parent

# The jobs both runs do; each is (name, function, keyword arguments). Five examples split 3 + 2.
JOBS = [
    ("head_out", "patch", {"site": "head_out", "batch_size": 4}),
    ("resid_pos_noise", "patch", {"site": "resid_pre", "per_position": True, "direction": "noise"}),
    ("head_v_mean", "patch", {"site": "head_v", "ablation": "mean", "batch_size": 3}),
    ("mlp_resample", "patch", {"site": "mlp_out", "ablation": "resample", "batch_size": 2}),
    (
        "path",
        "path_patch",
        {"receivers": ["L2H1.q", "L2KV0.v"], "senders": "heads", "batch_size": 5, "direction": "noise"},
    ),
    ("ablate", "ablate", {"components": ["L0H1", "L1.mlp"], "ablation": "mean", "batch_size": 2}),
]

WORKER = """
import json, os, sys, time, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
import torch.distributed as dist
import interpkit as ik
from interpkit.distributed import Group, example_range, gather_examples
from interpkit.models._load import wrap_hf_model
from interpkit.patching import ablate, path_patch
import interpkit.runtime._rows as api
from tiny_models import random_task, tiny_llama_hf
from test_distributed import JOBS, run_job

out = sys.argv[1]
model = wrap_hf_model(tiny_llama_hf(), None, spec="tiny-llama")
task = random_task(model, n=5, pos=6)
# First call: interpkit creates the process group from torchrun's environment (and destroys it).
first = run_job(model, task, *JOBS[0][1:])
assert not dist.is_initialized()
if int(os.environ["RANK"]) == 1:
    time.sleep(2)  # rank 0 rendezvouses first: under a reused store prefix it would read stale keys and hang
dist.init_process_group("gloo")  # later calls reuse the caller's group
rank, world = dist.get_rank(), dist.get_world_size()
results = {{JOBS[0][0]: first}}
for name, fn, kwargs in JOBS[1:]:
    results[name] = run_job(model, task, fn, kwargs)
for name, value in results.items():
    path = f"{{out}}/rank{{rank}}_{{name}}.json"
    if isinstance(value, torch.Tensor):
        open(path, "w").write(json.dumps(value.tolist()))
    else:
        value.to_json(path)
group = Group(rank, world)
lo, hi = example_range(group, 7)
mine = torch.arange(lo, hi, dtype=torch.float32)[None].repeat(2, 1)
full = gather_examples(group, mine, 7)
assert torch.equal(full, torch.arange(7.0)[None].repeat(2, 1)), full

# A failure on one rank is raised on every rank instead of leaving the other waiting.
real = api.forward_final
def flaky(*args, **kwargs):
    if rank == 1:
        raise ValueError("injected failure")
    return real(*args, **kwargs)
api.forward_final = flaky
try:
    ik.patch(model, task, site="head_v", batch_size=2)  # a hook-engine site: its rows go through forward_final
except Exception as exc:
    open(f"{{out}}/rank{{rank}}_error.txt", "w").write(f"{{type(exc).__name__}}: {{exc}}")
dist.destroy_process_group()
"""


def run_job(model, task, fn: str, kwargs: dict):
    if fn == "patch":
        return ik.patch(model, task, **kwargs)
    if fn == "path_patch":
        return path_patch(model, task, **kwargs)
    return ablate(model, task, **kwargs).scores


def _same(a: Result, b: Result) -> None:
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.extras["per_example"], b.extras["per_example"])
    assert a.clean_value == b.clean_value and a.corrupt_value == b.corrupt_value
    assert a.dims == b.dims and a.labels == b.labels and a.meta == b.meta and a.metric == b.metric


@pytest.mark.slow
def test_two_process_patching_equals_one_process(tiny_llama, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER.format(tests=str(TESTS))))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run([*launch, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    from tiny_models import random_task

    task = random_task(tiny_llama, n=5, pos=6)
    # on one thread, as each torchrun worker (conftest starts every test there): same kernels, same bits
    for name, fn, kwargs in JOBS:
        one = run_job(tiny_llama, task, fn, {**kwargs, "distributed": False})
        for rank in (0, 1):
            path = tmp_path / f"rank{rank}_{name}.json"
            if isinstance(one, torch.Tensor):
                assert torch.equal(torch.tensor(json.loads(path.read_text())), one), name
            else:
                _same(Result.from_json(path), one)
    errors = [(tmp_path / f"rank{r}_error.txt").read_text() for r in (0, 1)]
    assert errors[0].startswith("PatchingError") and "failed on rank 1" in errors[0] and "injected" in errors[0]
    assert errors[1] == "ValueError: injected failure"


def test_slices_cover_examples_once():
    for world in (1, 2, 3, 8):
        for n in (0, 1, 5, 7, 16):
            ranges = [example_range(Group(r, world), n) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1
            items = list(range(n))
            assert [x for r in range(world) for x in share(Group(r, world), items)] == items


def test_alone_nothing_is_exchanged(tiny_llama, monkeypatch):
    t = torch.arange(6.0).reshape(2, 3)
    assert gather_examples(Group(), t, 3) is t
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    from tiny_models import random_task

    task = random_task(tiny_llama, n=2, pos=4)
    with pytest.raises(PatchingError, match="torchrun"):
        ik.patch(tiny_llama, task, site="resid_pre", distributed=True)
