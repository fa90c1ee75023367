"""Probing: datasets, positions, splits, batched fits against slow references, metrics, controls, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from interpkit import probing as P
from interpkit.errors import InterpkitError, SiteError
from interpkit.probing._collect import resolve_sites
from interpkit.probing._fit import fit_batched
from interpkit.probing._metrics import accuracy, auc, balanced_accuracy, r2
from interpkit.probing._positions import select_positions, strip_marks
from interpkit.probing._splits import split_examples

ROOT = Path(__file__).resolve().parents[1]
DATA = [json.loads(line) for line in (ROOT / "experiments/data/subject_number.jsonl").read_text().splitlines()]


def word_tokenizer():
    """A word-level fast tokenizer over the subject-number vocabulary, built in code (offsets work)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_file = json.loads((ROOT / "experiments/data/subject_number_vocab.json").read_text())
    words = {"The", "is", "are", "a", "b", "c", "d", "e", "f", "g", "h"}
    for pair in vocab_file["nouns"] + vocab_file["attractors"]:
        words |= {w for phrase in pair for w in phrase.split()}
    words |= {w for phrase in vocab_file["prepositions"] for w in phrase.split()}
    vocab = {"<pad>": 0, "<s>": 1, "<unk>": 2}
    for w in sorted(words):
        vocab[w], vocab[" " + w] = len(vocab), len(vocab) + 1
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[^ ]+"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", unk_token="<unk>")


