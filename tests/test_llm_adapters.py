"""Unmodified Hugging Face Llama, Mistral, Qwen2 and Qwen3 under ASTRA: against the models' own forward,
the simulation, and the errors that name what cannot run."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from runtime_helpers import exact_codebooks, hf_decoder, hf_gpt2, hf_vit, run_threads, tiny_classifier, tiny_lm

import astra
import astra_kernels as ak
from astra.dense import dense_forward
from astra.remote import RemotePlan, int8_gather_available
from astra_kernels import cost_model
from astra_lab.train import BlockQuantizer, simulate

# GQA (Hkv = 2 of 4 heads, Hkv = 1), tied and untied heads, q/k/v biases, per-head q/k norms with d != D/H,
# Llama 3 rope scaling (llama3; linear and yarn below), and Mistral's window wider than the sequences
DECODERS = {
    "llama": lambda: hf_decoder("llama"),
    "llama_mqa_untied": lambda: hf_decoder("llama", kv_heads=1, tie=False, seed=1),
    "mistral": lambda: hf_decoder("mistral", tie=False, sliding_window=64),
    "qwen2_mqa": lambda: hf_decoder("qwen2", kv_heads=1),
    "qwen3": lambda: hf_decoder("qwen3", head_dim=12, tie=False),
}
ROPES = {
    "linear": dict(rope_type="linear", factor=4.0),
    "yarn": dict(rope_type="yarn", factor=16.0, original_max_position_embeddings=16),
}


def _ids(tokens=23, batch=2, seed=1):
    return torch.randint(0, 97, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def _close(got, want, rel):
    """max |got - want| within ``rel`` of the logits' scale."""
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= rel * scale, f"max |diff| {err:.3g} vs logits' scale {scale:.3g}"


@pytest.mark.parametrize("name", [*DECODERS, *ROPES])
def test_block_math_reproduces_the_hf_forward(name):
    model = DECODERS[name]() if name in DECODERS else hf_decoder("llama", rope_scaling=ROPES[name])
    adapter = astra.adapt(model)
    x = _ids()
    torch.testing.assert_close(dense_forward(adapter, x), model(x).logits, rtol=1e-5, atol=1e-5)
    assert all(b.rotary and b.w_gate is not None and b.norm1.kind == "rms" for b in adapter.blocks)


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("quantize", ["input", "kv"])
@pytest.mark.parametrize("world,groups", [(2, 1), (3, 2), (4, 2)])
def test_exact_codebooks_reproduce_the_hf_logits(name, quantize, world, groups):
    """Codebooks holding every token's quantized vector: the remote tokens are rebuilt exactly (dequantize: fp32
    projections of the attention inputs, or the keys and values themselves) and rotated at their positions."""
    model = DECODERS[name]()
    x = _ids()  # 23 tokens: uneven chunks
    books = exact_codebooks(model, x, groups, quantize)
    engine = astra.AstraEngine(model, books, encode="exact", formulation="dequantize")
    _close(engine.forward(x, world), model(x).logits, 1e-4)
    assert engine.codebooks.codes_per_token == groups * (2 if quantize == "kv" else 1)


@pytest.mark.parametrize("name", ["llama", "llama_mqa_untied", "mistral", "qwen2_mqa"])
@pytest.mark.parametrize("world,groups", [(2, 1), (3, 2), (4, 2)])
def test_exact_codebooks_through_the_fused_rotating_kernel(name, world, groups):
    """formulation tokens: each remote token's fp32 table rows summed and rotated inside the attention kernel."""
    model = DECODERS[name]()
    x = _ids()
    engine = astra.AstraEngine(model, exact_codebooks(model, x, groups), encode="exact", formulation="tokens")
    assert set(engine.remote_formulations(x, world)) == {"tokens"}
    _close(engine.forward(x, world), model(x).logits, 1e-4)


@pytest.mark.parametrize("rope", ROPES)
@pytest.mark.parametrize("quantize", ["input", "kv"])
def test_exact_codebooks_with_other_rope_types(rope, quantize):
    model = hf_decoder("llama", rope_scaling=ROPES[rope])
    x = _ids()
    engine = astra.AstraEngine(model, exact_codebooks(model, x, 2, quantize), encode="exact", formulation="dequantize")
    _close(engine.forward(x, 3), model(x).logits, 1e-4)


