"""``ik.dictionaries.train``: the sparse training step against its dense reference, recovery of planted
features, the data stream, training from an activation store, resuming after SIGKILL, and two
torchrun processes against one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import interpkit as ik
from interpkit.dictionaries import DictionaryError, train
from interpkit.dictionaries._sparse import fast_loss, reference_loss
from interpkit.dictionaries._stream import Position, Stream, TensorReader

TESTS = Path(__file__).parent


def planted(n_tokens=12_000, n_feat=48, d=24, p=0.05, seed=0):
    """Sparse features in superposition: ``n_feat`` unit directions in ``d`` dims, each on with prob. ``p``."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_feat, d, generator=g)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    on = torch.rand(n_tokens, n_feat, generator=g) < p
    z = on * (0.5 + torch.rand(n_tokens, n_feat, generator=g))
    return z @ feats + 0.01 * torch.randn(n_tokens, d, generator=g), feats, z


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
@pytest.mark.parametrize("setup", ["sae", "transcoder", "skip"])
def test_sparse_step_equals_dense_reference(activation, setup):
    torch.manual_seed(0)
    n, d, rows, k = 64, 16, 40, 5
    params = {
        "W_enc": torch.randn(n, d),
        "b_enc": 0.1 * torch.randn(n),
        "W_dec": torch.randn(n, d),
        "b_dec": torch.randn(d),
    }
    if setup == "skip":
        params["W_skip"] = 0.1 * torch.randn(d, d)
    fast = {k_: v.double().clone().requires_grad_() for k_, v in params.items()}
    slow = {k_: v.double().clone().requires_grad_() for k_, v in params.items()}
    x, y = torch.randn(rows, d).double(), torch.randn(rows, d).double()
    if setup == "sae":
        y = x
    options = dict(activation=activation, k=k, center_input=setup == "sae", norm=1.7, global_batch=rows)
    options.update(dead=torch.rand(n) < 0.4, aux_alpha=0.3)
    a, b = fast_loss(fast, x, y, **options), reference_loss(slow, x, y, **options)
    a["loss"].backward()
    b["loss"].backward()
    torch.testing.assert_close(a["mse"], b["mse"])
    torch.testing.assert_close(a["aux"], b["aux"])
    assert float(a["aux"].detach()) > 0
    for name in fast:
        torch.testing.assert_close(fast[name].grad, slow[name].grad, msg=name)


