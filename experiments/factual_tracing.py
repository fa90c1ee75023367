"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", section 2.1).

Usage:
    .venv/bin/python experiments/factual_tracing.py                        # embedded model, 4 facts (13 min, 1 thread of a 2-core CPU)
    .venv/bin/python experiments/factual_tracing.py --n 8 --samples 5 --window 10
    .venv/bin/python experiments/factual_tracing.py --facts my_facts.jsonl  # {"subject", "relation", "object"} lines

For each fact ("The Eiffel Tower is located in the city of" -> " Paris") three runs:

- clean: the prompt as is; p* = p(answer);
- corrupted: Gaussian noise added to the subject's token embeddings, with standard deviation
  ``--noise`` (3) times the empirical standard deviation of the subjects' embeddings;
- corrupted-with-restoration: the corrupted run, with one hidden state set back to its clean
  value: the residual stream after layer l at position i, or the MLP (attention) outputs of a
  window of ``--window`` layers centred on l at position i.

The indirect effect of a state is p(answer) restored minus p(answer) corrupted, averaged over
``--samples`` noise draws; the total effect is p clean minus p corrupted. Every restoration of
one fact is one row of a batched forward pass (hooks through ``interpkit.hooks``), all rows of a
noise draw sharing the same noise. Facts are the ones the model knows best (highest clean
p(answer) among the facts whose answer is one token), as the paper keeps known facts only.

Writes runs/factual_tracing/: result.json and report.html with, for the first fact and averaged
over facts (by the paper's token categories), the three indirect-effect maps (residual stream,
MLP, attention) with layers across and tokens down.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from tqdm import tqdm

import interpkit as ik
import interpkit.cache
from interpkit.hooks import hooks
from interpkit.plots import heatmap
from interpkit.plots.report import write_report
from interpkit.results import Result, json_text, make_provenance, write_text_atomic
from interpkit.runtime import forward_final
from interpkit.scripting import command_line, config_dict, config_from_args
from interpkit.tasks.factual import read_facts

KINDS = {"resid": "blocks.{l}.hook_resid_post", "mlp": "blocks.{l}.hook_mlp_out", "attn": "blocks.{l}.hook_attn_out"}
CATEGORIES = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)


@dataclasses.dataclass
class Config:
    model: str = "smollm2-135m"
    n: int = 4  # facts
    samples: int = 3  # noise draws per fact (the paper uses 10)
    noise: float = 3.0  # noise std in units of the subjects' embedding std
    window: int = 10  # layers restored together for the MLP and attention maps
    batch_size: int = 64  # rows per forward pass
    facts: str | None = None  # a JSONL file of facts (default: interpkit's own)
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    out: str = "runs/factual_tracing"


@dataclasses.dataclass
class Fact:
    prompt: str
    subject: str
    answer: str
    tokens: torch.Tensor  # (pos,)
    span: tuple[int, int]  # subject tokens [start, stop)
    answer_id: int


