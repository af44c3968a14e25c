"""Pipeline parallelism with chunked prefill, and tensor parallelism with Q80 all-reduces (tp_int8), against the
unmodified Hugging Face model; the Q80 rounding on adversarial blocks."""
import pytest
import torch
from runtime_helpers import hf_decoder, hf_vit, run_threads

from astra_lab import baselines
from astra_lab.baselines.collectives import Q80_BLOCK, q80_bytes, q80_dequantize, q80_quantize, ring_allreduce
from astra_lab.baselines.pipeline_parallel import PipelineParallel, chunk_counts, stage_blocks


@pytest.fixture(scope="module")
def llama():
    """A tiny random-weight Llama: 4 layers, D 64, GQA (4 heads, 2 kv heads), llama3 rope scaling."""
    return hf_decoder("llama", layers=4, dim=64, heads=4, kv_heads=2)


def _ids(tokens=23, batch=2):
    return torch.randint(0, 97, (batch, tokens), generator=torch.Generator().manual_seed(1))


def _last_logits(method, x, world):
    outs, transports = run_threads(method, x, world, fn=lambda m, x, t: m.run_rank(
        x, t, logits_to_keep=1 if t.rank == t.world_size - 1 else 0))
    assert all(o is None for o in outs[:-1])  # only the last stage computes logits
    return outs[-1][:, -1], transports


@pytest.mark.parametrize("chunks", [1, 2, 3])
@pytest.mark.parametrize("world", [2, 3])
def test_chunked_pipeline_gives_the_models_last_logits(llama, chunks, world):
    """c = 3 cuts 23 tokens into 7, 8, 8; 4 layers over 3 stages are 1, 1, 2 blocks."""
    x = _ids()
    want = llama(x).logits[:, -1]
    exact, transports = _last_logits(PipelineParallel(llama, chunks, wire_dtype=torch.float32), x, world)
    torch.testing.assert_close(exact, want, rtol=1e-5, atol=1e-5)
    half, _ = _last_logits(PipelineParallel(llama, chunks), x, world)
    err, scale = (half - want).abs().max().item(), want.abs().max().item()
    assert err <= 2e-3 * scale, (err, scale)
    assert torch.equal(half.argmax(-1), want.argmax(-1))
    # every stage but the last sends each chunk's hidden states once: the whole prompt, in fp32 here
    sent = [tr.stats.total_sent() for tr in transports]
    assert sent == [2 * 23 * 64 * 4] * (world - 1) + [0]
    assert [sum(r.bytes_sent > 0 for r in tr.stats.records) for tr in transports] == [chunks] * (world - 1) + [0]


def test_chunked_pipeline_gives_every_positions_logits(llama):
    x = _ids()
    outs, _ = run_threads(PipelineParallel(llama, 3, wire_dtype=torch.float32), x, 2)
    torch.testing.assert_close(outs[-1], llama(x).logits, rtol=1e-5, atol=1e-5)


def test_more_chunks_than_tokens_run_one_token_per_chunk(llama):
    x = _ids(tokens=3)
    out, transports = _last_logits(PipelineParallel(llama, 16, wire_dtype=torch.float32), x, 2)
    torch.testing.assert_close(out, llama(x).logits[:, -1], rtol=1e-5, atol=1e-5)
    assert sum(r.bytes_sent > 0 for r in transports[0].stats.records) == 3


def test_bf16_model_sends_bf16(llama):
    model = hf_decoder("llama", layers=4, dim=64).to(torch.bfloat16)
    method = PipelineParallel(model, 2)
    assert method.wire_dtype == torch.bfloat16 and PipelineParallel(llama).wire_dtype == torch.float16
    x = _ids()
    out, transports = _last_logits(method, x, 2)
    want = model(x).logits[:, -1].float()
    assert (out.float() - want).abs().max().item() <= 0.05 * want.abs().max().item()
    assert transports[0].stats.total_sent() == 2 * 23 * 64 * 2


def test_layer_split_is_even_to_one_block():
    assert [list(stage_blocks(4, r, 3)) for r in range(3)] == [[0], [1], [2, 3]]
    assert [len(stage_blocks(30, r, 4)) for r in range(4)] == [7, 8, 7, 8]
    assert [b for r in range(7) for b in stage_blocks(30, r, 7)] == list(range(30))
    with pytest.raises(ValueError, match="over 3 ranks needs at least 3 blocks, got 2"):
        stage_blocks(2, 0, 3)
    assert chunk_counts(1024, causal=True) == [1, 2, 4, 8, 16]
    assert chunk_counts(5, causal=True) == [1, 2, 4] and chunk_counts(1024, causal=False) == [1]