@pytest.mark.parametrize("formulation", ["gather", "gather_int8", "auto"])
def test_exact_codebooks_through_rounded_tables(formulation):
    """The cost model's picks for rotary blocks: keys/values summed from fp16 (gather) or 8-bit (gather_int8) table
    rows, then rotated. fp16 rows carry 2^-11 relative error, 8-bit rows up to 1/510 of a row's range."""
    if formulation == "gather_int8" and not int8_gather_available(torch.device("cpu")):
        pytest.skip("no quantized CPU ops in this torch")
    model = DECODERS["qwen3"]()
    x = _ids()
    engine = astra.AstraEngine(model, exact_codebooks(model, x, 2), encode="exact", formulation=formulation)
    assert set(engine.remote_formulations(x, 3)) <= set(cost_model.MATERIALIZED)
    _close(engine.forward(x, 3), model(x).logits, 2e-2 if formulation == "gather_int8" else 1e-3)


@pytest.mark.parametrize("name", ["llama", "qwen2_mqa", "qwen3"])
@pytest.mark.parametrize("quantize", ["input", "kv"])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_over_loopback_equal_the_simulation_exactly(name, quantize, world):
    model = DECODERS[name]()
    x = _ids()
    books = astra.calibrate(model, [x], 16, 2, progress=False, quantize=quantize)
    assert books.quantize == quantize
    engine = astra.AstraEngine(model, books)
    outs, transports = run_threads(engine, x, world)
    for got, want in zip(outs, engine.simulate(x, world)):
        assert torch.equal(got, want)
    assert not torch.allclose(engine.forward(x, world), model(x).logits, atol=1e-3)  # lossy codes
    # bytes on the wire: per token G codes of its attention input, or G for its key and G for its value
    layout, per_token = engine.layout(x, world), 2 * (2 if quantize == "kv" else 1)
    for r, t in enumerate(transports):
        sent = [rec.sent for rec in t.stats.records if rec.tag.startswith("block")]
        payload = ak.packed_size(x.shape[0] * layout.size(r) * per_token, books.bits)
        assert payload == engine.payload_bytes(x.shape[0], layout.size(r))
        assert sent == [{d: payload for d in layout.destinations(r)}] * len(engine.adapter.blocks)


def _hf_bert(seed=0):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


OTHERS = {"tiny_lm_gqa": tiny_lm, "tiny_classifier": tiny_classifier, "gpt2": hf_gpt2, "vit": hf_vit, "bert": _hf_bert}


def _other_inputs(model):
    if type(model).__name__ == "ViTForImageClassification":
        return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return _ids(24, seed=1) % 50


@pytest.mark.parametrize("name", OTHERS)
def test_kv_quantization_of_models_without_rotary_positions(name):
    """quantize="kv" on GPT-2, ViT (Distributed Class Tokens), BERT and the tiny models: exact codebooks give the
    plain model, calibrated ones run distributed exactly as simulated."""
    model = OTHERS[name]()
    x = _other_inputs(model)
    adapter = astra.adapt(model)
    exact = astra.AstraEngine(model, exact_codebooks(model, x, 2, "kv"), encode="exact")
    torch.testing.assert_close(exact.forward(x, 3), adapter.reference_forward(x), rtol=1e-4, atol=1e-4)
    assert exact.remote_formulations(x, 3) == ["dequantize"]
    engine = astra.AstraEngine(model, astra.calibrate(model, [x], 16, 2, progress=False, quantize="kv"))
    outs, _ = run_threads(engine, x, 3)
    for got, want in zip(outs, engine.simulate(x, 3)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["llama", "qwen3"])
@pytest.mark.parametrize("quantize", ["input", "kv"])
def test_bf16_weights_stay_as_close_to_the_fp32_model_as_hf_in_bf16(name, quantize):
    """bf16 keeps 8 significant bits, and ASTRA's kernels round in another order than HF's, so the two bf16 runs
    differ by bf16 rounding. The measure of that rounding is HF's own bf16 error against the fp32 model:
    ASTRA (exact codebooks, bf16) must stay within twice it, and within 2^-5 of the logits' scale of HF bf16."""
    x = _ids()
    want = DECODERS[name]()(x).logits
    model = DECODERS[name]().to(torch.bfloat16)
    hf = model(x).logits.float()
    engine = astra.AstraEngine(model, exact_codebooks(model, x, 2, quantize), encode="exact")
    assert engine.codebooks.tensors[0].dtype == torch.bfloat16
    got = engine.forward(x, 3)
    assert got.dtype == torch.bfloat16
    got = got.float()
    hf_error = (hf - want).abs().max().item()
    assert 0 < (got - want).abs().max().item() <= 2 * hf_error
    _close(got, hf, 2**-5)
    outs, _ = run_threads(engine, x, 3)
    assert torch.equal(torch.cat(outs, dim=1).float(), got)


