"""Training data for dictionaries: shuffled batches streamed from a tensor or an activation store.

The token stream of an epoch is a pure function of ``(seed, epoch)``: the data is cut into
blocks of ``block_tokens`` consecutive tokens, the blocks are put in a seeded random order, and
consecutive groups of ``buffer_tokens // block_tokens`` blocks form a *buffer*, which is read
(one contiguous slice per block), filtered and shuffled with its own seed. Batches are
consecutive runs of the buffers' rows, crossing buffer boundaries as needed. Memory therefore
holds one or two buffers (in the store's dtype) whatever the store's size, and a position in the
stream is three integers ``(epoch, buffer, offset)``: a resumed run rebuilds the buffer it was
in and continues from the same row, so it sees the very batches an uninterrupted run does.

Position 0 of every example is dropped by default (``exclude_first``): at the first position
the residual stream of most language models is tens to hundreds of times larger than elsewhere
(SmolLM2 at layer 12: norm 22,777 against ~130), and those few tokens would dominate the
variance. Token ids in ``exclude_tokens`` are dropped too (a BOS, a padding id), and so are
tokens whose target norm exceeds ``max_norm`` (set by the trainer from the data: the rare
attention-sink tokens after position 0 with the same massive norm, 6 in 79,000 SmolLM2 tokens,
which would otherwise carry three quarters of the variance). :meth:`Stream.count` ignores that
last filter (it would have to read every activation).

Under data parallelism every rank builds the same buffers and takes its own rows
``[r * B // W, (r + 1) * B // W)`` of each global batch of ``B``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.dictionaries._errors import DictionaryError

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class Position:
    """Where the stream stands: the next row is ``offset`` of ``buffer`` in ``epoch``."""

    epoch: int = 0
    buffer: int = 0
    offset: int = 0

    def to_json(self) -> list[int]:
        return [self.epoch, self.buffer, self.offset]


class Reader:
    """Random-access reads of contiguous token ranges: ``(x, y, keep)`` for tokens ``[start, stop)``."""

    n_tokens: int
    d_in: int
    d_out: int
    describe: str

    def read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        raise NotImplementedError

    def positions_of(self, start: int, stop: int) -> torch.Tensor | None:
        """Each token's position in its example (None when unknown)."""
        return None

    def tokens(self, start: int, stop: int) -> torch.Tensor:
        raise DictionaryError("these training data carry no token ids")

    def close(self) -> None:
        """Drop cached file handles (a store's memory maps)."""


