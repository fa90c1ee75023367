"""A harvest under ``torchrun`` with two CPU processes (gloo) equals a single-process harvest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import interpkit.cache as ikc
from interpkit.models import load_model, save_native


@pytest.mark.slow
def test_two_process_harvest_equals_one_process(native_tiny, tmp_path):
    model_dir = save_native(native_tiny, tmp_path / "model")
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 61, (int(n),), generator=g).tolist() for n in torch.randint(1, 33, (50,), generator=g)]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"ids": r}) for r in rows))
    sites = "L*.resid_post,L1H2"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*launch, "-m", "interpkit.cache.cli", "cache", "--model", str(model_dir), "--device", "cpu"]
    command += [
        "--data",
        str(data),
        "--sites",
        sites,
        "--out",
        str(tmp_path / "two"),
        "--shard-mb",
        "0.02",
        "--batch-size",
        "4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}  # loopback: no interface guessing
    done = subprocess.run([*command, "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker: same kernels, same bits
    try:
        model = load_model(str(model_dir), device="cpu")
        one = ikc.harvest(model, data, sites.split(","), tmp_path / "one", shard_mb=0.02, batch_size=4, progress=False)
    finally:
        torch.set_num_threads(before)
    two = ikc.ActivationStore(tmp_path / "two")
    two.verify()
    assert one.n_shards >= 4 and one.manifest == two.manifest
    for entry in one.manifest["shards"]:
        a = load_file(str(one.path / entry["file"]))
        b = load_file(str(two.path / entry["file"]))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in two.path.iterdir()) == sorted(p.name for p in one.path.iterdir())
