"""Sequence partition: which rank owns which tokens, and who sends codes to whom.

Tokens are split into contiguous chunks, the first ``T % N`` ranks getting one
extra. In a causal model a token only attends to earlier tokens, so rank r
needs the codes of ranks < r and sends its own only to ranks > r: nobody is
sent codes it cannot use.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    tokens: int
    world_size: int
    causal: bool

    def __post_init__(self):
        if self.world_size < 1:
            raise ValueError(f"world size must be >= 1, got {self.world_size}")
        if self.tokens < self.world_size:
            raise ValueError(
                f"cannot split {self.tokens} tokens over {self.world_size} ranks: every rank needs at least one token"
            )

    def bounds(self, rank: int) -> tuple[int, int]:
        """Token positions [start, stop) of ``rank``."""
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