def test_bidirectional_models_run_one_chunk():
    vit = hf_vit(layers=4)
    with pytest.raises(ValueError, match="bidirectional model's tokens attend to later chunks"):
        PipelineParallel(vit, 2)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    outs, _ = run_threads(PipelineParallel(vit, wire_dtype=torch.float32), x, 3)
    torch.testing.assert_close(outs[-1], vit(x).logits, rtol=1e-5, atol=1e-5)


def test_q80_rounds_each_block_to_its_scale():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5 * Q80_BLOCK + 7, generator=gen) * torch.logspace(-3, 3, 5 * Q80_BLOCK + 7)
    x[:Q80_BLOCK] = 0.0  # an all-zero block: scale 0, exact
    x[2 * Q80_BLOCK + 3] = 1e6  # one huge value: its block's small values round to 0
    data = q80_quantize(x)
    assert data.dtype == torch.uint8 and data.numel() == q80_bytes(x.numel()) == 6 * (2 + Q80_BLOCK)
    got = q80_dequantize(data, x.numel())
    assert torch.equal(got[:Q80_BLOCK], torch.zeros(Q80_BLOCK))
    blocks = torch.nn.functional.pad(x, (0, (-x.numel()) % Q80_BLOCK)).reshape(-1, Q80_BLOCK)
    scale = (blocks.abs().amax(1) / 127).to(torch.float16).float()
    # half a step of rounding, plus the fp16 rounding of the scale over up to 127 steps
    bound = (scale * (0.5 + 127 * 2**-11))[:, None].expand_as(blocks).reshape(-1)[: x.numel()]
    assert ((got - x).abs() <= bound + 1e-12).all()
    assert got[2 * Q80_BLOCK + 3].item() == pytest.approx(1e6, rel=2**-11)
    assert (got[2 * Q80_BLOCK: 3 * Q80_BLOCK].abs() < 5e3).sum() == Q80_BLOCK - 1


def test_q80_saturates_beyond_fp16_scales():
    x = torch.tensor([1e12, -1e12, 1.0] + [0.0] * 29)
    got = q80_dequantize(q80_quantize(x), 32)
    top = 127 * torch.finfo(torch.float16).max
    assert torch.isfinite(got).all() and got[0].item() == pytest.approx(top) and got[1].item() == pytest.approx(-top)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_q80_allreduce_is_close_to_the_sum_and_equal_on_every_rank(world):
    values = [torch.randn(7, 30, generator=torch.Generator().manual_seed(r)) for r in range(world)]
    outs, transports = run_threads(None, None, world, fn=lambda e, x, t: ring_allreduce(values[t.rank], t, "s", True))
    want = sum(values)
    for out in outs:
        assert torch.equal(out, outs[0])
        # each of the N - 1 reduce-scatter steps and the all-gather round once, within half a step of |sum| / 127
        assert (out - want).abs().max().item() <= world * 0.5 * world * 4 / 127
    chunks = torch.empty(210).tensor_split(world)
    assert transports[0].stats.total_sent() == 2 * sum(q80_bytes(c.numel()) for c in chunks[: world - 1])


@pytest.mark.parametrize("world", [2, 3])
def test_tp_int8_is_close_to_tp(world):
    llama = hf_decoder("llama", layers=4, dim=48, heads=6, kv_heads=3)
    x = _ids()
    tp, _ = run_threads(baselines.build("tp", llama), x, world)
    q8, transports = run_threads(baselines.build("tp_int8", llama), x, world)
    tp, q8 = torch.cat(tp, -1), torch.cat(q8, -1)
    err, scale = (q8 - tp).abs().max().item(), tp.abs().max().item()
    assert 0 < err <= 0.03 * scale, (err, scale)
    assert (q8.argmax(-1) == tp.argmax(-1)).float().mean() >= 0.9
    _, fp32 = run_threads(baselines.build("tp", llama), x, world)
    ratio = transports[0].stats.total_sent() / fp32[0].stats.total_sent()
    assert ratio == pytest.approx(34 / 128, rel=0.05)  # 34 bytes per 32 values instead of 128
