"""The ASTRA engine in one process: block math, simulation, the per-rank path over loopback."""
from collections import Counter

import pytest
import torch
from runtime_helpers import (
    exact_codebooks,
    hf_gpt2,
    hf_vit,
    run_threads,
    tiny_classifier,
    tiny_lm,
)

import astra
import astra_kernels as ak
from astra.dense import dense_forward
from astra.generate import generate


def _inputs(model, tokens=24, batch=2, seed=1):
    from astra.models import example_inputs

    if type(model).__name__ == "ViTForImageClassification":
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, model.config.image_size, model.config.image_size, generator=gen)
    return example_inputs(model, tokens, batch, seed=seed)


MODELS = {"tiny_lm_gqa": tiny_lm, "tiny_classifier": tiny_classifier, "gpt2": hf_gpt2, "vit": hf_vit}


@pytest.mark.parametrize("name", MODELS)
def test_block_math_reproduces_the_unmodified_model(name):
    model = MODELS[name]()
    x = _inputs(model)
    adapter = astra.adapt(model)
    torch.testing.assert_close(dense_forward(adapter, x), adapter.reference_forward(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_one_rank_is_the_plain_model(name):
    model = MODELS[name]()
    x = _inputs(model)
    books = astra.calibrate(model, [x], 8, 4, progress=False)
    engine = astra.AstraEngine(model, books)
    torch.testing.assert_close(engine.forward(x, 1), model(x) if name.startswith("tiny") else astra.adapt(model).reference_forward(x),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny_lm_gqa", "gpt2"])
@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("groups", [1, 4])
def test_lossless_codebooks_give_the_plain_model(name, world, groups):
    model = MODELS[name]()
    x = _inputs(model)
    engine = astra.AstraEngine(model, exact_codebooks(model, x, groups), encode="exact")
    torch.testing.assert_close(engine.forward(x, world), astra.adapt(model).reference_forward(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("remote,encode", [("auto", "exact"), ("gather", "int8"), ("gather_int8", "auto")])
def test_ranks_over_loopback_equal_the_simulation_exactly(name, world, remote, encode):
    """Also with a formulation that attends the local keys before the codes arrive and merges,
    and with either encoding."""
    model = MODELS[name]()
    x = _inputs(model)
    books = astra.calibrate(model, [x], 16, 2, progress=False)
    engine = astra.AstraEngine(model, books, formulation=remote, encode=encode)
    outs, transports = run_threads(engine, x, world)
    for got, want in zip(outs, engine.simulate(x, world)):
        assert torch.equal(got, want)
    # quantization is lossy here: the outputs differ from the plain model
    plain = astra.adapt(model).reference_forward(x)
    assert not torch.allclose(engine.forward(x, world), plain, atol=1e-3)
    # bytes on the wire: the packed codes, once per destination, every block
    layout = engine.layout(x, world)
    for r, t in enumerate(transports):
        blocks = [rec for rec in t.stats.records if rec.tag.startswith("block")]
        assert len(blocks) == len(engine.adapter.blocks)
        payload = ak.packed_size(x.shape[0] * layout.size(r) * 2, books.bits)
        assert all(rec.sent == {d: payload for d in layout.destinations(r)} for rec in blocks)
        assert all(rec.received == {s: ak.packed_size(x.shape[0] * layout.size(s) * 2, books.bits)
                                    for s in layout.sources(r)} for rec in blocks)


@pytest.mark.parametrize("formulation", ["tokens", "codewords", "gather", "gather_int8", "dequantize"])
def test_remote_formulations_agree(formulation):
    model = tiny_lm()
    x = _inputs(model)
    books = astra.calibrate(model, [x], 16, 1, progress=False)
    reference = astra.AstraEngine(model, books, formulation="tokens", backend="reference").forward(x, 3)
    got = astra.AstraEngine(model, books, formulation=formulation).forward(x, 3)
    # gather sums fp16 table rows (fp32 accumulation): about 2^-11 relative error per remote key/value;
    # gather_int8 rows move by up to half of 1/255 of their range
    tol = {"gather": 5e-4, "gather_int8": 1e-2}.get(formulation, 1e-4)
    torch.testing.assert_close(got, reference, rtol=tol, atol=tol)


def test_inductor_compiled_forward_equals_eager():
    """torch.compile with its default backend (Inductor) over a whole ASTRA forward, the ASTRA ops inside
    the compiled graphs."""
    model = tiny_lm(layers=1)
    x = _inputs(model)
    engine = astra.AstraEngine(model, astra.calibrate(model, [x], 16, 2, progress=False), encode="exact")
    assert engine.remote_formulations(x, 2) == ["tokens"]  # the fused kernel
    want = engine.forward(x, 2)  # eager; builds the block's projected tables
    got = torch.compile(engine.forward)(x, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # Inductor fuses the norms and the MLP
    graphs = torch._dynamo.explain(engine.forward)(x, 2).graphs
    traced = Counter(str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function")
    # rank 0's codes (rank 1 attends them: causal), then both ranks' attention
    assert traced["astra.vq_encode.default"] == 1
    assert traced["astra.mixed_precision_attention.default"] == 2


def test_int8_encoding_changes_few_codes_and_little_output():
    """encode="int8" (vq_encode_int8) against exact nearest codewords, same codebooks; "auto" picks
    int8 exactly where its SIMD kernels run."""
    model = hf_vit(layers=2)
    x = _inputs(model)
    books = astra.calibrate(model, [x], 32, 4, progress=False)
    exact = astra.AstraEngine(model, books, encode="exact")
    int8 = astra.AstraEngine(model, books, encode="int8")
    assert (exact.encode, int8.encode) == ("exact", "int8")
    assert astra.AstraEngine(model, books).encode == ("int8" if ak.int8_estimate_native("cpu") else "exact")
    assert astra.AstraEngine(model, books, backend="reference").encode == "exact"
    want, got = exact.forward(x, 3), int8.forward(x, 3)
    plain = astra.adapt(model).reference_forward(x)
    # the int8 choice moves the outputs far less than quantization itself does
    assert (got - want).norm() < 0.25 * (want - plain).norm()


def test_generation_continues_the_plain_model_with_lossless_codebooks():
    model = tiny_lm()
    x = _inputs(model, tokens=20)
    engine = astra.AstraEngine(model, exact_codebooks(model, x), encode="exact")
    outs, _ = run_threads(engine, x, 3, fn=lambda e, inp, t: generate(e, inp, t, 5))
    assert outs[0] is None and outs[1] is None
    seq = x
    for _ in range(5):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(outs[2].tokens, seq[:, 20:])
    assert outs[2].first_token_s > 0 and outs[2].decode_tokens_per_s > 0


def test_calibration_is_deterministic_and_codebooks_round_trip(tmp_path):
    model = tiny_lm()
    batches = [_inputs(model, seed=s) for s in (1, 2)]
    a = astra.calibrate(model, batches, 16, 4, seed=3, progress=False)
    b = astra.calibrate(model, batches, 16, 4, seed=3, progress=False)
    assert (a.groups, a.codebook_size, a.dim, len(a)) == (4, 16, 32, 2)
    assert all(torch.equal(s, t) for s, t in zip(a.tensors, b.tensors))
    path = a.save(str(tmp_path))
    assert path.endswith(astra.codebooks.FILENAME)
    c = astra.Codebooks.load(str(tmp_path))
    assert all(torch.equal(s, t) for s, t in zip(a.tensors, c.tensors))


def test_bad_configurations_are_rejected():
    model = tiny_lm()
    x = _inputs(model)
    books = astra.calibrate(model, [x], 8, 4, progress=False)
    with pytest.raises(ValueError, match="codebooks cover 1 blocks but the model has 2"):
        astra.AstraEngine(model, astra.Codebooks(books.tensors[:1]))
    with pytest.raises(ValueError, match="quantize D=24 features"):
        astra.AstraEngine(model, astra.Codebooks([t[:3] for t in books.tensors]))
    with pytest.raises(ValueError, match="G=5 must divide the model width D=32"):
        astra.calibrate(model, [x], 8, 5, progress=False)
    with pytest.raises(ValueError, match="fewer than K=4096"):
        astra.calibrate(model, [x], 4096, 1, progress=False)
    with pytest.raises(ValueError, match="cannot split 24 tokens over 25 ranks"):
        astra.AstraEngine(model, books).forward(x, 25)
    with pytest.raises(ValueError, match="remote formulation must be one of"):
        astra.AstraEngine(model, books, formulation="magic")
    with pytest.raises(ValueError, match="codewords formulation needs G = 1"):
        astra.AstraEngine(model, books, formulation="codewords")
    with pytest.raises(ValueError, match="encode must be one of auto, exact, int8"):
        astra.AstraEngine(model, books, encode="fp8")
    with pytest.raises(TypeError, match="cannot parallelize Linear"):
        astra.adapt(torch.nn.Linear(2, 2))


def test_a_silent_peer_times_out_naming_peer_and_block():
    model = tiny_lm()
    x = _inputs(model)
    engine = astra.AstraEngine(model, astra.calibrate(model, [x], 8, 4, progress=False))

    def rank_fn(e, inp, t):
        if t.rank == 0:
            return None  # never sends or receives anything
        return e.run_rank(inp, t)

    with pytest.raises(astra.PeerError, match=r"rank 1: peer rank 0 failed in exchange 'block0': timed out"):
        run_threads(engine, x, 2, fn=rank_fn, timeout_s=0.5)
