"""Adaptive batch sizes: out-of-memory halves the batch, keeps finished chunks, and changes no result."""

from __future__ import annotations

import pytest
import torch

import interpkit as ik
import interpkit.batching as batching
import interpkit.patching._path as path
import interpkit.runtime._baseline as baseline_mod
import interpkit.runtime._rows as rows
from interpkit.patching import ablate, path_patch
from interpkit.runtime import Batcher, PatchingError, auto_rows, sweep
from tiny_models import random_task


class Injector:
    """Wraps ``forward_final``: the first ``k`` forwards of more than ``limit`` rows run out of memory."""

    def __init__(self, real, limit: int, k: int, error=torch.OutOfMemoryError):
        self.real, self.limit, self.k, self.error = real, limit, k, error
        self.failed = 0
        self.rows_done: list[int] = []

    def __call__(self, model, start, *args, **kwargs):
        if start.shape[0] > self.limit and self.failed < self.k:
            self.failed += 1
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        self.rows_done.append(start.shape[0])
        return self.real(model, start, *args, **kwargs)


def _inject(monkeypatch, module, limit, k, error=torch.OutOfMemoryError) -> Injector:
    inj = Injector(module.forward_final, limit, k, error)
    monkeypatch.setattr(module, "forward_final", inj)
    return inj


@pytest.mark.usefixtures("hooks_only")  # the hook engine's chunks
@pytest.mark.parametrize("error", [torch.OutOfMemoryError, RuntimeError, MemoryError])
def test_patch_survives_oom_without_recomputing(tiny_llama, monkeypatch, error):
    task = random_task(tiny_llama, n=4, pos=6)
    # 8 rows fail, 4 rows fail, then every forward runs 2 rows: the batches of batch_size=2.
    want = ik.patch(tiny_llama, task, site="head_out", batch_size=2)
    inj = _inject(monkeypatch, rows, limit=2, k=3, error=error)
    got = ik.patch(tiny_llama, task, site="head_out", batch_size=8)
    assert inj.failed == 2  # the halved size is remembered: no third failure
    # Every (patch, example) row ran exactly once after the failures: nothing finished was redone.
    assert sum(inj.rows_done) == want.extras["per_example"].numel()
    assert set(inj.rows_done) == {2}
    assert torch.equal(got.scores, want.scores)
    assert torch.equal(got.extras["per_example"], want.extras["per_example"])
    assert got.meta["batch_rows"] == 8


