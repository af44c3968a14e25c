import pytest

from astra import Layout


def test_chunks_cover_the_sequence_in_order():
    for tokens in range(1, 30):
        for n in range(1, min(tokens, 7) + 1):
            layout = Layout(tokens, n, causal=False)
            bounds = [layout.bounds(r) for r in range(n)]
            assert bounds[0][0] == 0 and bounds[-1][1] == tokens
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [layout.size(r) for r in range(n)]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_causal_ranks_only_send_forward():
    layout = Layout(10, 4, causal=True)
    assert [layout.sources(r) for r in range(4)] == [[], [0], [0, 1], [0, 1, 2]]
    assert [layout.destinations(r) for r in range(4)] == [[1, 2, 3], [2, 3], [3], []]
    full = Layout(10, 3, causal=False)
    assert full.sources(1) == full.destinations(1) == [0, 2]


def test_more_ranks_than_tokens_is_an_error():
    with pytest.raises(ValueError, match="cannot split 3 tokens over 4 ranks"):
        Layout(3, 4, causal=True)
