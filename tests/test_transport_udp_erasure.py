"""The erasure code of the UDP transport: any k of n pieces rebuild the message exactly, fewer are refused, and
the field arithmetic is a field (checked against a bitwise carry-less product)."""
import itertools
import random

import pytest
import torch

from astra.transport import erasure


def _data(n, seed):
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _slow_mul(a, b):
    """GF(2^8) product by shift and add, reduced by 0x11d: the oracle of the table arithmetic."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11D
        b >>= 1
    return out


def test_field_tables_match_carry_less_multiplication_and_every_inverse():
    for a in range(256):
        for b in range(256):
            assert erasure.mul(a, b) == _slow_mul(a, b)
    for a in range(1, 256):
        assert erasure.mul(a, erasure.inv(a)) == 1
    with pytest.raises(ZeroDivisionError):
        erasure.inv(0)


@pytest.mark.parametrize("k,n,length", [(1, 1, 5), (1, 4, 640), (2, 3, 1), (3, 6, 1000), (4, 7, 4095), (5, 8, 77),
                                        (6, 6, 600)])
def test_every_k_subset_of_n_pieces_rebuilds_the_message(k, n, length):
    data = _data(length, seed=k * 100 + n)
    pieces = erasure.encode(data, k, n)
    assert pieces.shape == (n, -(-length // k))
    assert torch.equal(pieces[:k].reshape(-1)[:length], data)  # systematic: the data pieces are the message
    for subset in itertools.combinations(range(n), k):
        assert torch.equal(erasure.decode({i: pieces[i] for i in subset}, k, length), data), subset


def test_adversarial_messages_rebuild():
    k, n = 4, 8
    for data in (torch.zeros(1200, dtype=torch.uint8), torch.full((1200,), 255, dtype=torch.uint8),
                 torch.arange(1200).to(torch.uint8), torch.zeros(0, dtype=torch.uint8)):
        pieces = erasure.encode(data, k, n)
        for subset in ([4, 5, 6, 7], [0, 5, 6, 3], [7, 1, 2, 4]):  # only parity; mixed; unordered
            assert torch.equal(erasure.decode({i: pieces[i] for i in subset}, k, data.numel()), data)


def test_large_stripes_rebuild_from_random_subsets_with_extra_pieces_ignored():
    rng = random.Random(3)
    for k, n in [(32, 40), (32, 256 - 32 + 32), (17, 60)]:
        data = _data(k * 1200 - 11, seed=k + n)
        pieces = erasure.encode(data, k, n)
        for _ in range(3):
            subset = rng.sample(range(n), k + rng.randrange(0, 3))
            assert torch.equal(erasure.decode({i: pieces[i] for i in subset}, k, data.numel()), data)


def test_parity_made_later_agrees_with_parity_made_first():
    data = _data(3000, seed=9)
    pieces = erasure.encode(data, 3, 12)
    assert torch.equal(erasure.parity(pieces[:3], 4, 5), pieces[3 + 4: 3 + 9])


def test_fewer_than_k_pieces_are_refused():
    data = _data(500, seed=1)
    pieces = erasure.encode(data, 3, 6)
    for subset in itertools.combinations(range(6), 2):
        with pytest.raises(erasure.TooFewPieces, match="2 of the 3 pieces"):
            erasure.decode({i: pieces[i] for i in subset}, 3, 500)


def test_bad_arguments_are_refused():
    data = _data(100, seed=2)
    with pytest.raises(ValueError, match="k <= n"):
        erasure.encode(data, 4, 3)
    with pytest.raises(ValueError, match="k <= n"):
        erasure.encode(data, 100, 257)
    with pytest.raises(ValueError, match="at least one piece"):
        erasure.split(data, 0)
    pieces = erasure.encode(data, 2, 4)
    with pytest.raises(ValueError, match="expected \\(50,\\)"):
        erasure.decode({0: pieces[0], 1: pieces[1][:-1]}, 2, 100)
