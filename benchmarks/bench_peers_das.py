"""The ``das`` job of ``bench_peers.py``: interpkit's 1-D DAS against pyvene on the same data and schedule.

Data: the 240 subject-number prompts of ``experiments/data/subject_number.jsonl`` (the probe
study's, "The keys near the old cabinet" -> " are" against " is"), the last token, split as
``interpkit.probing.collect`` splits them. interpkit: ``probing.das(model, ds, "L{l}.resid_post",
steps=S)``. pyvene: the same train pairs, the same batch at every step (the draws of
``probing.das``'s seeded generator, replayed), the same start direction, the same loss
(softplus of minus the counterfactual logit difference) and Adam with the same learning rate,
on a rank-1 ``LowRankRotatedSpaceIntervention`` at ``block_output`` of layer ``l``; IIA on the
same held-out pairs.

What agrees exactly and what cannot: before training both sides hold the same direction, so
the IIA on the test pairs must be equal (checked, the job stops otherwise) and so must the
first step's loss (reported). interpkit's Adam moves an unnormalised vector that the
intervention normalises; pyvene's moves the free parameter of torch's orthogonal
parametrisation. The two paths differ after the first step, so the trained IIAs are compared,
not asserted equal.

Timed: the whole ``das`` call (which also collects the site's activations and scores the
random, row-space and null-space directions) and its training alone, ``das(S) - das(0)``; for
pyvene its training and the IIA of the learned direction.
"""

from __future__ import annotations

import json
from typing import Any

import torch

import interpkit as ik
from interpkit import probing as P


def subject_number(model: ik.Model) -> P.ProbeDataset:
    from bench_peers import SUBJECT_NUMBER

    rows = [json.loads(line) for line in SUBJECT_NUMBER.read_text().splitlines() if line.strip()]
    return P.collect(
        model,
        [P.strip_marks(r["text"])[0] for r in rows],
        [r["label"] for r in rows],
        positions="last",
        classes=["singular", "plural"],
        answers=[r["answer"] for r in rows],
        wrongs=[r["wrong"] for r in rows],
        seed=0,
    )


def schedule(ds: P.ProbeDataset, task: Any, d: int, steps: int, n_pairs: int, batch_size: int, seed: int) -> dict:
    """``probing.das``'s draws replayed: train and test pairs, start direction, each step's batch and targets."""
    from interpkit.probing._das import _pairs, _targets

    labels = ds.example_labels().cpu()
    gen = torch.Generator().manual_seed(seed)
    train_ex = ds.example[ds.split == 0].unique().cpu()
    test_ex = ds.example[ds.split == 2].unique().cpu()
    train = _pairs(labels, train_ex, n_pairs, gen, flips_only=False)
    test = _pairs(labels, test_ex, n_pairs, gen, flips_only=True)
    v0 = torch.randn(d, generator=gen)
    batches = []
    for _ in range(steps):
        batch = train[torch.randint(len(train), (min(batch_size, len(train)),), generator=gen)]
        batches.append((batch, *_targets(task, labels, batch)))
    return {"test": (test, *_targets(task, labels, test)), "init": v0 / v0.norm(), "batches": batches}


def job_das(b: Any) -> None:
    import peer_recipes as peers
    from bench_peers import agree, emit, median_time

    model, layer, steps = b.model, b.args.das_layer, b.args.das_steps
    site, lr, n_pairs, batch_size = f"L{layer}.resid_post", 0.01, 128, 32  # probing.das's defaults
    ds = subject_number(model)
    task = P.dataset_task(model, ds)
    plan = schedule(ds, task, model.cfg.d_model, steps, n_pairs, batch_size, seed=0)
    ids_list = ds.source["ids"]
    lengths = torch.tensor([len(x) for x in ids_list])
    ids = torch.zeros(len(ids_list), int(lengths.max()), dtype=torch.long)
    for i, x in enumerate(ids_list):
        ids[i, : len(x)] = torch.tensor(x)
    edit_pos = torch.tensor([p[0] for p in ds.source["positions"]])

    def ours(n_steps: int) -> Any:
        return P.das(model, ds, site, steps=n_steps, lr=lr, n_pairs=n_pairs, batch_size=batch_size, seed=0)

    def iia(res: Any) -> float:
        return float(res.scores[res.labels["direction"].index("das"), 0, 0])

    start = ours(0)  # also the warm-up
    if not torch.allclose(start.extras["direction"].cpu(), plan["init"], atol=1e-6):
        raise SystemExit("das: the replayed schedule does not start where probing.das starts; nothing timed")
    peer_start = peers.PyveneDAS(b.hf, layer, ids, lengths, edit_pos, task.answer_pos.cpu(), init=plan["init"]).iia(
        *plan["test"], batch_size
    )
    agree("das (IIA of the start direction)", torch.tensor(iia(start)), torch.tensor(peer_start), 0.0)

    ours_s, ours_runs, trained = median_time(lambda: ours(steps), b.args.repeats)
    zero_s, _, _ = median_time(lambda: ours(0), b.args.repeats)

    def peer_train() -> tuple[Any, list[float]]:
        das = peers.PyveneDAS(b.hf, layer, ids, lengths, edit_pos, task.answer_pos.cpu(), init=plan["init"])
        return das, das.train(plan["batches"], lr)

    peer_train_s, peer_runs, (das, losses) = median_time(peer_train, b.args.repeats)
    peer_eval_s, _, peer_iia = median_time(lambda: das.iia(*plan["test"], batch_size), b.args.repeats)
    ours_losses = trained.extras["loss"].tolist()
    cos = float(torch.nn.functional.cosine_similarity(trained.extras["direction"].cpu(), das.direction(), dim=0))
    row = {
        "job": f"DAS 1-D, {steps} steps, {site}",
        "interpkit_das_call_s": round(ours_s, 3),
        "interpkit_runs_s": ours_runs,
        "interpkit_training_s": round(ours_s - zero_s, 3),
        "pyvene_training_s": round(peer_train_s, 3),
        "pyvene_runs_s": peer_runs,
        "pyvene_iia_eval_s": round(peer_eval_s, 3),
        "ratio_training": round(peer_train_s / max(ours_s - zero_s, 1e-9), 2),
        "ratio_call_vs_train_plus_eval": round((peer_train_s + peer_eval_s) / ours_s, 2),
        "iia_start": iia(start),
        "iia_interpkit": iia(trained),
        "iia_pyvene": peer_iia,
        "first_loss_interpkit": ours_losses[0] if ours_losses else None,
        "first_loss_pyvene": losses[0] if losses else None,
        "final_loss_interpkit": ours_losses[-1] if ours_losses else None,
        "final_loss_pyvene": losses[-1] if losses else None,
        "cos_learned_directions": round(cos, 4),
    }
    emit(**row)
    b.table.append(
        (f"DAS 1-D, {steps} steps ({site})",
         f"training {ours_s - zero_s:.2f} s (whole das call {ours_s:.2f} s)",
         f"pyvene training {peer_train_s:.2f} s (+ IIA {peer_eval_s:.2f} s)",
         f"{row['ratio_training']:.2f}x training; {row['ratio_call_vs_train_plus_eval']:.2f}x call",
         f"IIA start {iia(start):.3f} both; trained {iia(trained):.3f} vs {peer_iia:.3f}")
    )  # fmt: skip