@pytest.mark.parametrize("name", ["llama", "qwen3"])
@pytest.mark.parametrize("quantize", ["input", "kv"])
def test_training_simulation_is_the_engine_simulation_in_eval_mode(name, quantize):
    model = DECODERS[name]()
    x = _ids()
    books = astra.calibrate(model, [x], 16, 2, progress=False, quantize=quantize)
    quantizers = [BlockQuantizer(b, quantize=quantize).eval() for b in books.tensors]
    with torch.no_grad():
        got = simulate(astra.adapt(model), quantizers, x, 3).outputs
    torch.testing.assert_close(got, astra.AstraEngine(model, books, encode="exact").forward(x, 3), rtol=1e-4,
                               atol=1e-4)
    out = simulate(astra.adapt(model), [BlockQuantizer(b, quantize=quantize) for b in books.tensors], x, 3, noise=1.0)
    (out.outputs.sum() + out.commit).backward()
    grad = model.model.layers[0].self_attn.k_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


# --------------------------------------------------------------------------- what cannot run


def test_an_unsupported_class_is_a_type_error_listing_the_supported_ones():
    import transformers

    cfg = transformers.GPTNeoXConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64,
                                     vocab_size=97)
    with pytest.raises(TypeError, match="cannot parallelize GPTNeoXForCausalLM") as info:
        astra.adapt(transformers.GPTNeoXForCausalLM(cfg))
    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GPT2LMHeadModel"):
        assert name in str(info.value)


def test_a_rope_type_that_depends_on_the_sequence_length_is_refused():
    model = hf_decoder("llama", rope_scaling=dict(rope_type="dynamic", factor=2.0))
    with pytest.raises(ValueError, match=r"rope type 'dynamic'.*reproduces rope types default, linear, llama3, yarn"):
        astra.adapt(model)