class TensorReader(Reader):
    """Rows of in-memory tensors ``x (N, d_in)`` and optional ``y (N, d_out)`` (``y`` = ``x`` when None)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> None:
        if x.ndim != 2:
            raise DictionaryError(f"training data must be (n_tokens, d), got shape {tuple(x.shape)}")
        if y is not None and (y.ndim != 2 or y.shape[0] != x.shape[0]):
            raise DictionaryError(f"targets {tuple(y.shape)} do not match inputs {tuple(x.shape)}")
        self.x, self.y, self.positions = x, y, positions
        self.n_tokens, self.d_in = x.shape
        self.d_out = self.d_in if y is None else y.shape[1]
        self.describe = f"a tensor {tuple(x.shape)}"

    def read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        y = None if self.y is None else self.y[start:stop]
        return self.x[start:stop], y, self.positions_of(start, stop)

    def positions_of(self, start: int, stop: int) -> torch.Tensor | None:
        return None if self.positions is None else self.positions[start:stop]


class StoreReader(Reader):
    """One or two sites of an :class:`interpkit.cache.ActivationStore` (input and target)."""

    def __init__(self, store: Any, input_site: str, output_site: str | None = None) -> None:
        from interpkit.cache import CacheError

        self.store = store
        try:
            self.in_key = store.select([input_site]).sites[0]
            self.out_key = None if output_site in (None, input_site) else store.select([output_site]).sites[0]
        except CacheError:
            missing = [s for s in (input_site, output_site) if s is not None and not _has(store, s)]
            keys = [f"{s['key']} ({s['label']})" if s.get("label") else s["key"] for s in store.manifest["sites"]]
            raise DictionaryError(
                f"the store {str(store.path)!r} has no site {missing[0]!r}; it holds: {', '.join(keys)}. "
                "Harvest it with ik.cache.harvest (interpkit cache --sites ...)"
            ) from None
        self.n_tokens = len(store)
        self.d_in = _width(store.shape(self.in_key), input_site)
        self.d_out = self.d_in if self.out_key is None else _width(store.shape(self.out_key), output_site)
        self.describe = f"store {str(store.path)!r}"

    def read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        x = self.store.get(self.in_key, slice(start, stop))
        y = None if self.out_key is None else self.store.get(self.out_key, slice(start, stop))
        return x, y, self.positions_of(start, stop)

    def positions_of(self, start: int, stop: int) -> torch.Tensor | None:
        return self.store.get("position", slice(start, stop))

    def tokens(self, start: int, stop: int) -> torch.Tensor:
        return self.store.get("tokens", slice(start, stop))

    def close(self) -> None:
        self.store.close()


def _has(store: Any, site: str) -> bool:
    try:
        store.select([site])
    except Exception:
        return False
    return True


def _width(shape: Sequence[int], site: str | None) -> int:
    if len(shape) != 1:
        raise DictionaryError(
            f"site {site!r} has per-token shape {tuple(shape)}: a dictionary needs a vector per token"
        )
    return int(shape[0])


class Stream:
    """Shuffled, filtered batches from a :class:`Reader`, resumable from a :class:`Position`."""

    def __init__(
        self,
        reader: Reader,
        *,
        seed: int = 0,
        buffer_tokens: int = 1 << 16,
        block_tokens: int = 4096,
        exclude_first: bool = True,
        exclude_tokens: Sequence[int] = (),
    ) -> None:
        if buffer_tokens < block_tokens:
            block_tokens = buffer_tokens
        self.reader, self.seed = reader, int(seed)
        self.block_tokens = int(block_tokens)
        self.blocks_per_buffer = max(1, int(buffer_tokens) // self.block_tokens)
        self.n_blocks = -(-reader.n_tokens // self.block_tokens)
        self.exclude_first = exclude_first
        self.exclude_tokens = list(exclude_tokens)
        self.max_norm: float | None = None
        if self.exclude_tokens and not isinstance(reader, StoreReader):
            raise DictionaryError("exclude_tokens needs token ids: train from an activation store")
        self._cache: tuple[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None]] | None = None

    def set_max_norm(self, value: float | None) -> None:
        """Drop tokens whose target (the input, for an SAE) has a norm above ``value`` (None: keep all)."""
        self.max_norm = value
        self._cache = None

    @property
    def n_buffers(self) -> int:
        return -(-self.n_blocks // self.blocks_per_buffer)

    def _generator(self, *parts: int) -> torch.Generator:
        import torch

        value = self.seed
        for p in parts:
            value = (value * 1_000_003 + p + 1) % (2**62)
        return torch.Generator().manual_seed(value)

    def block_order(self, epoch: int) -> list[int]:
        import torch

        return torch.randperm(self.n_blocks, generator=self._generator(epoch)).tolist()

    def buffer(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows of buffer ``index`` of ``epoch``, filtered and shuffled: ``(x, y)`` in the data's dtype."""
        import torch

        if self._cache is not None and self._cache[0] == (epoch, index):
            return self._cache[1]
        blocks = self.block_order(epoch)[index * self.blocks_per_buffer : (index + 1) * self.blocks_per_buffer]
        xs, ys = [], []
        for b in sorted(blocks):  # read in file order; the shuffle below mixes them
            start = b * self.block_tokens
            stop = min(start + self.block_tokens, self.reader.n_tokens)
            x, y, pos = self.reader.read(start, stop)
            keep = torch.ones(stop - start, dtype=torch.bool)
            if self.exclude_first and pos is not None:
                keep &= pos > 0
            if self.exclude_tokens:
                keep &= ~torch.isin(self.reader.tokens(start, stop), torch.tensor(self.exclude_tokens))
            if self.max_norm is not None:
                keep &= (x if y is None else y).float().norm(dim=-1) <= self.max_norm
            xs.append(x[keep])
            if y is not None:
                ys.append(y[keep])
        self.reader.close()  # unmap the shards read: their pages would otherwise count in RSS as the store grows
        x = torch.cat(xs)
        order = torch.randperm(x.shape[0], generator=self._generator(epoch, index, 7))
        out = (x[order], torch.cat(ys)[order] if ys else None)
        self._cache = ((epoch, index), out)
        return out

    def count(self) -> int:
        """Tokens left after filtering, over the whole data (reads only positions and token ids)."""
        import torch

        total = 0
        for start in range(0, self.reader.n_tokens, 1 << 18):
            stop = min(start + (1 << 18), self.reader.n_tokens)
            keep = torch.ones(stop - start, dtype=torch.bool)
            pos = self.reader.positions_of(start, stop)
            if self.exclude_first and pos is not None:
                keep &= pos > 0
            if self.exclude_tokens:
                keep &= ~torch.isin(self.reader.tokens(start, stop), torch.tensor(self.exclude_tokens))
            total += int(keep.sum())
            self.reader.close()
        return total

    def batch(self, position: Position, size: int) -> tuple[torch.Tensor, torch.Tensor | None, Position]:
        """The next ``size`` rows from ``position`` (crossing buffers and epochs) and the position after."""
        import torch

        xs, ys = [], []
        need = size
        pos = Position(position.epoch, position.buffer, position.offset)
        guard = 0
        while need > 0:
            x, y = self.buffer(pos.epoch, pos.buffer)
            take = x[pos.offset : pos.offset + need]
            if take.shape[0]:
                xs.append(take)
                if y is not None:
                    ys.append(y[pos.offset : pos.offset + need])
            need -= take.shape[0]
            pos.offset += take.shape[0]
            if pos.offset >= x.shape[0]:
                pos = Position(pos.epoch, pos.buffer + 1, 0)
                if pos.buffer >= self.n_buffers:
                    pos = Position(pos.epoch + 1, 0, 0)
                guard = guard + 1 if not take.shape[0] else 0
                if guard > self.n_buffers + 1:
                    raise DictionaryError(f"{self.reader.describe} has no tokens left after filtering")
        return torch.cat(xs), (torch.cat(ys) if ys else None), pos

    def batches(self, position: Position, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, Position]]:
        while True:
            x, y, position = self.batch(position, size)
            yield x, y, position