@pytest.mark.usefixtures("hooks_only")  # the hook engine's chunks
def test_oom_after_finished_chunks_keeps_them(tiny_llama, monkeypatch):
    task = random_task(tiny_llama, n=8, pos=5)
    want = ik.patch(tiny_llama, task, site="resid_pre", batch_size=1)
    calls = {"n": 0}
    real = rows.forward_final
    done: list[int] = []

    def late_oom(model, start, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # two chunks are finished when memory runs out
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        done.append(start.shape[0])
        return real(model, start, *args, **kwargs)

    monkeypatch.setattr(rows, "forward_final", late_oom)
    got = ik.patch(tiny_llama, task, site="resid_pre", batch_size=4)
    assert sum(done) == want.extras["per_example"].numel()
    assert done == [4, 4] + [2] * 8  # layer 0's two chunks kept; the rest in halves
    torch.testing.assert_close(got.extras["per_example"], want.extras["per_example"], atol=1e-5, rtol=1e-5)


def test_path_patch_and_ablate_survive_oom(tiny_llama, monkeypatch):
    task = random_task(tiny_llama, n=4, pos=6)
    want_path = path_patch(tiny_llama, task, receivers=["L2H0.k"], senders="heads", batch_size=1, direction="noise")
    want_abl = ablate(tiny_llama, task, ["L1H2", "L0.mlp"], "zero", batch_size=1)
    inj = _inject(monkeypatch, path, limit=3, k=10)
    got_path = path_patch(tiny_llama, task, receivers=["L2H0.k"], senders="heads", batch_size=16, direction="noise")
    assert inj.failed == 3 and set(inj.rows_done) == {2}  # 16, 8, 4 rows fail; 2 fit
    inj = _inject(monkeypatch, rows, limit=1, k=5)
    got_abl = ablate(tiny_llama, task, ["L1H2", "L0.mlp"], "zero", batch_size=4)
    assert inj.failed == 2 and inj.rows_done == [1, 1, 1, 1]
    torch.testing.assert_close(got_path.extras["per_example"], want_path.extras["per_example"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_abl.scores, want_abl.scores, atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("hooks_only")  # the hook engine's chunks
def test_other_errors_and_single_rows_are_not_retried(tiny_llama, monkeypatch):
    task = random_task(tiny_llama, n=4, pos=4)
    inj = _inject(monkeypatch, rows, limit=0, k=1, error=lambda msg: RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        ik.patch(tiny_llama, task, site="resid_pre", batch_size=4)
    assert inj.rows_done == []
    monkeypatch.undo()
    inj = _inject(monkeypatch, rows, limit=0, k=100)
    with pytest.raises(torch.OutOfMemoryError):
        ik.patch(tiny_llama, task, site="resid_pre", batch_size=4)
    assert inj.failed == 3  # 4 -> 2 -> 1 rows, then a single row that still fails is raised


def test_batcher_remembers_the_halved_size():
    seen: list[tuple[int, int]] = []

    def run(a: int, b: int) -> None:
        if b - a > 2:
            raise torch.OutOfMemoryError("out of memory")
        seen.append((a, b))

    b = Batcher(8)
    b.run(0, 10, run)
    b.run(10, 14, run)
    assert seen == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14)]
    assert b.rows == 2 and b.halvings == 2 and b.initial == 8


def test_sweep_segments_and_sizes(tiny_llama, monkeypatch):
    seen: list[tuple[int, int, int]] = []
    sweep([5, 0, 3], lambda s, a, b: seen.append((s, a, b)), batch_size=2)
    assert seen == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (2, 0, 2), (2, 2, 3)]
    with pytest.raises(PatchingError):
        sweep(3, lambda s, a, b: None)
    # The batch estimate follows free memory, and never drops below one row.
    monkeypatch.setattr(batching, "free_memory_bytes", lambda device: 1 << 40)
    big = auto_rows(tiny_llama, 16)
    monkeypatch.setattr(batching, "free_memory_bytes", lambda device: 1 << 20)
    small = auto_rows(tiny_llama, 16)
    monkeypatch.setattr(batching, "free_memory_bytes", lambda device: 0)
    assert big > small >= 1 and auto_rows(tiny_llama, 16) == 1


def test_baseline_runs_survive_oom(tiny_llama, monkeypatch):
    task = random_task(tiny_llama, n=4, pos=6)
    hook = "blocks.1.attn.hook_z"
    want = baseline_mod.baseline(tiny_llama, task, "logit_diff", [hook], [hook])
    inj = _inject(monkeypatch, baseline_mod, limit=1, k=100)
    got = baseline_mod.baseline(tiny_llama, task, "logit_diff", [hook], [hook])
    assert inj.rows_done == [1] * 8  # clean and corrupt, one example at a time after halving 4 -> 2 -> 1
    assert inj.failed == 2  # the halved size carries over from the clean run to the corrupt run
    for key in ("clean", "corrupt", "clean_logprobs"):
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)
    for key in ("clean_acts", "corrupt_acts"):  # the captured activations are reassembled in order
        torch.testing.assert_close(got[key][hook], want[key][hook], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("per_position", [True, False])
def test_prefix_reuse_sweep_survives_oom(per_position, tiny_llama, monkeypatch):
    """The suffix path (per position and whole-sequence) halves its example chunks on out-of-memory, like the hook engine."""
    import interpkit.runtime._suffix_sweep as suffix_patch

    task = random_task(tiny_llama, n=6, pos=5)
    want = ik.patch(tiny_llama, task, site="head_out", per_position=per_position, batch_size=6)  # 1 example per chunk
    fn = "suffix_sweep" if per_position else "suffix_whole"
    real, seen = getattr(suffix_patch, fn), []

    def tight(runner, base, *args, **kwargs):
        if base.answer_pos.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        seen.append(base.answer_pos.shape[0])
        return real(runner, base, *args, **kwargs)

    monkeypatch.setattr(suffix_patch, fn, tight)
    # 6 examples per chunk: per position a chunk is one layer's heads (6 rows per example), whole-sequence
    # it is every layer's heads at once (one staggered run)
    rows_per_example = 6 if per_position else 6 * tiny_llama.cfg.n_layers
    got = ik.patch(tiny_llama, task, site="head_out", per_position=per_position, batch_size=6 * rows_per_example)
    assert got.meta["engine"] == "suffix"
    # 6 examples fail, 3 fail, then 1 per chunk: each example runs once per run, nothing finished is redone
    assert seen == [1] * (len(task) * (tiny_llama.cfg.n_layers if per_position else 1))
    torch.testing.assert_close(got.extras["per_example"], want.extras["per_example"], atol=1e-6, rtol=1e-6)