def subject_span(model: ik.Model, relation: str, subject: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """The prompt's tokens and the positions of the subject's tokens in them."""
    prefix = relation[: relation.index("{}")]
    full = model.to_tokens(relation.replace("{}", subject))[0]
    with_subject = model.to_tokens(prefix + subject)[0]
    start = len(model.to_tokens(prefix.rstrip())[0]) if prefix.strip() else (1 if model.prepend_bos else 0)
    stop = len(with_subject)
    if not torch.equal(full[:stop], with_subject) or stop <= start:
        raise ik.InterpkitError(f"cannot locate subject {subject!r} in the tokens of {relation!r}")
    return full, (start, stop)


def known_facts(model: ik.Model, cfg: Config) -> list[Fact]:
    """The ``cfg.n`` facts with the highest clean p(answer) (single-token answers only)."""
    candidates = []
    for row in read_facts(cfg.facts):
        try:
            answer_id = model.to_single_token(row["object"])
            tokens, span = subject_span(model, row["relation"], row["subject"])
        except ik.InterpkitError:
            continue
        prompt = row["relation"].replace("{}", row["subject"])
        candidates.append(Fact(prompt, row["subject"], row["object"], tokens, span, answer_id))
    if len(candidates) < cfg.n:
        raise ik.InterpkitError(f"only {len(candidates)} facts are usable with this tokenizer; asked for n={cfg.n}")
    with torch.inference_mode():
        probs = [float(model(f.tokens[None])[0, -1].float().softmax(-1)[f.answer_id]) for f in candidates]
    order = sorted(range(len(candidates)), key=lambda i: -probs[i])
    return [candidates[i] for i in order[: cfg.n]]


def subject_embedding_std(model: ik.Model, facts: list[Fact]) -> float:
    """Empirical standard deviation of the subjects' token embeddings (the paper's sigma)."""
    parts = []
    for fact in facts:
        embed = ik.cache.run(model, fact.tokens[None], sites=["embed"])["embed"]  # (1, pos, d_model)
        parts.append(embed[0, fact.span[0] : fact.span[1]].float())
    return float(torch.cat(parts).std())


def restorations(model: ik.Model, fact: Fact, window: int) -> list[tuple[str, int, int, list[int]]]:
    """Rows ``(kind, layer, position, layers restored)``; positions before the subject are left out.

    Those positions see no noise (attention is causal), so restoring them changes nothing.
    """
    n_layers = model.cfg.n_layers
    rows = []
    for kind in KINDS:
        for layer in range(n_layers):
            low = layer if kind == "resid" else max(0, layer - window // 2)
            restored = [layer] if kind == "resid" else list(range(low, min(n_layers, low + window)))
            rows += [(kind, layer, pos, restored) for pos in range(fact.span[0], len(fact.tokens))]
    return rows


def trace_fact(model: ik.Model, fact: Fact, sigma: float, cfg: Config, gen: torch.Generator) -> dict:
    """p(answer) clean, corrupted, and restored for every (kind, layer, position): one fact.

    All rows of a noise draw share the corrupted run up to the first layer they restore, so each
    row's forward pass starts there, from the corrupted residual stream (``start_at_layer``).
    """
    device, n_pos, n_layers = model.device, len(fact.tokens), model.cfg.n_layers
    tokens = fact.tokens.to(device)[None]
    rows = restorations(model, fact, cfg.window)
    hook_of = {(kind, lay): model.resolve_hook(KINDS[kind].format(l=lay)) for kind in KINDS for lay in range(n_layers)}
    resid_pre = [model.resolve_hook(f"blocks.{lay}.hook_resid_pre") for lay in range(n_layers)]
    answer_pos = torch.tensor([n_pos - 1], device=device)

    def capture(names: list[str], extra: list | None = None) -> tuple[dict[str, torch.Tensor], float]:
        kept: dict[str, torch.Tensor] = {}

        def keep(act: torch.Tensor, hook) -> None:
            kept[hook.name] = act.detach().clone()

        with torch.inference_mode(), hooks(model, fwd=[*(extra or []), *[(h, keep) for h in names]]):
            p = float(model(tokens)[0, -1].float().softmax(-1)[fact.answer_id])
        return kept, p

    clean, p_clean = capture(sorted(set(hook_of.values())))
    start, stop = fact.span
    by_low: dict[int, list[int]] = {}
    for r, (_, _, _, restored) in enumerate(rows):
        by_low.setdefault(restored[0], []).append(r)
    probs = torch.zeros(cfg.samples, len(rows))
    p_corrupt = torch.zeros(cfg.samples)
    for s in range(cfg.samples):
        noise = torch.randn(stop - start, model.cfg.d_model, generator=gen) * (cfg.noise * sigma)

        def add_noise(act: torch.Tensor, hook, noise=noise) -> torch.Tensor:
            out = act.clone()
            out[:, start:stop] += noise.to(act.device, act.dtype)
            return out

        corrupt, p_corrupt[s] = capture(resid_pre, [("hook_embed", add_noise)])
        for low, members in by_low.items():
            for lo in range(0, len(members), cfg.batch_size):
                chunk = members[lo : lo + cfg.batch_size]
                masks: dict[str, torch.Tensor] = {}
                for i, r in enumerate(chunk):
                    kind, _, pos, restored = rows[r]
                    for lay in restored:
                        hook = hook_of[kind, lay]
                        masks.setdefault(hook, torch.zeros(len(chunk), n_pos, 1, dtype=torch.bool))[i, pos] = True

                def restore(act: torch.Tensor, hook, masks=masks) -> torch.Tensor:
                    return torch.where(masks[hook.name].to(act.device), clean[hook.name].to(act.dtype), act)

                start_resid = corrupt[resid_pre[low]].expand(len(chunk), -1, -1)
                with torch.inference_mode():
                    logits = forward_final(
                        model, start_resid, low, answer_pos.expand(len(chunk)), [(h, restore) for h in masks]
                    )
                probs[s, chunk] = logits.float().softmax(-1)[:, fact.answer_id].cpu()
    mean, corrupted = probs.mean(0), float(p_corrupt.mean())
    effects = {kind: torch.zeros(n_pos, n_layers) for kind in KINDS}  # (pos, layer); 0 before the subject
    for r, (kind, layer, pos, _) in enumerate(rows):
        effects[kind][pos, layer] = mean[r] - corrupted
    return {"p_clean": p_clean, "p_corrupt": corrupted, "effects": effects}


def token_categories(n_pos: int, span: tuple[int, int]) -> list[int | None]:
    """Each position's category (index into CATEGORIES); None for tokens before the subject."""
    start, stop = span
    out: list[int | None] = []
    for i in range(n_pos):
        if i == n_pos - 1:
            out.append(5)
        elif i < start:
            out.append(None)
        elif i == start:
            out.append(0)
        elif i == stop - 1:
            out.append(2)
        elif i < stop:
            out.append(1)
        else:
            out.append(3 if i == stop else 4)
    return out


def average_by_category(traces: list[dict], facts: list[Fact], kind: str) -> torch.Tensor:
    """Indirect effects ``(category, layer)`` averaged over facts (and tokens within a category)."""
    n_layers = traces[0]["effects"][kind].shape[1]
    total, count = torch.zeros(len(CATEGORIES), n_layers), torch.zeros(len(CATEGORIES), 1)
    for trace, fact in zip(traces, facts, strict=True):
        effect = trace["effects"][kind]
        per_fact = torch.zeros_like(total)
        seen = torch.zeros(len(CATEGORIES), 1)
        for pos, cat in enumerate(token_categories(len(fact.tokens), fact.span)):
            if cat is not None:
                per_fact[cat] += effect[pos]
                seen[cat] += 1
        present = seen[:, 0] > 0
        total[present] += per_fact[present] / seen[present]
        count[present] += 1
    return total / count.clamp_min(1)


def effect_map(values: torch.Tensor, rows: list[str], kind: str, title: str) -> Result:
    layers = [f"L{i}" for i in range(values.shape[1])]
    return Result(
        values,
        ("token", "layer"),
        {"token": rows, "layer": layers},
        metric="indirect effect on p(answer)",
        kind=f"causal tracing ({kind})",
        meta={"title": title},
    )


def main(cfg: Config) -> dict:
    command = command_line("factual_tracing.main()")
    torch.manual_seed(cfg.seed)
    model = ik.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    facts = known_facts(model, cfg)
    sigma = subject_embedding_std(model, facts)
    print(f"{model}\nnoise std {cfg.noise} x {sigma:.4f}; facts: {[f.prompt + f.answer for f in facts]}")
    gen = torch.Generator().manual_seed(cfg.seed)
    traces = [trace_fact(model, f, sigma, cfg, gen) for f in tqdm(facts, desc="causal tracing", unit="fact")]
    names = {
        "resid": "residual stream (single layer)",
        "mlp": f"MLP ({cfg.window}-layer window)",
        "attn": f"attention ({cfg.window}-layer window)",
    }
    first, fact = traces[0], facts[0]
    token_rows = [
        f"{t}*" if fact.span[0] <= i < fact.span[1] else t for i, t in enumerate(model.to_str_tokens(fact.tokens))
    ]
    sections: list = [
        (
            "Facts",
            [
                {
                    "prompt": f.prompt,
                    "answer": f.answer,
                    "p clean": round(t["p_clean"], 4),
                    "p corrupted": round(t["p_corrupt"], 4),
                    "total effect": round(t["p_clean"] - t["p_corrupt"], 4),
                }
                for f, t in zip(facts, traces, strict=True)
            ],
        )
    ]
    for kind, name in names.items():
        res = effect_map(first["effects"][kind], token_rows, kind, name)
        title = f"Indirect effect of restoring the {name} on p({fact.answer!r}), '{fact.prompt}' (* subject)"
        sections.append((f"First fact: {name}", heatmap(res, title=title)))
    for kind, name in names.items():
        avg = average_by_category(traces, facts, kind)
        res = effect_map(avg, list(CATEGORIES), kind, name)
        title = f"Average indirect effect of restoring the {name} on p(answer), {len(facts)} facts"
        sections.append((f"Average: {name}", heatmap(res, title=title)))
    summary = {
        "facts": [
            {
                "prompt": f.prompt,
                "answer": f.answer,
                "subject_span": list(f.span),
                "p_clean": t["p_clean"],
                "p_corrupt": t["p_corrupt"],
                **{f"{k}_effect": t["effects"][k].tolist() for k in KINDS},
            }
            for f, t in zip(facts, traces, strict=True)
        ],
        "average_by_category": {k: average_by_category(traces, facts, k).tolist() for k in KINDS},
        "categories": list(CATEGORIES),
        "sigma": sigma,
    }
    for kind in KINDS:
        avg = torch.tensor(summary["average_by_category"][kind])
        cat, layer = divmod(int(avg.argmax()), avg.shape[1])
        summary[f"peak_{kind}"] = {"category": CATEGORIES[cat], "layer": layer, "effect": float(avg.max())}
        print(f"{names[kind]:<32} peak effect {float(avg.max()):.3f} at the {CATEGORIES[cat]}, layer {layer}")
    prov = make_provenance(model, seed=cfg.seed, config=config_dict(cfg), command=command)
    out = Path(cfg.out)
    write_text_atomic(out / "result.json", json_text({**summary, "spec": prov}) + "\n")
    path = write_report(out / "report.html", f"Causal tracing in {model.name}", sections, prov, command)
    print(f"wrote {out / 'result.json'} and {path}")
    return summary


def parse_args(argv: list[str] | None = None) -> Config:
    return config_from_args(Config, argv, __doc__)


if __name__ == "__main__":
    main(parse_args())
