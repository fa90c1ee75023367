"""Induction task: a block of random tokens, then the block again (Olsson et al. 2022).

Clean: ``[bos] r_1 .. r_L r_1 .. r_k`` and the answer is ``r_{k+1}``, which only an induction
mechanism (find the earlier ``r_k``, copy what followed it) can predict. Corrupt: the first block
is replaced by other random tokens ``s_1 .. s_L`` (the second block is kept), and the wrong token
is ``s_{k+1}``, what induction would copy in the corrupt run. Corrupting the *first* block is
deliberate: it changes the inputs of both the previous-token head (which reads the first block)
and the induction head; corrupting the second block would hide the previous-token head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from interpkit.errors import TaskError
from interpkit.tasks._task import Task, from_token_lists

if TYPE_CHECKING:
    from interpkit.models import Model


def _token_pool(model: Model) -> list[int]:
    vocab = model.cfg.d_vocab
    tok = model.tokenizer
    if tok is None:
        return list(range(vocab))
    special = set(getattr(tok, "all_special_ids", []) or [])
    # Skip the first ids of large vocabularies (bytes and specials) so tokens are ordinary words.
    start = 1000 if vocab > 20000 else 0
    stop = min(vocab, 20000) if vocab > 20000 else vocab
    return [i for i in range(start, stop) if i not in special]


def induction(model: Model, n: int = 32, length: int = 10, prefix: int | None = None, seed: int = 0) -> Task:
    """Repeated random tokens. ``length``: block length; ``prefix``: tokens of the repeat shown (default length-1)."""
    import torch

    if n <= 0:
        raise TaskError(f"induction task needs n >= 1 examples, got n={n}")
    if length < 2:
        raise TaskError(f"induction block length must be >= 2, got length={length}")
    k = length - 1 if prefix is None else prefix
    if not 1 <= k < length:
        raise TaskError(f"induction prefix must be in 1..{length - 1}, got prefix={k}")
    pool = torch.tensor(_token_pool(model))
    if len(pool) < 2 * length:
        raise TaskError(f"model vocabulary is too small ({len(pool)} usable tokens) for blocks of length {length}")
    gen = torch.Generator().manual_seed(seed)
    bos = [model.tokenizer.bos_token_id] if model.tokenizer is not None and model.prepend_bos else []
    clean, corrupt, answer, wrong = [], [], [], []
    for _ in range(n):
        # 2*length distinct tokens: r (clean block) and s (corrupt block) never share a token.
        draw = pool[torch.randperm(len(pool), generator=gen)[: 2 * length]].tolist()
        r, s = draw[:length], draw[length:]
        clean.append(bos + r + r[:k])
        corrupt.append(bos + s + r[:k])
        answer.append(r[k])
        wrong.append(s[k])
    params = {"n": n, "length": length, "prefix": k, "seed": seed}
    return from_token_lists("induction", model, clean, corrupt, answer, wrong, params=params)
