import itertools
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import astra
from astra import Layout
from astra.partition import balanced_sizes, causal_work, sequence_layout


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


def _best_max_work(tokens: int, n: int, per_token: float, per_pair: float) -> float:
    """The smallest largest causal_work over every cut of ``tokens`` into ``n`` non-empty chunks (exhaustive)."""
    best = math.inf
    for cuts in itertools.combinations(range(1, tokens), n - 1):
        bounds = list(zip((0, *cuts), (*cuts, tokens)))
        best = min(best, max(causal_work(a, b, per_token, per_pair) for a, b in bounds))
    return best


@settings(max_examples=60, deadline=None)
@given(tokens=st.integers(1, 14), n=st.integers(1, 5), per_token=st.sampled_from([0.0, 0.5, 1.0, 7.0, 3000.0]),
       per_pair=st.sampled_from([0.0, 1.0, 2.0]))
def test_balanced_cut_minimizes_the_largest_rank_work(tokens, n, per_token, per_pair):
    assume(n <= tokens and per_token + per_pair > 0)
    sizes = balanced_sizes(tokens, n, per_token, per_pair)
    assert len(sizes) == n and sum(sizes) == tokens and min(sizes) >= 1
    layout = Layout(tokens, n, causal=True, sizes=sizes)
    worst = max(causal_work(*layout.bounds(r), per_token, per_pair) for r in range(n))
    assert worst <= _best_max_work(tokens, n, per_token, per_pair) * (1 + 1e-9) + 1e-9


def test_balanced_cut_gives_later_ranks_fewer_tokens():
    # SmolLM2-135M's blocks: 3.54M multiply-adds per token, 2 * 9 * 64 per attended pair
    sizes = balanced_sizes(1024, 4, 3_538_944, 1152)
    assert sum(sizes) == 1024 and list(sizes) == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    even = Layout(1024, 4, causal=True)
    works = [causal_work(*Layout(1024, 4, True, sizes).bounds(r), 3_538_944, 1152) for r in range(4)]
    assert max(works) < max(causal_work(*even.bounds(r), 3_538_944, 1152) for r in range(4))
    assert max(works) / min(works) < 1.01  # within a token's work of each other


def test_sequence_layout_cuts_causal_models_only():
    causal = astra.adapt(astra.TinyTransformer(vocab=20, dim=32, heads=2, layers=2, max_len=600))
    bidirectional = astra.adapt(astra.TinyTransformer(vocab=20, dim=32, heads=2, layers=2, max_len=600,
                                                      num_classes=3))
    balanced = sequence_layout(causal, 600, 3)
    assert balanced.sizes is not None and balanced.size(0) > balanced.size(2)
    assert sequence_layout(causal, 600, 3, "even") == Layout(600, 3, causal=True)
    assert sequence_layout(bidirectional, 600, 3) == Layout(600, 3, causal=False)
    with pytest.raises(ValueError, match="partition must be one of balanced, even, got 'uneven'"):
        sequence_layout(causal, 600, 3, "uneven")
    with pytest.raises(ValueError, match="partition must be one of balanced, even"):
        astra.AstraEngine(causal.model, astra.Codebooks([torch.randn(1, 4, 32) for _ in range(2)]),
                          partition="uneven")


@pytest.mark.parametrize("sizes", [(3, 3), (5, 0, 5), (4, 7)])
def test_explicit_sizes_must_split_the_sequence(sizes):
    with pytest.raises(ValueError, match="do not split 10 tokens"):
        Layout(10, 2 if len(sizes) == 2 else 3, causal=True, sizes=sizes)
