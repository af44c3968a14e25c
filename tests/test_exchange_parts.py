"""A block's codes sent in parts: each part's codes leave as soon as the block before has computed its rows."""
import itertools

import pytest
import torch
from runtime_helpers import hf_decoder, hf_vit, run_threads, tiny_classifier, tiny_lm

import astra
import astra_kernels as ak
from astra.models import example_inputs
from astra.partition import part_bounds


def _inputs(model, tokens=23, batch=2):
    if type(model).__name__ == "ViTForImageClassification":
        return torch.randn(batch, 3, model.config.image_size, model.config.image_size,
                           generator=torch.Generator().manual_seed(1))
    return example_inputs(model, tokens, batch, seed=1)


@pytest.mark.parametrize("tokens,parts", [(10, 3), (2, 5), (0, 2), (7, 1), (8, 8)])
def test_part_bounds_tile_the_tokens_in_order(tokens, parts):
    bounds = part_bounds(tokens, parts)
    assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == tokens
    assert all(a == b for (_, a), (b, _) in itertools.pairwise(bounds))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


MODELS = {"tiny_lm": tiny_lm, "tiny_classifier": tiny_classifier, "vit": hf_vit,
          "qwen3": lambda: hf_decoder("qwen3", kv_heads=1)}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("world,parts", [(2, 2), (3, 4), (4, 7)])  # 7 parts: some of a rank's parts are empty
@pytest.mark.parametrize("quantize", ["input", "kv"])
def test_ranks_sending_in_parts_equal_the_simulation_exactly(name, world, parts, quantize):
    model = MODELS[name]()
    x = _inputs(model)
    books = astra.calibrate(model, [x], 16, 2, progress=False, quantize=quantize)
    engine = astra.AstraEngine(model, books, exchange_parts=parts, encode="exact")
    outs, transports = run_threads(engine, x, world)
    for got, want in zip(outs, engine.simulate(x, world)):
        assert torch.equal(got, want)
    # the same codes as one message per block: only the rows' grouping in the matrix products differs
    whole = astra.AstraEngine(model, books, exchange_parts=1, encode="exact").simulate(x, world)
    for got, want in zip(outs, whole):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # per block, `parts` messages per peer whose payloads are the parts' packed codes
    layout, per_token = engine.layout(x, world), books.codes_per_token
    for r, t in enumerate(transports):
        records = [rec for rec in t.stats.records if rec.tag.startswith("block")]
        assert [rec.tag for rec in records] == [f"block{i}/{j}" for i in range(len(engine.adapter.blocks))
                                                for j in range(parts)]
        for j, rec in enumerate(records[:parts]):
            a, b = part_bounds(layout.size(r), parts)[j]
            assert rec.sent == {d: ak.packed_size(x.shape[0] * (b - a) * per_token, books.bits)
                                for d in layout.destinations(r)}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_a_part_count_that_is_not_a_positive_integer_is_refused(bad):
    model = tiny_lm()
    books = astra.calibrate(model, [_inputs(model)], 8, 1, progress=False)
    with pytest.raises(ValueError, match="exchange_parts must be a count >= 1"):
        astra.AstraEngine(model, books, exchange_parts=bad)


def test_ranks_with_other_part_counts_refuse_to_start():
    from astra.handshake import mismatches, setup_digest

    model = tiny_lm()
    books = astra.calibrate(model, [_inputs(model)], 8, 1, progress=False)
    digests = [setup_digest(astra.AstraEngine(model, books, exchange_parts=p), 2) for p in (1, 3)]
    assert [m.split(":")[0] for m in mismatches(digests)] == ["exchange_parts"]
