"""Baselines reproduce the unmodified model and move the bytes their formulas say."""
import pytest
import torch
from runtime_helpers import hf_decoder, hf_gpt2, hf_vit, run_threads, tiny_classifier, tiny_lm

import astra
from astra_lab import baselines
from astra_lab.baselines.collectives import q80_bytes, ring_allreduce

MODELS = {"tiny_lm": tiny_lm, "tiny_classifier": tiny_classifier, "gpt2": hf_gpt2, "vit": hf_vit,
          "llama": hf_decoder, "qwen3": lambda: hf_decoder("qwen3", head_dim=12)}


def _inputs(model, batch=2):
    if type(model).__name__ == "ViTForImageClassification":
        return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return torch.randint(0, 40, (batch, 24), generator=torch.Generator().manual_seed(1))


def _gather(adapter, outs, name):
    if name == "pp":  # the last stage's outputs
        assert all(o is None for o in outs[:-1])
        return outs[-1]
    if adapter.class_tokens:
        assert all(o is None for o in outs[1:])
        return outs[0]
    return torch.cat(outs, dim=-1 if name.startswith("tp") else 1)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name", baselines.BASELINES)
@pytest.mark.parametrize("world", [2, 4])
def test_baselines_reproduce_the_plain_model(model_name, name, world):
    model = MODELS[model_name]()
    x = _inputs(model)
    adapter = astra.adapt(model)
    if name.startswith("tp") and adapter.blocks[0].kv_heads < world:
        pytest.skip("tensor parallelism splits kv heads: checked by test_tensor_parallel_needs_a_kv_head_per_rank")
    if name == "pp" and len(adapter.blocks) < world:
        pytest.skip("pipeline parallelism needs a block per stage: checked in test_baselines_pp.py")
    method = baselines.build(name, model)
    outs, transports = run_threads(method, x, world)
    tol = {"sp_fp16": 2e-3, "pp": 2e-3, "tp_int8": 5e-2}.get(name, 1e-4)
    torch.testing.assert_close(_gather(adapter, outs, name), adapter.reference_forward(x), rtol=tol, atol=tol)
    # bytes per rank per block against the communication formulas (all ranks, all blocks)
    t, d, bsz = adapter.num_tokens(x) + adapter.class_tokens, adapter.dim, x.shape[0]
    kvd = adapter.blocks[0].kv_heads * adapter.blocks[0].head_dim
    sent = [sum(r.bytes_sent for r in tr.stats.records) / len(adapter.blocks) for tr in transports]
    if name.startswith("tp"):
        size = (lambda c: q80_bytes(c.numel())) if name == "tp_int8" else (lambda c: c.numel() * 4)
        chunk_bytes = [size(c) for c in torch.empty(bsz * t * d).tensor_split(world)]
        expected = 2 * 2 * sum(chunk_bytes[: world - 1])  # 2 all-reduces x (reduce-scatter + all-gather)
        assert all(abs(s - expected) <= 2 * 2 * 2 * 34 for s in sent)
    elif name == "pp":  # every stage but the last sends the whole sequence's hidden states once, in fp16
        assert [tr.stats.total_sent() for tr in transports] == [bsz * t * d * 2] * (world - 1) + [0]
    elif not adapter.causal:
        width = {"sp_fp32": d * 4, "sp_fp16": d * 2, "kv_sp": 2 * kvd * 4}[name]
        assert sum(sent) == pytest.approx((world - 1) * bsz * t * width)


def test_ring_allreduce_sums_every_rank():
    for world in (2, 3, 5):
        values = [torch.randn(7, 3, generator=torch.Generator().manual_seed(r)) for r in range(world)]
        outs, _ = run_threads(None, None, world, fn=lambda e, x, t: ring_allreduce(values[t.rank], t, "sum"))
        for out in outs:
            torch.testing.assert_close(out, sum(values), rtol=1e-6, atol=1e-6)


def test_tensor_parallel_needs_a_kv_head_per_rank():
    with pytest.raises(ValueError, match="over 3 ranks needs at least 3 kv heads, got 2"):
        run_threads(baselines.build("tp", tiny_lm()), _inputs(tiny_lm()), 3)


def test_tensor_parallel_splits_uneven_kv_heads():
    """SmolLM2's 3 kv heads over 2 ranks: 2 and 1 kv heads with their query heads, the MLP split near-evenly."""
    model = hf_decoder(heads=6, kv_heads=3, dim=36)
    x = _inputs(model)
    for world in (2, 3):
        outs, _ = run_threads(baselines.build("tp", model), x, world)
        torch.testing.assert_close(torch.cat(outs, dim=-1), model(x).logits, rtol=1e-4, atol=1e-4)