def test_recovers_planted_features():
    x, feats, _ = planted()
    d = train(x, n_latents=96, k=4, steps=300, batch_size=256, lr=1e-2, progress=False, dead_tokens=2000)
    cos = (d.W_dec @ feats.T).max(0).values  # best decoder match of each planted feature
    assert (cos > 0.9).float().mean() > 0.85, cos
    assert d.meta["final"]["fvu"] < 0.2
    fvu = float((d(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())  # training ran on rescaled data
    assert fvu < 0.2 and abs(fvu - d.meta["final"]["fvu"]) < 0.05
    torch.testing.assert_close(d.W_dec.norm(dim=-1), torch.ones(96))  # unit-norm decoder rows


def test_batchtopk_learns_a_threshold_and_transcoders_their_map():
    x, _, z = planted(n_tokens=6000)
    d = train(x, kind="batchtopk", n_latents=96, k=4, steps=120, batch_size=256, lr=1e-2, progress=False)
    assert d.activation == "batchtopk" and d.threshold is not None and float(d.threshold[0]) > 0
    l0 = float((d.encode(x) != 0).sum(-1).float().mean())
    assert 2 < l0 < 8  # the learned threshold keeps about k latents per token
    g = torch.Generator().manual_seed(3)
    lin = torch.randn(24, 24, generator=g) / 5
    y = torch.relu(z) @ torch.randn(48, 24, generator=g) + x @ lin.T  # sparse part + a linear part
    fvu = {}
    for kind in ("transcoder", "skip_transcoder"):
        tc = train((x, y), kind=kind, n_latents=96, k=4, steps=150, batch_size=256, lr=1e-2, progress=False)
        assert tc.kind == kind and tc.d_out == 24 and not tc.center_input
        fvu[kind] = tc.meta["final"]["fvu"]
    assert fvu["skip_transcoder"] < fvu["transcoder"] < 0.6, fvu


def test_stream_drops_position_zero_and_resumes_exactly():
    n = 5000
    positions = torch.arange(n) % 50
    x = torch.stack([torch.arange(n).float(), positions.float()], dim=1)
    stream = Stream(TensorReader(x, None, positions), seed=3, buffer_tokens=1024, block_tokens=256)
    assert stream.count() == n - n // 50
    seen, pos = [], Position()
    for _ in range(12):
        batch, _, pos = stream.batch(pos, 700)
        assert not bool((batch[:, 1] == 0).any())
        seen.append(batch[:, 0])
    ids = torch.cat(seen)
    first_epoch = ids[: stream.count()]
    assert first_epoch.unique().numel() == stream.count()  # one epoch: every kept token exactly once
    # a new stream resumed from a saved position continues with the very same rows
    fresh = Stream(TensorReader(x, None, positions), seed=3, buffer_tokens=1024, block_tokens=256)
    mid = Position()
    for _ in range(5):
        _, _, mid = fresh.batch(mid, 700)
    again, _, _ = Stream(TensorReader(x, None, positions), seed=3, buffer_tokens=1024, block_tokens=256).batch(mid, 700)
    assert torch.equal(again[:, 0], seen[5])


def test_reads_stay_within_one_buffer():
    """Memory is bounded by the buffer: no read asks for more than one block."""
    reader = TensorReader(torch.randn(20_000, 4))
    sizes = []
    real = reader.read

    def spy(start, stop):
        sizes.append(stop - start)
        return real(start, stop)

    reader.read = spy
    stream = Stream(reader, buffer_tokens=2048, block_tokens=512, exclude_first=False)
    pos = Position()
    for _ in range(30):
        _, _, pos = stream.batch(pos, 1000)
    assert max(sizes) <= 512 and sum(sizes) >= 30_000


@pytest.fixture(scope="module")
def store(tiny_llama, tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(1, 97, (int(n),), generator=g).tolist() for n in torch.randint(20, 40, (150,), generator=g)]
    out = tmp_path_factory.mktemp("dict-store") / "acts"
    sites = ["L1.resid_post", "blocks.1.mlp.hook_in", "L1.mlp"]
    return ik.cache.harvest(tiny_llama, data, sites, out, dtype="float32", progress=False)


def test_train_from_a_store(store):
    sae = train(store.path, site="L1.resid_post", n_latents=96, k=6, steps=20, batch_size=512, progress=False)
    assert sae.input_site == sae.output_site == "blocks.1.hook_resid_post"
    tc = train(
        store,
        kind="skip_transcoder",
        input_site="blocks.1.mlp.hook_in",
        output_site="L1.mlp",
        n_latents=96,
        k=6,
        steps=20,
        batch_size=512,
        progress=False,
    )
    assert (tc.input_site, tc.output_site, tc.kind) == (
        "blocks.1.mlp.hook_in",
        "blocks.1.hook_mlp_out",
        "skip_transcoder",
    )
    assert tc.meta["final"]["fvu"] < 1.0


def test_bad_training_requests(store, tmp_path):
    with pytest.raises(DictionaryError, match=r"has no site 'L0.resid_post'; it holds: blocks.1.hook_resid_post"):
        train(store, site="L0.resid_post", n_latents=32, k=4, steps=2, progress=False)
    with pytest.raises(DictionaryError, match=r"k=40 must lie in 1..n_latents=32"):
        train(store, site="L1.resid_post", n_latents=32, k=40, steps=2, progress=False)
    with pytest.raises(DictionaryError, match="holds 3 sites"):
        train(store, n_latents=32, k=4, steps=2, progress=False)
    with pytest.raises(DictionaryError, match="needs input_site"):
        train(store, kind="transcoder", n_latents=32, k=4, steps=2, progress=False)
    with pytest.raises(DictionaryError, match="unknown dictionary kind 'gated'"):
        train(torch.randn(100, 4), kind="gated")
    out = tmp_path / "run"
    train(torch.randn(600, 8), n_latents=16, k=2, steps=3, batch_size=100, out=out, progress=False)
    with pytest.raises(DictionaryError, match="trained with other settings"):
        train(torch.randn(600, 8), n_latents=16, k=3, steps=3, batch_size=100, out=out, progress=False)
    assert (out / "dictionary.safetensors").is_file()  # nothing lost


WORKER = """
import sys, time, torch
torch.set_num_threads(1)
import interpkit.dictionaries._stream as stream
sys.path.insert(0, sys.argv[2])
from test_dictionaries_train import resumable_run
real = stream.Stream.batch  # slow each step down so that the parent can kill the run midway
stream.Stream.batch = lambda *a, **k: (time.sleep(0.15), real(*a, **k))[1]
resumable_run(sys.argv[1], "topk")
"""


def resumable_run(out, kind, **options):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6000, 16, generator=g) @ torch.randn(16, 16, generator=g)
    data = (x, torch.tanh(x) @ torch.randn(16, 12, generator=g)) if "transcoder" in kind else x
    return train(
        data,
        kind=kind,
        n_latents=64,
        k=4,
        steps=40,
        batch_size=300,
        out=out,
        checkpoint_every=3,
        progress=False,
        dead_tokens=1500,
        **options,
    )


def _identical(a, b):
    assert a.tensors().keys() == b.tensors().keys()
    for name, t in a.tensors().items():
        assert torch.equal(b.tensors()[name], t), name


@pytest.mark.slow
def test_sigkill_then_rerun_gives_bit_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(killed), str(TESTS)], env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        info = killed / "checkpoint.json"
        if info.is_file() and json.loads(info.read_text())["step"] >= 9:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoint.json").is_file() and not (killed / "dictionary.safetensors").exists()
    resumed = resumable_run(killed, "topk")  # the same call, in this process (one thread, as the worker)
    _identical(resumed, resumable_run(tmp_path / "straight", "topk"))
    assert not list(killed.glob("checkpoint*"))  # checkpoints are removed once the dictionary is saved
    log = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(10, 41, 10))  # no step logged twice