def test_sequences_beyond_mistrals_sliding_window_are_refused():
    model = hf_decoder("mistral", sliding_window=16)
    x = _ids(16)
    books = exact_codebooks(model, x, 1)
    engine = astra.AstraEngine(model, books, encode="exact", formulation="dequantize")
    _close(engine.forward(x, 2), model(x).logits, 1e-4)  # within the window it changes nothing
    for call in (lambda: engine.forward(_ids(17), 2), lambda: run_threads(engine, _ids(17), 2),
                 lambda: dense_forward(engine.adapter, _ids(17))):
        with pytest.raises(ValueError, match="17 positions exceed its sliding window of 16 tokens"):
            call()
    # Qwen2 slides the layers past max_window_layers
    qwen2 = hf_decoder("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1)
    with pytest.raises(ValueError, match="Qwen2ForCausalLM: 17 positions exceed its sliding window of 16 tokens"):
        dense_forward(astra.adapt(qwen2), _ids(17))


def test_codebooks_of_the_other_kind_are_refused(tmp_path):
    model = DECODERS["llama"]()
    x = _ids()
    kv = astra.calibrate(model, [x], 8, 2, progress=False, quantize="kv")
    assert (kv.groups, kv.codes_per_token, kv.dim) == (2, 4, 16)  # Hkv*d = 2 * 8
    with pytest.raises(ValueError, match="these codebooks quantize 'kv'.*quantize='input' was asked for"):
        astra.AstraEngine(model, kv, quantize="input")
    books = astra.calibrate(model, [x], 8, 2, progress=False)
    with pytest.raises(ValueError, match="these codebooks quantize 'input'.*quantize='kv' was asked for"):
        astra.parallelize(model, books, transport=_one_rank_transport(), quantize="kv")
    # the file records what it quantizes
    loaded = astra.Codebooks.load(kv.save(str(tmp_path)))
    assert loaded.quantize == "kv" and astra.AstraEngine(model, loaded).quantize == "kv"
    with pytest.raises(ValueError, match="need 2G of them, got 3"):
        astra.Codebooks([torch.randn(3, 4, 8)], "kv")
    with pytest.raises(ValueError, match="quantize must be one of input, kv"):
        astra.calibrate(model, [x], 8, 2, progress=False, quantize="q")
    with pytest.raises(ValueError, match="groups G=3 must divide the key/value width Hkv\\*d=16"):
        astra.calibrate(model, [x], 8, 3, progress=False, quantize="kv")


def _one_rank_transport():
    from astra.transport import LoopbackHub

    return LoopbackHub(1).transports(1.0)[0]


def test_formulations_that_cannot_serve_a_block_are_refused():
    model = DECODERS["llama"]()
    books = astra.calibrate(model, [_ids()], 8, 1, progress=False)
    with pytest.raises(ValueError, match="the codewords formulation attends each codeword once, whatever its "
                                         "tokens' positions"):
        astra.AstraEngine(model, books, formulation="codewords")
    qwen3 = DECODERS["qwen3"]()
    norm_books = astra.calibrate(qwen3, [_ids()], 8, 1, progress=False)
    for formulation in ("tokens", "codewords"):
        with pytest.raises(ValueError, match=f"the {formulation} formulation attends remote keys inside a fused "
                                             "kernel that applies no per-head key norm"):
            astra.AstraEngine(qwen3, norm_books, formulation=formulation)
    kv = astra.calibrate(model, [_ids()], 8, 1, progress=False, quantize="kv")
    with pytest.raises(ValueError, match="quantize='kv' sends the keys' and values' own codes"):
        astra.AstraEngine(model, kv, formulation="gather")


def test_rotary_plans_choose_tokens_or_a_materialized_formulation():
    block = astra.adapt(DECODERS["llama"]()).blocks[0]
    codebook = torch.randn(1, 16, block.dim)
    plan = RemotePlan(block, codebook, table_budget_bytes=1 << 30)
    int8 = {"gather_int8"} if int8_gather_available(codebook.device) else set()
    assert set(plan.formulations) == {"tokens", "gather", "dequantize"} | int8
    norm_block = astra.adapt(DECODERS["qwen3"]()).blocks[0]
    norm_plan = RemotePlan(norm_block, torch.randn(1, 16, norm_block.dim), table_budget_bytes=1 << 30)
    assert set(norm_plan.formulations) == {"gather", "dequantize"} | int8
    # where the fused kernels would be cheapest for a block without rotary positions
    plain = RemotePlan(astra.adapt(tiny_lm()).blocks[0], torch.randn(1, 16, 32), table_budget_bytes=1 << 30)
    assert plain.choose(1, 2, 600) in ("tokens", "codewords")
    for shape in [(1, 2, 600), (2, 600, 600), (1, 1, 5)]:
        assert plan.choose(*shape) in plan.formulations
    with pytest.raises(ValueError, match="remote keys need their tokens' rotation"):
        plan.remote_kv(torch.zeros(1, 3, 1, dtype=torch.int32))


# --------------------------------------------------------------------------- real processes

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def _astra(tmp_path, *args, launcher=()):
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "astra", *args, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(ENV, ASTRA_CACHE=str(tmp_path / "cache")),
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_named_llama_shape_over_gloo_with_kv_codes(tmp_path):
    """SmolLM2-135M's shape (2 of its 30 blocks), 3 ranks, keys and values quantized: 2G codes per token."""
    report, stdout = _astra(tmp_path, "run", "--model", "llama", "--size", "smollm2-135m", "--layers", "2",
                            "--tokens", "45", "--ranks", "3", "--groups", "4", "--codebook-size", "16",
                            "--quantize", "kv", "--repeat", "1", "--generate", "2")
    assert report["max_abs_diff_vs_simulation"] == 0.0
    assert (report["model_dim"], report["blocks"], report["codes_per_token"]) == (576, 2, 8)
    bits = ak.code_bits(16)
    for r, tokens in enumerate(report["tokens_per_rank"]):
        payload = ak.packed_size(tokens * 8, bits)
        assert report["payload_bytes_per_rank_per_block"][r] == (payload if r < 2 else 0)
        assert report["bytes_sent_per_rank_per_block"][r] == payload * (2 - r)
    assert report["remote_formulation"] == ["dequantize"] and report["time_to_first_token_s"] > 0


def _tiny_checkpoint(path, family="qwen2"):
    hf_decoder(family, kv_heads=1).save_pretrained(path)
    return str(path)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun (openmpi-bin) is not installed")
def test_qwen2_checkpoint_over_mpi(tmp_path):
    pytest.importorskip("mpi4py")
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    report, _ = _astra(tmp_path, "run", "--model", "qwen2", "--checkpoint", ckpt, "--tokens", "31", "--ranks", "2",
                       "--groups", "2", "--codebook-size", "16", "--repeat", "1", "--transport", "mpi")
    assert report["transport"] == "mpi" and report["max_abs_diff_vs_simulation"] == 0.0
    assert report["model_dim"] == 32 and report["remote_formulation"][0] in ("tokens", *cost_model.MATERIALIZED)
