"""A systematic erasure code over GF(2^8): k equal pieces of a message, any number of parity pieces, and the
message rebuilt from any k of them.

Piece i < k is the message's i-th piece itself; piece k + j is parity row j of a Cauchy matrix over the k
data pieces, ``C[j][i] = 1 / (x_j + y_i)`` with ``y_i = i`` and ``x_j = k + j`` (all distinct). Every square
submatrix of a Cauchy matrix is invertible, so the generator ``[I; C]`` has every k rows independent: the code
is MDS, and any k distinct pieces determine the message. A parity row depends on k and j alone, so more parity
pieces can be made later (a repair) and agree with those sent first. At most 256 pieces in all: ``k + m <= 256``.

Rebuilding solves only for the missing data pieces (e of them, from e parity pieces with the known data
pieces' share taken out): e is the number of pieces lost, usually small.

Arithmetic: GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d); the products of a piece's bytes by a
coefficient are one lookup in a 256 x 256 table, in torch (uint8 tensors, CPU), and sums are XOR.
"""
from __future__ import annotations

import torch

FIELD = 256
#: the most pieces (data and parity) one message can have
MAX_PIECES = FIELD


def _tables() -> tuple[list[int], list[int]]:
    exp, log = [0] * (2 * FIELD), [0] * FIELD
    x = 1
    for i in range(FIELD - 1):
        exp[i], log[x] = x, i
        x <<= 1
        if x & FIELD:
            x ^= 0x11D
    for i in range(FIELD - 1, 2 * FIELD):
        exp[i] = exp[i - (FIELD - 1)]
    return exp, log


_EXP, _LOG = _tables()


def mul(a: int, b: int) -> int:
    """a * b in GF(2^8)."""
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def inv(a: int) -> int:
    """1 / a in GF(2^8) (a != 0)."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return _EXP[FIELD - 1 - _LOG[a]]


# MUL[a, b] = a * b: a piece times a coefficient is MUL[c][piece]
_MUL = torch.tensor([[mul(a, b) for b in range(FIELD)] for a in range(FIELD)], dtype=torch.uint8)


def coefficient(k: int, j: int, i: int) -> int:
    """Parity row j's coefficient of data piece i, for k data pieces."""
    return inv((k + j) ^ i)


def _xor_rows(t: torch.Tensor) -> torch.Tensor:
    """XOR over dim 0 of (r, ..., L) uint8, by halving (log2 r steps)."""
    t = t.clone()
    r = t.shape[0]
    while r > 1:
        half = r // 2
        t[:half] ^= t[r - half:r]
        r -= half
    return t[0]


def _combine(coefficients: list[list[int]], pieces: torch.Tensor) -> torch.Tensor:
    """(m, L): row j = XOR_i coefficients[j][i] * pieces[i], for pieces (n, L) uint8."""
    c = torch.tensor(coefficients, dtype=torch.long)  # (m, n)
    products = _MUL[c.unsqueeze(-1), pieces.long().unsqueeze(0)]  # (m, n, L)
    return _xor_rows(products.transpose(0, 1))


def split(data: torch.Tensor, k: int) -> torch.Tensor:
    """The k data pieces (k, L) of a 1-D uint8 message, L = ceil(len / k), zero padded at the end."""
    if k < 1:
        raise ValueError(f"a message needs at least one piece, got k = {k}")
    length = -(-data.numel() // k) if data.numel() else 1
    out = torch.zeros(k * length, dtype=torch.uint8)
    out[:data.numel()] = data
    return out.view(k, length)


def parity(pieces: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """Parity pieces ``first .. first + count - 1`` (count, L) of the data pieces (k, L) uint8; piece index
    k + j is parity j."""
    k = pieces.shape[0]
    if first < 0 or count < 0 or k + first + count > MAX_PIECES:
        raise ValueError(f"parity pieces {first}..{first + count - 1} of k = {k}: at most {MAX_PIECES - k} exist")
    if not count:
        return torch.empty(0, pieces.shape[1], dtype=torch.uint8)
    return _combine([[coefficient(k, j, i) for i in range(k)] for j in range(first, first + count)], pieces)


def encode(data: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """The n pieces (n, L) of a 1-D uint8 message split into k: the k data pieces, then n - k parity pieces."""
    if not k <= n <= MAX_PIECES:
        raise ValueError(f"need k <= n <= {MAX_PIECES}, got k = {k}, n = {n}")
    pieces = split(data, k)
    return torch.cat([pieces, parity(pieces, 0, n - k)])


def _solve(matrix: list[list[int]]) -> list[list[int]]:
    """The inverse of a square matrix over GF(2^8) (Gauss-Jordan); the matrices here are always invertible."""
    e = len(matrix)
    a = [row[:] + [int(i == j) for j in range(e)] for i, row in enumerate(matrix)]
    for col in range(e):
        pivot = next(r for r in range(col, e) if a[r][col])
        a[col], a[pivot] = a[pivot], a[col]
        scale = inv(a[col][col])
        a[col] = [mul(scale, x) for x in a[col]]
        for r in range(e):
            if r != col and a[r][col]:
                f = a[r][col]
                a[r] = [x ^ mul(f, y) for x, y in zip(a[r], a[col])]
    return [row[e:] for row in a]


class TooFewPieces(ValueError):
    """Fewer than k distinct pieces of a message are at hand."""


def decode(pieces: dict[int, torch.Tensor], k: int, length: int) -> torch.Tensor:
    """The 1-D uint8 message of ``length`` bytes from ``pieces`` {index: piece (L,) uint8}, any k or more of
    them (extra ones are ignored). Raises :class:`TooFewPieces` with fewer than k."""
    if len(pieces) < k:
        raise TooFewPieces(f"{len(pieces)} of the {k} pieces needed to rebuild a message")
    size = -(-length // k) if length else 1
    for index, piece in pieces.items():
        if not 0 <= index < MAX_PIECES or piece.shape != (size,):
            raise ValueError(f"piece {index} of shape {tuple(piece.shape)}: expected ({size},), index < {MAX_PIECES}")
    data = torch.zeros(k, size, dtype=torch.uint8)
    present = [i for i in range(k) if i in pieces]
    missing = [i for i in range(k) if i not in pieces]
    for i in present:
        data[i] = pieces[i]
    if missing:
        rows = sorted(i - k for i in pieces if i >= k)[:len(missing)]
        # parity row j = sum over present data + sum over missing data; take the present share out
        known = torch.stack([pieces[k + j] for j in rows])
        if present:
            known ^= _combine([[coefficient(k, j, i) for i in present] for j in rows], data[present])
        inverse = _solve([[coefficient(k, j, i) for i in missing] for j in rows])
        data[missing] = _combine(inverse, known)
    return data.view(-1)[:length]
