"""Probing on the embedded SmolLM2: subject number is linearly decodable mid-depth, and the model uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interpkit import probing as P

DATA = Path(__file__).resolve().parents[2] / "experiments" / "data" / "subject_number.jsonl"


@pytest.fixture(scope="module")
def number_ds(smollm2):
    rows = [
        json.loads(line) for line in DATA.read_text().splitlines()
    ]  # 240 examples (120 leave a 24-example test split)
    return P.collect(
        smollm2,
        [P.strip_marks(r["text"])[0] for r in rows],
        [r["label"] for r in rows],
        sites=["L2.resid_post", "L14.resid_post", "L20.resid_post"],
        classes=["singular", "plural"],
        answers=[r["answer"] for r in rows],
        wrongs=[r["wrong"] for r in rows],
    )


def test_unembedding_shortcut_is_exact_on_the_embedded_model(smollm2):
    assert smollm2.anatomy.tail_is_exact  # the interventions unembed the answer position alone


def test_subject_number_is_decodable_at_the_last_token(number_ds):
    res = P.probe(number_ds)
    acc = res.scores[:, 0, 0]
    assert acc[1] > 0.85 and acc[2] > 0.85  # mid and late layers carry the subject's number to the verb
    shuffled = P.shuffled_labels(number_ds, n_shuffles=2)
    assert (shuffled.scores[:, 0, 0] < 0.75).all()


def test_inlp_removes_the_information_and_reports_the_behavioural_effect(smollm2, number_ds):
    """INLP leaves nothing linearly decodable; the model's agreement is measured against a random control.

    Measured (240 prompts): removing the last token's number subspace at L14 changes the is/are
    logit difference by < 0.1 (2.25 -> 2.27; random subspace 2.22): the last token's number
    direction is decodable but not what the model reads, an honest negative the test keeps visible.
    """
    probes = P.fit_probes(number_ds)
    res = P.remove(smollm2, number_ds, probes, sites=["L14.resid_post"], method="inlp", n_iter=4, read_site=None)
    q = res.labels["quantity"]
    value = {k: float(res.scores[0, q.index(k), 0]) for k in q}
    assert value["probe_accuracy"] > 0.85
    assert value["refit_accuracy"] < 0.7  # nothing linear left after 4 INLP directions
    assert value["metric_clean"] > 1.0  # the model agrees the verb with the subject (logit difference is/are)
    for key in ("metric_removed", "metric_random"):
        assert abs(value[key] - value["metric_clean"]) < 1.0
    assert res.scores[0, q.index("downstream_clean"), 0].isnan()  # read_site=None: nothing read downstream