@pytest.mark.parametrize("kind", ["batchtopk", "skip_transcoder"])
def test_interrupted_run_resumes_bit_identically(tmp_path, monkeypatch, kind):
    import interpkit.dictionaries._loop as loop

    real, calls = loop.train_step, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 17:
            raise KeyboardInterrupt  # as a Ctrl-C mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", failing)
    with pytest.raises(KeyboardInterrupt):
        resumable_run(tmp_path / "cut", kind)
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["step"] == 15
    monkeypatch.setattr(loop, "train_step", real)
    _identical(resumable_run(tmp_path / "cut", kind), resumable_run(tmp_path / "straight", kind))


DDP_WORKER = """
import os, sys, torch
torch.set_num_threads(1)
from interpkit.dictionaries import train
g = torch.Generator().manual_seed(0)
x = torch.randn(4000, 16, generator=g) @ torch.randn(16, 16, generator=g)
y = torch.tanh(x) @ torch.randn(16, 12, generator=g)
for kind in ("topk", "batchtopk", "skip_transcoder"):
    data = (x, y) if "transcoder" in kind else x
    d = train(data, kind=kind, n_latents=64, k=4, steps=15, batch_size=400, progress=False, dead_tokens=800)
    if int(os.environ["RANK"]) == 0:
        d.save(os.path.join(sys.argv[1], kind))
"""


@pytest.mark.slow
def test_two_torchrun_processes_equal_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(DDP_WORKER))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run([*launch, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 16, generator=g) @ torch.randn(16, 16, generator=g)
    y = torch.tanh(x) @ torch.randn(16, 12, generator=g)
    for kind in ("topk", "batchtopk", "skip_transcoder"):
        data = (x, y) if "transcoder" in kind else x
        one = train(data, kind=kind, n_latents=64, k=4, steps=15, batch_size=400, progress=False, dead_tokens=800)
        two = ik.dictionaries.load(tmp_path / kind)
        for name, t in one.tensors().items():
            torch.testing.assert_close(two.tensors()[name], t, rtol=1e-4, atol=1e-5, msg=f"{kind} {name}")
