"""Sequence partition: which rank owns which tokens, and who sends codes to whom.

Tokens are split into contiguous chunks, in position order. In a causal model
a token only attends to earlier tokens, so rank r needs the codes of ranks < r
and sends its own only to ranks > r: nobody is sent codes it cannot use.

Two ways to cut (:data:`PARTITIONS`):

``even``
    equal chunks, the first ``T % N`` ranks getting one extra. Without a
    causal mask every rank then does the same work.
``balanced``
    for causal models: chunks sized so that every rank's work is about the
    same (:func:`balanced_sizes`). With equal chunks the last rank attends to
    every earlier token, the first only to its own, so the later ranks get
    fewer tokens. Without a causal mask it is the even cut. The cut depends on
    the model's shape only (not on the kernels or formulations that run it), so
    every rank computes the same one and results do not depend on the backend.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

PARTITIONS = ("balanced", "even")


@dataclass(frozen=True)
class Layout:
    """``tokens`` over ``world_size`` ranks; ``sizes``: tokens per rank in rank order (None: the even cut)."""

    tokens: int
    world_size: int
    causal: bool
    sizes: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.world_size < 1:
            raise ValueError(f"world size must be >= 1, got {self.world_size}")
        if self.tokens < self.world_size:
            raise ValueError(
                f"cannot split {self.tokens} tokens over {self.world_size} ranks: every rank needs at least one token"
            )
        if self.sizes is not None:
            if len(self.sizes) != self.world_size or sum(self.sizes) != self.tokens or min(self.sizes) < 1:
                raise ValueError(f"chunk sizes {list(self.sizes)} do not split {self.tokens} tokens over "
                                 f"{self.world_size} ranks with at least one token each")

    def bounds(self, rank: int) -> tuple[int, int]:
        """Token positions [start, stop) of ``rank``."""
        if self.sizes is not None:
            start = sum(self.sizes[:rank])
            return start, start + self.sizes[rank]
        base, extra = divmod(self.tokens, self.world_size)
        start = rank * base + min(rank, extra)
        return start, start + base + (rank < extra)

    def size(self, rank: int) -> int:
        start, stop = self.bounds(rank)
        return stop - start

    def sources(self, rank: int) -> list[int]:
        """Ranks whose codes ``rank`` attends to, in position order."""
        peers = range(rank) if self.causal else range(self.world_size)
        return [r for r in peers if r != rank]

    def destinations(self, rank: int) -> list[int]:
        """Ranks that need ``rank``'s codes."""
        peers = range(rank + 1, self.world_size) if self.causal else range(self.world_size)
        return [r for r in peers if r != rank]


def causal_work(start: int, stop: int, per_token: float, per_pair: float) -> float:
    """A causal rank's work for the tokens [start, stop): ``per_token`` for each own token (its matrix
    products) and ``per_pair`` for each (query, key) pair it attends, its own earlier tokens and every
    token before ``start``."""
    own = stop - start
    return per_token * own + per_pair * (own * (own + 1) / 2 + own * start)


@functools.lru_cache(maxsize=64)  # every forward of a shape asks again
def balanced_sizes(tokens: int, world_size: int, per_token: float, per_pair: float) -> tuple[int, ...]:
    """Contiguous chunk sizes of a causal sequence minimizing the largest :func:`causal_work` of a rank.

    A bisection over the largest work: for a bound, each rank in turn takes the longest chunk within it
    (leaving a token for every later rank); the smallest bound for which the last rank's rest fits too is
    the answer. Each rank gets at least one token.
    """
    if world_size == 1:
        return (tokens,)

    seen: dict[tuple[int, int], float] = {}

    def work(start: int, stop: int) -> float:
        if (start, stop) not in seen:  # the bisection asks for the same chunks again and again
            seen[start, stop] = causal_work(start, stop, per_token, per_pair)
        return seen[start, stop]

    def cut(bound: float) -> tuple[int, ...] | None:
        sizes, start = [], 0
        for r in range(world_size - 1):
            lo, hi = start + 1, tokens - (world_size - 1 - r)  # stop positions that leave a token for the rest
            if work(start, lo) > bound:
                return None
            while lo < hi:  # the largest stop within the bound
                mid = (lo + hi + 1) // 2
                if work(start, mid) <= bound:
                    lo = mid
                else:
                    hi = mid - 1
            sizes.append(lo - start)
            start = lo
        if work(start, tokens) > bound:
            return None
        return (*sizes, tokens - start)

    even = Layout(tokens, world_size, True)
    lo, hi = 0.0, max(work(*even.bounds(r)) for r in range(world_size))
    best = cut(hi)
    for _ in range(60):  # the bound to well below one token's work
        mid = (lo + hi) / 2
        sizes = cut(mid)
        if sizes is None:
            lo = mid
        else:
            hi, best = mid, sizes
    return best


def check_partition(partition: str) -> str:
    """``partition`` itself if it names one of :data:`PARTITIONS`, else a ValueError listing them."""
    if partition not in PARTITIONS:
        raise ValueError(f"partition must be one of {', '.join(PARTITIONS)}, got {partition!r}")
    return partition


def sequence_layout(adapter, tokens: int, world_size: int, partition: str = "balanced") -> Layout:
    """The layout of ``tokens`` of a model (an :class:`astra.models.base.ModelAdapter`) over ``world_size``
    ranks, cut as ``partition`` says; a balanced cut weighs the model's blocks' matrix products against their
    attention."""
    if check_partition(partition) == "even" or not adapter.causal or world_size == 1:
        return Layout(tokens, world_size, adapter.causal)
    blocks = adapter.blocks
    per_token = sum(b.macs_per_token for b in blocks)
    per_pair = sum(b.macs_per_pair for b in blocks)
    return Layout(tokens, world_size, True, balanced_sizes(tokens, world_size, per_token, per_pair))


def part_bounds(tokens: int, parts: int) -> list[tuple[int, int]]:
    """``tokens`` split into ``parts`` contiguous [start, stop) ranges, the first ``tokens % parts`` one longer
    (some empty when tokens < parts)."""
    base, extra = divmod(tokens, parts)
    bounds, start = [], 0
    for j in range(parts):
        stop = start + base + (j < extra)
        bounds.append((start, stop))
        start = stop
    return bounds
