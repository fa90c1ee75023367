"""Modular addition: a 1-layer transformer learns (a + b) mod p with a Fourier algorithm.

Usage:
    .venv/bin/python experiments/modular_addition.py                  # analyse the shipped modadd-113 (seconds)
    .venv/bin/python experiments/modular_addition.py --train          # retrain from scratch (~10 min, one thread)
    .venv/bin/python experiments/modular_addition.py --train --p 59 --weight_decay 1.0 --epochs 9000
    .venv/bin/python experiments/modular_addition.py --train --save src/interpkit/models/toys/modadd-113

Nanda et al. 2023, "Progress measures for grokking via mechanistic interpretability": inputs are
``a b =`` (three tokens, vocabulary p + 1), the answer is read at ``=``. Trained full-batch with
AdamW and strong weight decay on 30% of all p^2 pairs, the model first memorises, then
generalises ("groks"). The trained model computes with a handful of *key frequencies* w_k = 2 pi
k / p: its embedding W_E is sparse in the Fourier basis over Z_p (section 4.1), and its logits
are, up to small terms, sums of cos(w_k (a + b - c)). Two progress measures test that
(section 5.1): the *restricted loss* keeps only the key-frequency terms of the logits (it stays
low when those terms are the whole algorithm) and the *excluded loss* removes them (it rises to
chance when the model relies on them).

Training uses a forward pass written over the bridge's own parameters that computes only the
``=`` position (3x cheaper than the full bridge forward); it is checked against the bridge at
start and end. The trained model is a native interpkit model directory (float16 weights,
under 0.5 MB), loadable with ``ik.load_model("modadd-113")``. Writes runs/modular_addition/:
result.json (config, spectrum, key frequencies, losses) and report.html.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import interpkit as ik
from interpkit.models import boot_native, save_native
from interpkit.plots import bars, line_bands
from interpkit.plots.report import write_report
from interpkit.results import Result, json_text, make_provenance, write_text_atomic
from interpkit.scripting import command_line, config_from_args


@dataclasses.dataclass
class Config:
    p: int = 113
    model: str | None = None  # a trained model to analyse (default: the shipped modadd-{p})
    train: bool = False  # train from scratch instead
    save: str | None = None  # where --train writes the model (default: <out>/model)
    frac_train: float = 0.3
    epochs: int = 8000
    lr: float = 1e-3
    weight_decay: float = 3.0
    stop_test_loss: float = 0.01  # stop once generalisation has cleaned up this far
    key_factor: float = 4.0  # a frequency is "key" when its W_E energy exceeds key_factor x the mean
    seed: int = 0
    threads: int = 1
    device: str | None = None
    dtype: str | None = None
    out: str = "runs/modular_addition"


def bridge_fields(p: int) -> dict:
    return {
        "d_model": 128,
        "d_head": 32,
        "n_heads": 4,
        "n_layers": 1,
        "n_ctx": 3,
        "d_vocab": p + 1,  # 0..p-1 and "=" (= p)
        "d_vocab_out": p,
        "d_mlp": 512,
        "act_fn": "relu",
        "normalization_type": None,
    }


def all_pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every input ``(p*p, 3)`` as ``a b =`` and its label ``(a + b) mod p``."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)
    return tokens, (a + b).flatten() % p


def split(p: int, frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = int(frac * p * p)
    return perm[:n_train], perm[n_train:]


def fast_logits(params: dict[str, torch.Tensor], tokens: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Logits at the last position ``(batch, p)``, from the bridge's parameters (no hooks, one query)."""
    n = tokens.shape[0]
    x = params["embed.weight"][tokens] + params["pos_embed.weight"][: tokens.shape[1]]  # (n, pos, d)

    def linear(name: str, t: torch.Tensor) -> torch.Tensor:
        return t @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    q = linear("blocks.0.attn.q", x[:, -1]).view(n, n_heads, -1)  # (n, h, e): the last query only
    k = linear("blocks.0.attn.k", x).view(n, x.shape[1], n_heads, -1)  # (n, pos, h, e)
    v = linear("blocks.0.attn.v", x).view(n, x.shape[1], n_heads, -1)
    pattern = (torch.einsum("nhe,nkhe->nhk", q, k) / math.sqrt(q.shape[-1])).softmax(-1)
    z = torch.einsum("nhk,nkhe->nhe", pattern, v).reshape(n, -1)
    resid = x[:, -1] + linear("blocks.0.attn.o", z)
    resid = resid + linear("blocks.0.mlp.out", F.relu(linear("blocks.0.mlp.in", resid)))
    return resid @ params["unembed.weight"].T + params["unembed.bias"]


def check_fast_forward(model: ik.Model, tokens: torch.Tensor) -> float:
    with torch.inference_mode():
        params = model.bridge.state_dict()
        diff = (fast_logits(params, tokens, model.cfg.n_heads) - model(tokens)[:, -1]).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"the training forward disagrees with the bridge by {diff:.2e}")
    return diff


