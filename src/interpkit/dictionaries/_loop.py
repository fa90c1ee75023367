"""The training loop behind :func:`interpkit.dictionaries.train`: initialisation, steps, checkpoints.

A run's whole state is :class:`State` (weights, Adam moments, the tokens since each latent last
fired, the stream position, the variance normaliser and BatchTopK's threshold). It is written to
``out/checkpoint-{step}.safetensors`` plus ``out/checkpoint.json`` (written last, naming the
tensor file; older files are removed after), so a reader never sees half a checkpoint. No step
draws random numbers, so the trajectory from a checkpoint is the uninterrupted one, bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interpkit.dictionaries._dictionary import Dictionary
from interpkit.dictionaries._errors import DictionaryError
from interpkit.dictionaries._stream import Position, Stream

if TYPE_CHECKING:
    import torch

    from interpkit.dictionaries._train import Settings

BETAS, EPS = (0.9, 0.999), 6.25e-10
CHECKPOINT = "checkpoint.json"
LOG = "train_log.jsonl"


@dataclasses.dataclass
class State:
    params: dict[str, torch.Tensor]
    m: dict[str, torch.Tensor]
    v: dict[str, torch.Tensor]
    since_fired: torch.Tensor
    norm: float
    scale_x: float = 1.0
    scale_y: float = 1.0
    max_norm: float | None = None
    step: int = 0
    position: Position = dataclasses.field(default_factory=Position)
    threshold: float = 0.0


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=-1, keepdim=True)


def initial_state(stream: Stream, s: Settings, init_tokens: int) -> State:
    """Weights from the seed and the first ``init_tokens`` tokens of the stream (the same on every rank)."""
    import torch

    x, y, _ = stream.batch(Position(), init_tokens)
    max_norm = None
    if s.max_norm_ratio:
        max_norm = s.max_norm_ratio * float((x if y is None else y).float().norm(dim=-1).median())
        stream.set_max_norm(max_norm)
        x, y, _ = stream.batch(Position(), init_tokens)
    x = x.double()
    y = x if y is None else y.double()
    # train on data scaled to E|x|^2 = d (Gao et al. 2024): the learning rate then means the same for
    # every site and model; the scales are folded back into the weights at the end
    scale_x = (x.shape[1] / float(x.pow(2).sum(-1).mean())) ** 0.5
    scale_y = scale_x if s.kind == "sae" else (y.shape[1] / float(y.pow(2).sum(-1).mean())) ** 0.5
    x, y = x * scale_x, y * scale_y
    mean_x, mean_y = x.mean(0), y.mean(0)
    norm = float((y - mean_y).pow(2).sum(-1).mean())
    if not norm > 0:
        raise DictionaryError(f"the training targets have no variance ({stream.reader.describe}): nothing to learn")
    g = torch.Generator().manual_seed(s.seed)
    w_dec = _unit_rows(torch.randn(s.n_latents, y.shape[1], generator=g, dtype=torch.float64))
    params: dict[str, torch.Tensor] = {"W_dec": w_dec, "b_dec": mean_y.clone()}
    target = y - mean_y
    if s.kind == "skip_transcoder":
        xc = x - mean_x
        ridge = 1e-4 * float(xc.pow(2).sum(-1).mean()) * torch.eye(x.shape[1], dtype=torch.float64) * x.shape[0]
        w_skip = torch.linalg.solve(xc.T @ xc + ridge, xc.T @ target).T  # (d_out, d_in): least squares
        params.update(W_skip=w_skip, b_dec=mean_y - mean_x @ w_skip.T)
        target = target - xc @ w_skip.T
    if s.kind == "sae":
        params.update(W_enc=w_dec.clone(), b_enc=torch.zeros(s.n_latents, dtype=torch.float64))
    else:
        # unit-norm decoder rows: the output's scale is the latents', so scale the encoder until the
        # initial sparse output has the size of what it must predict
        w_enc = _unit_rows(torch.randn(s.n_latents, x.shape[1], generator=g, dtype=torch.float64))
        pre = (x - mean_x) @ w_enc.T
        top = pre.clamp_min(0).topk(min(s.k, s.n_latents), dim=-1)
        out = torch.zeros_like(pre).scatter(-1, top.indices, top.values) @ w_dec
        size = float(out.norm(dim=-1).mean())
        w_enc = w_enc * (float(target.norm(dim=-1).mean()) / size if size > 0 else 1.0)
        params.update(W_enc=w_enc, b_enc=-(mean_x @ w_enc.T))
    params = {k: v.float().contiguous() for k, v in params.items()}
    return State(
        params=params,
        m={k: torch.zeros_like(v) for k, v in params.items()},
        v={k: torch.zeros_like(v) for k, v in params.items()},
        since_fired=torch.zeros(s.n_latents, dtype=torch.long),
        norm=norm,
        scale_x=scale_x,
        scale_y=scale_y,
        max_norm=max_norm,
    )


def _reduce(group: Any, tensors: list[torch.Tensor], op: str = "sum") -> None:
    """All-reduce ``tensors`` in place over the ranks (one flat buffer per dtype)."""
    if not group.active:
        return
    import torch
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    at = 0
    for t in tensors:
        t.copy_(flat[at : at + t.numel()].view_as(t))
        at += t.numel()


def train_step(state: State, stream: Stream, s: Settings, group: Any) -> dict[str, float]:
    """One optimisation step on the next global batch; returns its statistics."""
    import torch

    from interpkit.dictionaries._sparse import fast_loss

    x, y, after = stream.batch(state.position, s.batch_size)
    lo, hi = group.rank * s.batch_size // group.world, (group.rank + 1) * s.batch_size // group.world
    x = x[lo:hi].float() * state.scale_x
    y = x if y is None else y[lo:hi].float() * state.scale_y
    params = {k: v.requires_grad_(True) for k, v in state.params.items()}
    dead = state.since_fired >= s.dead_tokens if s.aux_alpha > 0 else None
    out = fast_loss(
        params,
        x,
        y,
        activation=s.activation,
        k=s.k,
        center_input=s.kind == "sae",
        norm=state.norm,
        global_batch=s.batch_size,
        dead=dead,
        aux_alpha=s.aux_alpha,
        group=group,
    )
    out["loss"].backward()
    names = sorted(params)
    grads = [params[k].grad for k in names]
    fired = torch.zeros(s.n_latents)
    fired[out["fired"]] = 1.0
    stats = torch.stack([out["mse"].detach(), out["aux"].detach()])
    _reduce(group, [*grads, stats])
    _reduce(group, [fired], "max")
    with torch.no_grad():
        for p in params.values():
            p.requires_grad_(False)
        w_dec, g_dec = params["W_dec"], params["W_dec"].grad
        g_dec -= (g_dec * w_dec).sum(-1, keepdim=True) * w_dec  # keep the step tangent to the unit sphere
        _adam(state, s.lr_at(state.step), state.step + 1)
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        for p in params.values():
            p.grad = None
        state.since_fired += s.batch_size
        state.since_fired[fired > 0] = 0
        if s.activation == "batchtopk":
            low = out.get("min_active")
            low_t = torch.tensor([float(low) if low is not None else float("inf")])
            _reduce(group, [low_t], "min")
            if torch.isfinite(low_t).all():
                value = float(low_t)
                rate = s.threshold_lr if state.step else 1.0
                state.threshold = (1 - rate) * state.threshold + rate * value
    state.position = after
    state.step += 1
    return {
        "fvu": float(stats[0]),
        "aux": float(stats[1]),
        "dead": float((state.since_fired >= s.dead_tokens).float().mean()),
        "lr": s.lr_at(state.step - 1),
    }


def _adam(state: State, lr: float, t: int) -> None:
    b1, b2 = BETAS
    for name, p in state.params.items():
        g = p.grad
        m, v = state.m[name], state.v[name]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2**t)).sqrt_().add_(EPS)
        p.addcdiv_(m, denom, value=-lr / (1 - b1**t))


# ------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(out: Path, state: State, s: Settings) -> None:
    from interpkit.dictionaries._formats import write_json, write_tensors

    tensors = {f"p.{k}": v for k, v in state.params.items()}
    tensors.update({f"m.{k}": v for k, v in state.m.items()})
    tensors.update({f"v.{k}": v for k, v in state.v.items()})
    tensors["since_fired"] = state.since_fired
    name = f"checkpoint-{state.step:08d}.safetensors"
    write_tensors(out / name, tensors)
    info = {
        "file": name,
        "step": state.step,
        "position": state.position.to_json(),
        "norm": state.norm,
        "scales": [state.scale_x, state.scale_y],
        "max_norm": state.max_norm,
        "threshold": state.threshold,
        "settings": dataclasses.asdict(s),
    }
    write_json(out / CHECKPOINT, info)
    for old in out.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_checkpoint(out: Path, s: Settings, overwrite: bool) -> State | None:
    from interpkit.dictionaries._formats import read_json, read_tensors

    path = out / CHECKPOINT
    if not path.is_file():
        return None
    info = read_json(path)
    if info.get("settings") != json.loads(json.dumps(dataclasses.asdict(s))):
        if overwrite:
            return None
        diff = _differences(info.get("settings") or {}, dataclasses.asdict(s))
        raise DictionaryError(
            f"{str(out)!r} holds a checkpoint of a different training run ({diff}): refusing to mix them. "
            "Choose another out, or pass overwrite=True"
        )
    t = read_tensors(out / info["file"])
    strip = lambda prefix: {k[len(prefix) :]: v for k, v in t.items() if k.startswith(prefix)}  # noqa: E731
    return State(
        params=strip("p."),
        m=strip("m."),
        v=strip("v."),
        since_fired=t["since_fired"],
        norm=float(info["norm"]),
        scale_x=float(info["scales"][0]),
        scale_y=float(info["scales"][1]),
        max_norm=info["max_norm"],
        step=int(info["step"]),
        position=Position(*info["position"]),
        threshold=float(info["threshold"]),
    )


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} vs {new.get(k)!r}" for k in keys[:4])


def result(state: State, s: Settings, stats: dict[str, float]) -> Dictionary:
    """The dictionary on the raw data: the training scales folded into the weights.

    Trained on ``x' = a x`` and ``y' = b y``, the latents of the raw data are ``z = z' / b``
    (ReLU, TopK and thresholds commute with a positive scale), so ``W_enc = (a / b) W_enc'``,
    ``b_enc = b_enc' / b``, ``b_dec = b_dec' / b``, ``W_skip = (a / b) W_skip'``, threshold
    ``/ b``, and the unit-norm ``W_dec`` is unchanged.
    """
    import torch

    p = {k: v.detach().double() for k, v in state.params.items()}
    a, b = state.scale_x, state.scale_y
    dtype = state.params["W_enc"].dtype
    threshold = None
    if s.activation == "batchtopk":
        threshold = torch.full((s.n_latents,), state.threshold / b, dtype=dtype)
    return Dictionary(
        W_enc=(p["W_enc"] * (a / b)).to(dtype),
        b_enc=(p["b_enc"] / b).to(dtype),
        W_dec=p["W_dec"].to(dtype),
        b_dec=(p["b_dec"] / b).to(dtype),
        W_skip=(p["W_skip"] * (a / b)).to(dtype) if "W_skip" in p else None,
        threshold=threshold,
        activation=s.activation,
        k=s.k,
        kind=s.kind,
        center_input=s.kind == "sae",
        input_site=s.input_site,
        output_site=s.output_site,
        meta={"training": dataclasses.asdict(s), "final": stats, "scales": [a, b], "skip_norm_above": state.max_norm},
    )


# ------------------------------------------------------------------------------------ the run
def run(
    stream: Stream,
    s: Settings,
    *,
    out: Path | None,
    checkpoint_every: int | None,
    init_tokens: int,
    log_every: int,
    progress: bool,
    distributed: bool | None,
    overwrite: bool,
) -> Dictionary:
    import torch
    from tqdm.auto import tqdm

    from interpkit.dictionaries._formats import load, save
    from interpkit.distributed import join

    group = join(types.SimpleNamespace(device=torch.device("cpu")), distributed, error=DictionaryError)
    try:
        if out is not None and (out / "config.json").is_file() and (out / "dictionary.safetensors").is_file():
            done = load(out)
            trained = done.meta.get("training") or {}
            if trained == json.loads(json.dumps(dataclasses.asdict(s))):
                return done
            if not overwrite:
                raise DictionaryError(
                    f"{str(out)!r} holds a dictionary trained with other settings "
                    f"({_differences(trained, dataclasses.asdict(s))}); choose another out, or pass overwrite=True"
                )
        state = load_checkpoint(out, s, overwrite) if out is not None else None
        if state is None:
            state = initial_state(stream, s, init_tokens)
        stream.set_max_norm(state.max_norm)
        every = checkpoint_every or max(1, s.steps // 20)
        writer = out is not None and group.rank == 0
        if writer:
            out.mkdir(parents=True, exist_ok=True)
            _trim_log(out / LOG, state.step)
        bar = tqdm(
            total=s.steps, initial=state.step, desc="train", unit="step", disable=not progress or group.rank != 0
        )
        stats: dict[str, float] = {}
        log = open(out / LOG, "a", encoding="utf-8") if writer else None  # noqa: SIM115
        try:
            while state.step < s.steps:
                stats = train_step(state, stream, s, group)
                bar.update()
                if state.step % log_every == 0 or state.step == s.steps:
                    bar.set_postfix(fvu=f"{stats['fvu']:.3f}", dead=f"{stats['dead']:.3f}")
                    if log is not None:
                        log.write(json.dumps({"step": state.step, **stats}) + "\n")
                        log.flush()
                if writer and state.step % every == 0 and state.step < s.steps:
                    save_checkpoint(out, state, s)
        finally:
            bar.close()
            if log is not None:
                log.close()
        dictionary = result(state, s, stats)
        if writer:
            save(dictionary, out)
            (out / CHECKPOINT).unlink(missing_ok=True)
            for old in out.glob("checkpoint-*.safetensors"):
                old.unlink()
        group.agree(None)
        return dictionary
    finally:
        group.close()


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (a resumed run writes them again)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