def tiny_text_model():
    """A random 2-layer Llama (d_model 32, GQA) over :func:`word_tokenizer`: text in, seconds to build."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from interpkit.models._load import wrap_hf_model

    tokenizer = word_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    return wrap_hf_model(LlamaForCausalLM(config).eval(), tokenizer, spec="tiny-text")


@pytest.fixture(scope="module")
def text_model():
    return tiny_text_model()


def planted(n: int = 240, d: int = 12, sites: int = 3, seed: int = 0, rows_per_example: int = 1) -> P.ProbeDataset:
    """Site 0 separates the classes along one axis, the last site is pure noise, others in between."""
    gen = torch.Generator().manual_seed(seed)
    y_ex = torch.arange(n) % 2
    example = torch.arange(n).repeat_interleave(rows_per_example)
    y = y_ex[example]
    acts = torch.randn(sites, len(y), d, generator=gen)
    for s in range(sites - 1):
        acts[s, :, 0] += (3.0 / (s + 1)) * (2 * y - 1)
    acts[:, :, 1] *= 50.0  # a badly scaled feature, as residual streams have
    ds = P.ProbeDataset(
        acts=acts,
        y=y,
        example=example,
        pos=torch.zeros_like(y),
        token=example % 7,
        split=torch.zeros_like(y),
        sites=[f"L{s}.resid_post" for s in range(sites)],
        classes=["a", "b"],
    )
    return ds.resplit((0.6, 0.2, 0.2), seed)


# ------------------------------------------------------------------------------------------ positions
def test_strip_marks_and_rules():
    text, spans = strip_marks("The [[dogs]] near the [[car]]")
    assert text == "The dogs near the car" and [text[a:b] for a, b in spans] == ["dogs", "car"]
    toks = [["<s>", "The", " dogs", " are"], ["<s>", "A", " cat", " is", " here"]]
    assert select_positions("last", toks, n_bos=1) == [[3], [4]]
    assert select_positions("all", toks, n_bos=1) == [[1, 2, 3], [1, 2, 3, 4]]
    assert select_positions("match:(is|are)", toks, n_bos=1) == [[3], [3]]
    assert select_positions(lambda t: [-1, 1], toks, n_bos=1) == [[1, 3], [1, 4]]
    assert select_positions([2, [0, -1]], toks) == [[2], [0, 4]]


def test_rule_matching_no_token_names_the_example():
    toks = [["The", " dogs", " are"], ["A", " cat", " sleeps"]]
    with pytest.raises(P.ProbeError, match=r"matches no token in example 1 .*A cat sleeps"):
        select_positions("match:(is|are)", toks)
    with pytest.raises(P.ProbeError, match="unknown position rule"):
        select_positions("first", toks)


def test_collect_marked_and_last_read_the_right_tokens(text_model):
    rows = DATA[:12]
    ds = P.collect(text_model, [r["text"] for r in rows], [r["label"] for r in rows], positions="marked")
    nouns = [text_model.tokenizer.decode([t]) for t in ds.token.tolist()]
    assert nouns[:4] == [" key"] * 4 and nouns[4:8] == [" keys"] * 4
    assert ds.acts.shape == (2, 12, 32) and ds.sites == ["L0.resid_post", "L1.resid_post"]
    # The dataset's rows equal a plain hooked forward of each example alone, at the same position.
    from interpkit.hooks import hooks

    seen = {}
    ids = torch.tensor([ds.source["ids"][3]])

    def keep(act, hook):
        seen["x"] = act

    with torch.inference_mode(), hooks(text_model, fwd=[("blocks.1.hook_resid_post", keep)]):
        text_model(ids)
    assert torch.allclose(ds.acts[1, 3], seen["x"][0, ds.pos[3]], atol=1e-5)


def test_sites_heads_hooks_and_padding(native_tiny):
    seqs = [[i % 50 + 1, (3 * i) % 50 + 1, 7] for i in range(30)]
    ds = P.collect(native_tiny, seqs, [i % 3 for i in range(30)], sites=["L0H1", "L1.mlp", "blocks.1.mlp.hook_post"])
    assert ds.widths == [8, 32, 64] and ds.acts.shape == (3, 30, 64)
    assert ds.acts[0, :, 8:].abs().max() == 0  # narrower sites are zero-padded
    assert ds.classes == ["0", "1", "2"]
    assert [s.label for s in resolve_sites(native_tiny, "resid_pre")] == ["L0.resid_pre", "L1.resid_pre"]
    with pytest.raises(SiteError):
        resolve_sites(native_tiny, ["L7.resid_post"])


def test_site_wildcards_expand_in_forward_order_and_skip_patterns(native_tiny):
    labels = lambda sites: [s.label for s in resolve_sites(native_tiny, sites)]  # noqa: E731
    assert labels("L*.mlp") == ["L0.mlp", "L1.mlp"]
    heads = labels(["L1H*", "L0.resid_post"])
    assert heads[:2] == ["L1H0", "L1H1"] and "L1H3.v" in heads and heads[-1] == "L0.resid_post"
    assert not any(label.endswith(".pattern") for label in heads)  # the wildcard skips patterns
    assert labels("blocks.*.mlp.hook_post") == ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]
    assert labels(["*.resid_post", "L1.mlp"])[:2] == ["L0.resid_post", "L1.resid_post"]  # a hook name once
    assert len(labels("*.resid_post")) == 2
    with pytest.raises(SiteError, match=r"site pattern 'L\*.attn_nope' matches no site label"):
        resolve_sites(native_tiny, "L*.attn_nope")
    with pytest.raises(SiteError, match="matches only attention patterns"):
        resolve_sites(native_tiny, "L*H*.pattern")
    with pytest.raises(SiteError, match="is an attention pattern"):
        resolve_sites(native_tiny, "L0H1.pattern")
    ds = P.collect(native_tiny, [[1, 2, 3], [4, 5, 6]] * 6, ["a", "b"] * 6, sites="L*.attn")
    assert ds.sites == ["L0.attn", "L1.attn"]
    assert ds.select_sites("L1.*").sites == ["L1.attn"] and ds.site_index(["L1*", "L0.attn"]) == [1, 0]
    with pytest.raises(SiteError, match=r"site 'L7\*' is not in this dataset"):
        ds.select_sites("L7*")


def test_split_keeps_examples_whole_and_is_stratified_and_seeded():
    ds = planted(n=60, rows_per_example=3)
    per_example = torch.zeros(60, dtype=torch.long).scatter_reduce(0, ds.example, ds.split, "amax")
    assert torch.equal(per_example[ds.example], ds.split)  # all rows of an example on one side
    for code in (0, 1, 2):
        labels = ds.y[ds.split == code]
        assert (labels == 0).sum() == (labels == 1).sum()
    assert torch.equal(split_examples(torch.arange(30) % 3, seed=4), split_examples(torch.arange(30) % 3, seed=4))
    assert not torch.equal(ds.resplit(seed=1).split, ds.split)


# ------------------------------------------------------------------------------------------ fits
def _reference_logistic(X, y, l2):
    """Slow and literal: standardise, then full-batch L-BFGS (strong Wolfe) in float64, one problem."""
    mean, scale = X.mean(0), X.std(0)
    Z = ((X - mean) / scale).double()
    w = torch.zeros(Z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], max_iter=2000, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        z = Z @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y.double()) + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return closure().item()


@pytest.mark.parametrize("n, d", [(240, 12), (50, 40), (300, 120)])  # fewer rows than features; more than the rank
def test_batched_logistic_matches_a_literal_reference_per_site_and_strength(n, d):
    ds = planted(n=n, d=d)
    tr, va = ds.rows("train"), ds.rows("val")
    grid = [1e-3, 1e-1]
    fit = fit_batched("logistic", ds.acts[:, tr], ds.y[None, tr], ds.acts[:, va], ds.y[None, va], 2, l2=grid, tol=1e-6)
    body, bias = fit.candidates  # raw-space weights for every strength
    for s in range(len(ds.sites)):
        X, y = ds.acts[s, tr], ds.y[tr]
        scale = X.std(0)
        for k, l2 in enumerate(grid):
            w, b = body[s, 0, k, 0], bias[s, 0, k, 0]
            z = (X @ w + b).double()
            w_std = (w * scale).double()  # the same weights on standardised features
            ours = torch.nn.functional.binary_cross_entropy_with_logits(z, y.double()) + 0.5 * l2 * (w_std @ w_std)
            assert float(ours) == pytest.approx(_reference_logistic(X, y, l2), rel=1e-4, abs=1e-6)


def test_logistic_fit_does_not_depend_on_how_sites_are_grouped():
    from interpkit.probing._fit import _site_groups, fit_logistic

    ds = planted(n=200, d=24)
    X = torch.cat([ds.acts, ds.acts[:2].flip(0) * 3 + 1])  # 5 sites
    tr, va = ds.rows("train"), ds.rows("val")
    Y = torch.stack([ds.y[tr], ds.y[tr].flip(0)])  # two replicates, as the controls fit them
    fits = [
        fit_logistic(X[:, tr], Y, X[:, va], ds.y[None, va], 2, rank=8, group_bytes=g)
        for g in (0, 1, 2 * 25 * len(tr) * 4)  # one batch; one site per group; groups of two (and one left)
    ]
    for fit in fits[1:]:
        torch.testing.assert_close(fit.candidates[0], fits[0].candidates[0], rtol=0, atol=1e-6)  # bit-equal here
        assert torch.equal(fit.l2, fits[0].l2)
    xbt = torch.zeros(5, 25, len(tr))
    assert _site_groups(xbt, 0) == [slice(0, 5)] and len(_site_groups(xbt, 1)) == 5
    assert _site_groups(xbt, 2 * 25 * len(tr) * 4) == [slice(0, 2), slice(2, 4), slice(4, 5)]


@pytest.mark.parametrize("n, d", [(400, 30), (12, 30)])  # full rank, and a rank (11) below the sketch's width
def test_top_axes_approximate_the_covariance_eigenpairs_from_below(n, d):
    from interpkit.probing._fit import _top_axes

    gen = torch.Generator().manual_seed(0)
    A = torch.randn(2, d, n, generator=gen, dtype=torch.float64) * torch.logspace(1, -2, d)[None, :, None]
    A = A - A.mean(-1, keepdim=True)
    V, evals = _top_axes(A, rank=6, oversample=10)
    exact, U = torch.linalg.eigh(A @ A.transpose(1, 2) / n)
    exact, U = exact.flip(-1)[:, :6], U.flip(-1)[:, :, :6]  # descending
    order = evals.argsort(-1, descending=True)
    evals, V = evals.gather(1, order), V.gather(2, order[:, None].expand_as(V))
    # a Nystrom approximation never exceeds the covariance; with rank below the width it is exact
    assert bool((evals <= exact * (1 + 1e-9)).all())
    assert torch.allclose(evals, exact, rtol=1e-6 if n < 16 else 0.05)
    overlap = (V.transpose(1, 2) @ U).diagonal(dim1=1, dim2=2).abs()
    assert bool((overlap[:, :3] > 0.99).all()) and torch.allclose(V.transpose(1, 2) @ V, torch.eye(6).double())


def test_curvature_bound_is_the_inverse_of_the_bounded_hessian():
    from interpkit.probing._logistic import CurvatureBound

    gen = torch.Generator().manual_seed(1)
    S, D, r = 2, 7, 3
    V = torch.linalg.qr(torch.randn(S, D, r, generator=gen, dtype=torch.float64)).Q
    evals = torch.tensor([[4.0, 2.0, 1.0], [9.0, 0.5, 0.25]], dtype=torch.float64)
    pen = torch.tensor([0.0, 0.1], dtype=torch.float64).view(1, 1, 2, 1, 1)
    pre = CurvatureBound(V, evals, 0.25, pen)
    v = torch.randn(S, 1, 2, 1, D + 1, generator=gen, dtype=torch.float64)
    out = pre(v)
    for s in range(S):
        low = evals[s].min()  # every axis outside V gets the smallest kept eigenvalue
        sigma = V[s] @ torch.diag(evals[s] - low) @ V[s].T + low * torch.eye(D, dtype=torch.float64)
        for k in range(2):
            H = 0.25 * sigma + pen[0, 0, k, 0, 0] * torch.eye(D, dtype=torch.float64)
            assert torch.allclose(out[s, 0, k, 0, :D], torch.linalg.solve(H, v[s, 0, k, 0, :D]))
            assert torch.allclose(out[s, 0, k, 0, D], v[s, 0, k, 0, D] / 0.25)  # the bias
    assert torch.equal(pre.restrict(torch.tensor([1]))(v[1:]), out[1:])


@pytest.mark.parametrize("n_out", [1, 3])
def test_logistic_ray_equals_the_loss_and_its_derivatives_on_the_line(n_out):
    from interpkit.probing._logistic import LogisticLoss

    gen = torch.Generator().manual_seed(0)
    S, R, K, N, P = 2, 2, 3, 40, 5
    xbt = torch.cat([torch.randn(S, P - 1, N, generator=gen), torch.ones(S, 1, N)], 1).double()
    Y = torch.randint(0, max(2, n_out), (R, N), generator=gen)
    weights = torch.rand(1, R, 1, 1, N, generator=gen).double()
    weights = weights / weights.sum(-1, keepdim=True)
    loss = LogisticLoss(xbt, Y, weights, torch.tensor([0.0, 0.1, 1.0]).double().view(1, 1, K, 1, 1), n_out)
    theta = torch.randn(S, R, K, n_out, P, generator=gen).double()
    d = torch.randn(S, R, K, n_out, P, generator=gen).double()
    t = torch.rand(S, R, K, 1, 1, generator=gen).double() * 2
    line = loss.ray(theta, d)
    at_t = theta + t * d
    f, g = loss(at_t)
    assert torch.allclose(line.loss(t), f)
    first, second = line.slopes(t)
    assert torch.allclose(first, (g * d).sum((3, 4), keepdim=True))  # directional derivative
    eps = 1e-5
    numeric = (loss.ray(theta, d).slopes(t + eps)[0] - loss.ray(theta, d).slopes(t - eps)[0]) / (2 * eps)
    assert torch.allclose(second, numeric, rtol=1e-5, atol=1e-8)
    theta_t, f_t, g_t = line.at(t)
    assert torch.equal(theta_t, at_t) and torch.allclose(f_t, f) and torch.allclose(g_t, g)
    # and the gradient itself is the derivative of the loss (autograd of the plain formula)
    th = at_t.clone().requires_grad_(True)
    z = torch.einsum("srkcp,spn->srkcn", th, xbt)
    if n_out == 1:
        per = torch.nn.functional.softplus(z[:, :, :, 0]) - Y[None, :, None].double() * z[:, :, :, 0]
    else:
        per = torch.logsumexp(z, 3) - z.gather(3, Y[None, :, None, None].expand(S, R, K, 1, N))[:, :, :, 0]
    pen = torch.tensor([0.0, 0.1, 1.0]).double().view(1, 1, K)
    total = (per * weights[:, :, :, 0]).sum(-1) + 0.5 * pen * (th[..., :-1] ** 2).sum((3, 4))
    total.sum().backward()
    assert torch.allclose(th.grad, g)


def test_lbfgs_with_a_ray_reaches_the_same_minimum_as_plain_evaluations():
    from interpkit.probing._logistic import LogisticLoss
    from interpkit.probing._optim import lbfgs

    gen = torch.Generator().manual_seed(3)
    S, N, P = 3, 200, 8
    xbt = torch.cat(
        [torch.randn(S, P - 1, N, generator=gen) * torch.logspace(-1, 1, P - 1)[None, :, None], torch.ones(S, 1, N)], 1
    )
    Y = (xbt[0, 0] + 0.3 * torch.randn(N, generator=gen) > 0).long()[None]
    weights = torch.full((1, 1, 1, 1, N), 1.0 / N)

    def loss():  # a loss owns its data: restricting it to the unfinished sites moves them in place
        return LogisticLoss(xbt.clone(), Y, weights, torch.tensor([1e-3, 1e-1]).view(1, 1, 2, 1, 1), 1)

    x0 = torch.zeros(S, 1, 2, 1, P)
    fast = lbfgs(loss(), x0, (3, 4), tol=1e-6)
    plain_loss = loss()
    plain = lbfgs(lambda x: plain_loss(x), x0, (3, 4), tol=1e-6)  # a bare function: no ray, no restriction
    assert torch.allclose(loss()(fast)[0], loss()(plain)[0], rtol=1e-5)
    assert loss()(fast)[1].abs().max() < 1e-4  # float32: the relative loss change (ftol) stops it first


def test_restricting_a_loss_moves_the_kept_sites_to_the_front():
    from interpkit.probing._logistic import LogisticLoss

    gen = torch.Generator().manual_seed(4)
    S, N, P = 5, 30, 4
    xbt = torch.randn(S, P, N, generator=gen)
    Y = torch.randint(0, 2, (1, N), generator=gen)
    weights = torch.full((1, 1, 1, 1, N), 1.0 / N)
    theta = torch.randn(S, 1, 1, 1, P, generator=gen)
    expected = LogisticLoss(xbt.clone(), Y, weights, torch.zeros(1, 1, 1, 1, 1), 1)(theta)
    loss = LogisticLoss(xbt.clone(), Y, weights, torch.zeros(1, 1, 1, 1, 1), 1)
    loss(theta)  # the optimiser's current point: its scores travel with the restriction
    keep = torch.tensor([1, 3, 4])
    rest = loss.restrict(keep)
    assert torch.equal(rest.xbt, xbt[keep])
    passes = []
    rest.scores = lambda th: passes.append(th) or LogisticLoss.scores(rest, th)
    d = torch.randn(3, 1, 1, 1, P, generator=gen)
    t = torch.full((3, 1, 1, 1, 1), 0.5)
    fresh = LogisticLoss(xbt[keep].clone(), Y, weights, torch.zeros(1, 1, 1, 1, 1), 1)
    assert torch.allclose(rest.ray(theta[keep], d).loss(t), fresh.ray(theta[keep], d).loss(t))
    assert len(passes) == 1  # the direction's scores only
    del rest.scores
    f, g = rest(theta[keep])
    assert torch.allclose(f, expected[0][keep]) and torch.allclose(g, expected[1][keep])
    assert torch.equal(rest.restrict(torch.tensor([2])).xbt, xbt[4:])  # positions among the sites it holds


def test_multinomial_logistic_on_three_classes(native_tiny):
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(150) % 3
    acts = torch.randn(2, 150, 6, generator=gen)
    acts[0, torch.arange(150), y] += 4.0
    ds = P.ProbeDataset(
        acts, y, torch.arange(150), torch.zeros_like(y), y, torch.zeros_like(y), ["a", "b"], ["x", "y", "z"]
    )
    res = P.probe(ds.resplit(seed=0))
    assert res.scores[0, 0, 0] > 0.9 and res.scores[1, 0, 0] < 0.6
    probes = P.Probes.from_result(res)
    assert probes.weight.shape == (2, 6, 3) and probes.basis().shape == (2, 6, 2)


def test_probe_result_separates_signal_from_noise_and_roundtrips(tmp_path):
    ds = planted()
    res = P.probe(ds, "logistic")
    acc = res.scores[:, 0, 0]
    assert acc[0] > 0.95 and acc[-1] < 0.7 and res.scores[-1, 0, 1] > 0  # a standard error is reported
    assert res.labels["metric"] == ["accuracy", "balanced_accuracy", "auc"] and res.meta["chance"] == 0.5
    res.to_json(tmp_path / "r.json")
    again = P.Probes.from_result(type(res).from_json(tmp_path / "r.json"))
    assert torch.equal(again.predict(ds.acts), P.Probes.from_result(res).predict(ds.acts))
    dm = P.probe(ds, "diff_means")
    assert dm.scores[0, 0, 0] > 0.9


def test_diff_means_and_ridge_equal_their_formulas():
    ds = planted(sites=2)
    tr, va = ds.rows("train"), ds.rows("val")
    fit = fit_batched("diff_means", ds.acts[:, tr], ds.y[None, tr], ds.acts[:, va], ds.y[None, va], 2, l2=[0.1])
    X, y = ds.acts[0, tr], ds.y[tr]
    assert torch.allclose(fit.direction[0, 0], X[y == 1].mean(0) - X[y == 0].mean(0), atol=1e-4)
    # Scores read the mean difference through the shrunk within-class covariance (standardised features).
    Z = ((X - X.mean(0)) / X.std(0)).double()
    m1, m0 = Z[y == 1].mean(0), Z[y == 0].mean(0)
    within = torch.cat([Z[y == 1] - m1, Z[y == 0] - m0])
    w_std = torch.linalg.solve(within.T @ within / len(Z) + 0.1 * torch.eye(Z.shape[1], dtype=torch.float64), m1 - m0)
    assert torch.allclose(fit.weight[0, 0, :, 0].double() * X.std(0).double(), w_std, rtol=1e-3, atol=1e-4)
    # Ridge: closed form on standardised features, checked with a literal solve.
    target = ds.acts[0, :, 0] * 2.0 + 0.1 * torch.randn(len(ds), generator=torch.Generator().manual_seed(0))
    fit = fit_batched("ridge", ds.acts[:, tr], target[None, tr], ds.acts[:, va], target[None, va], 0, l2=[0.5])
    Z = ((X - X.mean(0)) / X.std(0)).double()
    t = target[tr].double()
    beta = torch.linalg.solve(
        Z.T @ Z / len(t) + 0.5 * torch.eye(Z.shape[1], dtype=torch.float64), Z.T @ (t - t.mean()) / len(t)
    )
    pred_ref = Z @ beta + t.mean()
    pred = X @ fit.weight[0, 0, :, 0] + fit.bias[0, 0, 0]
    assert torch.allclose(pred.double(), pred_ref, atol=1e-3)


def test_regression_probe_r2(native_tiny):
    ds = planted()
    target = (ds.acts[0, :, 2] * 2.0 - ds.acts[1, :, 3]).tolist()
    reg = P.ProbeDataset(ds.acts, torch.tensor(target), ds.example, ds.pos, ds.token, ds.split, ds.sites, None)
    res = P.probe(reg, "ridge")
    assert res.labels["metric"] == ["r2", "mse"] and res.scores[0, 0, 0] > 0.6 and res.scores[1, 0, 0] > 0.1
    with pytest.raises(P.ProbeError, match="continuous targets"):
        P.probe(ds, "ridge")
    seqs = [[i % 40 + 1, 3] for i in range(20)]
    assert P.collect(native_tiny, seqs, [i / 3 for i in range(20)], sites="embed").classes is None  # floats: regression


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_equal_their_literal_definitions():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (50,), generator=gen)
    score = torch.randn(50, generator=gen) + y
    score[:5] = score[5]  # ties count one half
    literal = sum(
        (float(score[i] > score[j]) + 0.5 * float(score[i] == score[j]))
        for i in range(50)
        for j in range(50)
        if y[i] == 1 and y[j] == 0
    )
    value, se = auc(score[:, None], y, 2)
    assert float(value) == pytest.approx(literal / (int(y.sum()) * int((1 - y).sum())))
    assert 0 < float(se) < 0.1
    acc, acc_se = accuracy(score[:, None], y, torch.arange(50))
    p = float(((score > 0).long() == y).float().mean())
    assert float(acc) == pytest.approx(p) and float(acc_se) == pytest.approx(
        math.sqrt(p * (1 - p) / 50) * math.sqrt(50 / 49), rel=1e-3
    )
    bal, _ = balanced_accuracy(score[:, None], y, 2)
    pred = (score > 0).long()
    assert float(bal) == pytest.approx(
        0.5 * (float((pred[y == 1] == 1).float().mean()) + float((pred[y == 0] == 0).float().mean()))
    )
    r, _ = r2(score, score + 0.0, torch.arange(50))
    assert float(r) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ controls
def test_shuffled_labels_sit_near_chance_and_control_task_memorises_types():
    ds = planted(n=300)
    shuffled = P.shuffled_labels(ds, n_shuffles=3)
    assert shuffled.scores[0, 0, 0] < 0.7 and shuffled.extras["per_shuffle"].shape == (3, 3, 3)
    control = P.control_task(ds)
    q = control.labels["quantity"]
    sel = control.scores[:, q.index("selectivity"), 0]
    assert sel[0] > sel[-1] and control.meta["n_types"] == 7
    labels = P.control_labels(ds, seed=3)
    for t in ds.token.unique():
        assert labels[ds.token == t].unique().numel() == 1  # one control class per token type


def test_learning_curve_is_one_batched_fit_of_all_sizes():
    ds = planted(n=200)
    curve = P.learning_curve(ds, sizes=[10, 40, 120])
    assert curve.dims == ("size", "site", "stat") and curve.labels["size"] == ["10", "40", "120"]
    assert curve.scores[-1, 0, 0] >= curve.scores[0, 0, 0] - 0.05
    with pytest.raises(P.ProbeError, match="outside"):
        P.learning_curve(ds, sizes=[1000])


def test_random_init_copies(native_tiny, tiny_llama):
    for model in (native_tiny, tiny_llama):
        fresh = P.random_init_model(model, seed=5)
        assert fresh.cfg == model.cfg
        a = next(p for n, p in model.bridge.named_parameters() if "embed" in n)
        b = next(p for n, p in fresh.bridge.named_parameters() if "embed" in n)
        assert a.shape == b.shape and not torch.equal(a, b)


def test_random_init_copy_that_equals_the_model_is_refused():
    from interpkit.models._load import wrap_hf_model
    from interpkit.probing._controls import RANDOM_INIT_OFFSET
    from tiny_models import tiny_gpt2_hf

    model = wrap_hf_model(tiny_gpt2_hf(seed=0), None, spec="tiny-gpt2")  # itself a random init, seed 0
    state = torch.get_rng_state()
    fresh = P.random_init_model(model, seed=0)  # not the model again: the control's seeds are offset
    assert not torch.equal(next(fresh.bridge.parameters()), next(model.bridge.parameters()))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    twin = wrap_hf_model(tiny_gpt2_hf(seed=RANDOM_INIT_OFFSET + 3), None, spec="tiny-gpt2")
    with pytest.raises(P.ProbeError, match=r"with seed 3 has the model's own weights.*pass another seed"):
        P.random_init_model(twin, seed=3)


def test_random_init_control_reads_the_same_rows(native_tiny):
    seqs = [[i % 50 + 1, 5, (i * 7) % 50 + 1] for i in range(60)]
    ds = P.collect(native_tiny, seqs, [s[-1] % 2 for s in seqs])
    res = P.random_init_control(native_tiny, ds, seed=1)
    assert res.kind == "probe_random_init" and res.scores.shape == (2, 3, 2)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_errors(native_tiny):
    seqs = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 5, 9]]
    with pytest.raises(P.ProbeError, match="single class"):
        P.collect(native_tiny, seqs, ["a"] * 4)
    with pytest.raises(P.ProbeError, match="3 labels were given for 4 examples"):
        P.collect(native_tiny, seqs, ["a", "b", "a"])
    with pytest.raises(P.ProbeError, match="example 1 has 1 per-token labels"):
        P.collect(native_tiny, seqs, [[0, 1, 0], [1], [0, 1, 1], [1, 0, 0]], positions="all")
    with pytest.raises(P.ProbeError, match=r"matches no token in example 1"):
        P.collect(native_tiny, [[1, 2, 3], [4, 5, 6]], ["a", "b"], positions=lambda toks: [0] if "<1>" in toks else [])
    ds = planted()
    with pytest.raises(SiteError, match=r"'L9.resid_post' is not in this dataset; closest: .*L0.resid_post"):
        ds.select_sites(["L9.resid_post"])
    with pytest.raises(P.ProbeError, match="unknown probe method"):
        P.probe(ds, "svm")
    assert issubclass(P.ProbeError, InterpkitError)


class FakeStore:
    """What from_store needs of an ActivationStore: sites, get(name, index) and per-token indices."""

    def __init__(self, n_examples=40, length=4, d=6):
        gen = torch.Generator().manual_seed(0)
        self.sites = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
        n = n_examples * length
        self.data = {s: torch.randn(n, d, generator=gen) for s in self.sites}
        self.data["example"] = torch.arange(n_examples).repeat_interleave(length)
        self.data["position"] = torch.arange(length).repeat(n_examples)
        self.data["tokens"] = torch.randint(0, 50, (n,), generator=gen)
        last = self.data["position"] == length - 1
        self.labels = [int(v > 0) for v in self.data["blocks.1.hook_resid_post"][last, 0].tolist()]

    def __len__(self):
        return len(self.data["example"])

    def get(self, name, index=None):
        return self.data[name] if index is None else self.data[name][index]


def test_from_store_with_a_duck_typed_store():
    store = FakeStore()
    ds = P.from_store(store, store.labels, positions="last")
    assert ds.sites == ["L0.resid_post", "L1.resid_post"] and len(ds) == 40
    assert torch.equal(ds.acts[1], store.data["blocks.1.hook_resid_post"][store.data["position"] == 3])
    assert P.probe(ds).scores[1, 0, 0] > P.probe(ds).scores[0, 0, 0]  # the label lives in site 1
    with pytest.raises(SiteError, match=r"'L5.resid_post' is not in the store"):
        P.from_store(store, store.labels, sites=["L5.resid_post"])
    with pytest.raises(P.ProbeError, match="39 labels were given for the store's 40 examples"):
        P.from_store(store, store.labels[:-1])
    ds_all = P.from_store(store, [[0, 1, 0, 1]] * 40, positions="all")
    assert len(ds_all) == 160


def test_from_a_real_activation_store(native_tiny, tmp_path):
    cache = pytest.importorskip("interpkit.cache")
    seqs = [[i % 50 + 1, (3 * i) % 50 + 1, 7, i % 5 + 1] for i in range(24)]
    store = cache.harvest(native_tiny, seqs, ["L1.resid_post"], tmp_path / "acts", progress=False)
    ds = P.from_store(tmp_path / "acts", [s[-1] % 2 for s in seqs], positions="last")
    direct = P.collect(native_tiny, seqs, [s[-1] % 2 for s in seqs], sites=["L1.resid_post"])
    assert ds.sites == ["L1.resid_post"] and torch.allclose(ds.acts, direct.acts, atol=1e-2)  # store keeps float16
    assert len(store) == 96