def train(cfg: Config) -> tuple[ik.Model, dict]:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model = boot_native(bridge_fields(cfg.p), seed=cfg.seed, spec=f"modadd-{cfg.p}")
    tokens, labels = all_pairs(cfg.p)
    train_idx, test_idx = split(cfg.p, cfg.frac_train, cfg.seed)
    check_fast_forward(model, tokens[:64])
    params = model.bridge.state_dict(keep_vars=True)  # the live Parameters, keyed by their bridge names
    trainable = [t for t in params.values() if isinstance(t, torch.nn.Parameter)]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    curve: dict[str, list[float]] = {"epoch": [], "train_loss": [], "test_loss": [], "test_accuracy": []}
    model.bridge.train()
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        loss = F.cross_entropy(fast_logits(params, tokens[train_idx], model.cfg.n_heads), labels[train_idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if epoch % 50 == 0 or epoch == cfg.epochs - 1:
            with torch.no_grad():
                test_logits = fast_logits(params, tokens[test_idx], model.cfg.n_heads)
                test_loss = F.cross_entropy(test_logits, labels[test_idx]).item()
                accuracy = (test_logits.argmax(-1) == labels[test_idx]).float().mean().item()
            for key, value in zip(curve, (epoch, loss.item(), test_loss, accuracy), strict=True):
                curve[key].append(float(f"{value:.4g}"))
            if epoch % 500 == 0:
                print(
                    f"epoch {epoch:5d}  {time.perf_counter() - start:6.0f} s  train loss {loss.item():.4f}  "
                    f"test loss {test_loss:.4f}  test acc {accuracy:.4f}",
                    flush=True,
                )
            if test_loss < cfg.stop_test_loss:
                print(f"epoch {epoch}: test loss {test_loss:.2e} < {cfg.stop_test_loss}: stopping", flush=True)
                break
    model.bridge.eval()
    check_fast_forward(model, tokens[:64])
    stats = {"epochs_run": curve["epoch"][-1] + 1, "seconds": round(time.perf_counter() - start, 1), "curve": curve}
    return model, stats


def save_small(model: ik.Model, path: str | Path, cfg: Config, stats: dict) -> Path:
    """The model as a native directory with float16 weights (they load back into float32)."""
    model.to(dtype="float16")
    try:
        return save_native(
            model,
            path,
            name=f"modadd-{cfg.p}",
            description=f"1-layer transformer trained on (a + b) mod {cfg.p} (Nanda et al. 2023); input 'a b =', "
            f"token {cfg.p} is '='",
            training={
                **{k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("model", "train", "save", "out")},
                "script": "experiments/modular_addition.py",
                "optimizer": "AdamW, betas (0.9, 0.98), full batch",
                "torch": torch.__version__,
                **stats,
            },
        )
    finally:
        model.to(dtype="float32")


# ---------------------------------------------------------------------------------------------- analysis
def fourier_basis(p: int) -> tuple[torch.Tensor, list[str]]:
    """Orthonormal rows ``(p, p)``: constant, then cos and sin of each frequency k = 1..(p-1)/2."""
    x = torch.arange(p, dtype=torch.float64)
    rows, names = [torch.ones(p, dtype=torch.float64)], ["const"]
    for k in range(1, p // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        names += [f"cos {k}", f"sin {k}"]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True), names


def embedding_spectrum(w_e: torch.Tensor) -> torch.Tensor:
    """Share of W_E's energy ``(K,)`` in each frequency k = 1..K (cos and sin together, constant left out)."""
    p = w_e.shape[0]
    basis, _ = fourier_basis(p)
    coeffs = basis @ w_e.double()  # (p, d_model)
    energy = coeffs[1:].pow(2).sum(-1).reshape(-1, 2).sum(-1)  # (K,)
    return energy / energy.sum()


def key_frequencies(spectrum: torch.Tensor, factor: float) -> list[int]:
    """Frequencies (1-based) holding more than ``factor`` times the mean share, strongest first (at least one)."""
    order = torch.argsort(spectrum, descending=True).tolist()
    return [k + 1 for i, k in enumerate(order) if i == 0 or spectrum[k] > factor / len(spectrum)]


def trig_sum_directions(p: int, k: int) -> torch.Tensor:
    """cos and sin of w_k (a + b) over the (a, b) grid, unit norm: ``(2, p*p)``."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    angle = (2 * math.pi * k / p) * (a + b).flatten().double()
    dirs = torch.stack([angle.cos(), angle.sin()])
    return dirs / dirs.norm(dim=1, keepdim=True)


def restricted_and_excluded(logits: torch.Tensor, labels: torch.Tensor, keys: list[int]) -> dict[str, torch.Tensor]:
    """Per-example losses of the logits ``(p*p, p)`` restricted to / excluding the key frequencies.

    For each output c, the logit over the (a, b) grid is projected onto cos and sin of
    w_k (a + b) for each key k (the terms of cos(w_k (a + b - c))). Restricted keeps those
    projections plus each output's mean over the grid; excluded subtracts them.
    """
    p = logits.shape[1]
    centred = logits.double()
    mean = centred.mean(0, keepdim=True)
    dirs = torch.cat([trig_sum_directions(p, k) for k in keys])  # (2 * len(keys), p*p), orthonormal rows
    projection = dirs.T @ (dirs @ (centred - mean))
    losses = {}
    for name, values in (("full", centred), ("restricted", mean + projection), ("excluded", centred - projection)):
        losses[name] = F.cross_entropy(values, labels, reduction="none")
    return losses


def analyse(model: ik.Model, cfg: Config) -> dict:
    p = model.cfg.d_vocab - 1
    tokens, labels = all_pairs(p)
    train_idx, test_idx = split(p, cfg.frac_train, cfg.seed)
    with torch.inference_mode():
        logits = model(tokens.to(model.device))[:, -1].float().cpu()
        w_e = model.bridge.state_dict()["embed.weight"][:p].float().cpu()
    accuracy = (logits.argmax(-1) == labels).float()
    spectrum = embedding_spectrum(w_e)
    keys = key_frequencies(spectrum, cfg.key_factor)
    losses = restricted_and_excluded(logits, labels, keys)
    out = {
        "p": p,
        "train_accuracy": accuracy[train_idx].mean().item(),
        "test_accuracy": accuracy[test_idx].mean().item(),
        "key_frequencies": keys,
        "key_energy_share": round(float(spectrum[[k - 1 for k in keys]].sum()), 4),
        "chance_loss": math.log(p),
    }
    for name, per_example in losses.items():
        out[f"{name}_loss_train"] = per_example[train_idx].mean().item()
        out[f"{name}_loss_test"] = per_example[test_idx].mean().item()
    out["spectrum"] = [round(float(s), 6) for s in spectrum]
    return out


def report(model: ik.Model, cfg: Config, stats: dict, command: str) -> Path:
    out = Path(cfg.out)
    spectrum = torch.tensor(stats["spectrum"])
    k_labels = [str(k) for k in range(1, len(spectrum) + 1)]
    spec_res = Result(spectrum, ("frequency",), {"frequency": k_labels}, metric="share of W_E energy", kind="spectrum")
    sections: list = [
        (
            "Fourier spectrum of the embedding",
            bars(
                spec_res,
                title=f"W_E energy per Fourier frequency k (p = {stats['p']}); key: {stats['key_frequencies']}",
            ),
        ),
        (
            "Accuracy and progress measures",
            {
                "test accuracy": f"{stats['test_accuracy']:.4f}",
                "train accuracy": f"{stats['train_accuracy']:.4f}",
                "key frequencies": ", ".join(map(str, stats["key_frequencies"])),
                "their share of W_E energy": stats["key_energy_share"],
                "loss (test)": f"{stats['full_loss_test']:.4g}",
                "restricted loss (test), key frequencies only": f"{stats['restricted_loss_test']:.4g}",
                "excluded loss (train), key frequencies removed": f"{stats['excluded_loss_train']:.4g}",
                "chance loss log p": f"{stats['chance_loss']:.4g}",
            },
        ),
    ]
    curve = (model.info.get("training") or {}).get("curve")
    if curve:
        epochs = torch.tensor(curve["epoch"], dtype=torch.float32)
        series = {"train loss": torch.tensor(curve["train_loss"]), "test loss": torch.tensor(curve["test_loss"])}
        fig = line_bands(
            epochs, series, title="Training: cross-entropy loss (log scale)", x_title="epoch", y_title="loss"
        )
        fig.update_yaxes(type="log")
        sections.append(("Training curve (grokking)", fig))
    prov = make_provenance(model, seed=cfg.seed, config=dataclasses.asdict(cfg))
    return write_report(out / "report.html", f"Modular addition (p = {stats['p']})", sections, prov, command)


def main(cfg: Config) -> dict:
    command = command_line("modular_addition.main()")
    if cfg.train:
        model, train_stats = train(cfg)
        saved = save_small(model, cfg.save or Path(cfg.out) / "model", cfg, train_stats)
        print(f"trained {train_stats['epochs_run']} epochs in {train_stats['seconds']} s; wrote {saved}")
        model = ik.load_model(str(saved), device=cfg.device, dtype=cfg.dtype)
    else:
        model = ik.load_model(cfg.model or f"modadd-{cfg.p}", device=cfg.device, dtype=cfg.dtype)
    stats = analyse(model, cfg)
    print(f"test accuracy {stats['test_accuracy']:.4f}, key frequencies {stats['key_frequencies']}")
    print(
        f"loss: test {stats['full_loss_test']:.4g}, restricted {stats['restricted_loss_test']:.4g}, "
        f"excluded (train) {stats['excluded_loss_train']:.4g}, chance {stats['chance_loss']:.4g}"
    )
    result = {"config": dataclasses.asdict(cfg), **stats, "spec": make_provenance(model, seed=cfg.seed)}
    write_text_atomic(Path(cfg.out) / "result.json", json_text(result) + "\n")
    path = report(model, cfg, stats, command)
    print(f"wrote {Path(cfg.out) / 'result.json'} and {path}")
    return result


def parse_args(argv: list[str] | None = None) -> Config:
    return config_from_args(Config, argv, __doc__)


if __name__ == "__main__":
    main(parse_args())
