"""Decoding after the ASTRA prefill: the preallocated cache, greedy and sampled tokens, against the simulation and
Hugging Face's own ``generate``."""
import json
import os
import subprocess
import sys

import pytest
import torch
from runtime_helpers import exact_codebooks, hf_decoder, run_threads, tiny_classifier

import astra
from astra import block as B
from astra.generate import Sampling, decode, generate, generate_simulated, next_tokens

MODELS = {
    "llama": lambda: hf_decoder("llama", kv_heads=1),
    "mistral": lambda: hf_decoder("mistral", tie=False, sliding_window=64),
    "qwen2": lambda: hf_decoder("qwen2"),
    "qwen3": lambda: hf_decoder("qwen3", head_dim=12),
}
SAMPLINGS = {"greedy": Sampling(), "sampled": Sampling(temperature=0.9, top_k=20, top_p=0.9, seed=3)}


def _ids(tokens=21, batch=2, seed=1):
    return torch.randint(0, 97, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def _generate(engine, x, world, steps, sampling=Sampling()):
    outs, _ = run_threads(engine, x, world, fn=lambda e, inp, t: generate(e, inp, t, steps, sampling))
    assert all(o is None for o in outs[:-1])
    return outs[-1]


@pytest.mark.parametrize("name", ["llama", "qwen3"])
@pytest.mark.parametrize("quantize", ["input", "kv"])
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("how", SAMPLINGS)
def test_generation_after_the_astra_prefill_is_generation_in_the_simulation(name, quantize, world, how):
    model = MODELS[name]()
    x = _ids()
    engine = astra.AstraEngine(model, astra.calibrate(model, [x], 16, 2, progress=False, quantize=quantize))
    got = _generate(engine, x, world, 7, SAMPLINGS[how])
    assert got.tokens.shape == (2, 7) and got.first_token_s > 0 and got.decode_tokens_per_s > 0
    assert torch.equal(got.tokens, generate_simulated(engine, x, world, 7, SAMPLINGS[how]))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("quantize", ["input", "kv"])
def test_exact_codebooks_generate_what_hf_generates(name, quantize):
    model = MODELS[name]()
    x = _ids(19)
    engine = astra.AstraEngine(model, exact_codebooks(model, x, 2, quantize), encode="exact", formulation="dequantize")
    got = _generate(engine, x, 3, 8)
    want = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False)[:, 19:]
    assert torch.equal(got.tokens, want)


def _rotated_keys(model, x):
    """Every block's keys (B, Hkv, T, d) at full precision, rotated at their positions (the dense arithmetic)."""
    adapter = astra.adapt(model)
    h, rotation, keys = adapter.embed(x, 0, x.shape[1]), adapter.rotary(torch.arange(x.shape[1])), []
    with torch.no_grad():
        for bw in adapter.blocks:
            q, k, v = B.project(bw, B.attention_input(bw, h))
            keys.append(B.rotate(k, rotation))
            rep = bw.heads // bw.kv_heads
            out = torch.nn.functional.scaled_dot_product_attention(
                B.rotate(q, rotation), keys[-1].repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=True)
            h = B.residual(bw, h, out)
    return keys


@pytest.mark.parametrize("quantize", ["input", "kv"])
def test_the_cache_is_preallocated_holds_rotated_remote_keys_and_is_written_in_place(quantize):
    model = MODELS["qwen3"]()
    x, steps = _ids(), 5
    engine = astra.AstraEngine(model, exact_codebooks(model, x, 1, quantize), encode="exact", formulation="dequantize")
    capacity = x.shape[1] + steps - 1
    cache = astra.KVCache(capacity)
    logits = engine.simulate(x, 3, cache=cache, logits_to_keep=1)[-1]
    assert logits.shape == (2, 1, 97) and cache.length == x.shape[1]
    blk = engine.adapter.blocks[0]
    assert all(k.shape == (2, blk.kv_heads, capacity, blk.head_dim) for k in cache.keys + cache.values)
    # remote keys (positions of ranks 0 and 1) rebuilt from their codes, rotated at their global positions
    for got, want in zip(cache.keys, _rotated_keys(model, x)):
        torch.testing.assert_close(got[:, :, : x.shape[1]], want, rtol=1e-5, atol=1e-5)
    buffers = [t.data_ptr() for t in cache.keys + cache.values]
    decode(engine, cache, logits[:, -1], x.shape[1], steps)
    assert [t.data_ptr() for t in cache.keys + cache.values] == buffers and cache.length == capacity
    with pytest.raises(ValueError, match=f"holds {capacity} positions; position {capacity} does not fit"):
        cache.write(0, capacity, *(t[:, :, :1] for t in (cache.keys[0], cache.values[0])))


def test_the_prefill_computes_only_the_logits_asked_for():
    model = MODELS["llama"]()
    x = _ids()
    engine = astra.AstraEngine(model, astra.calibrate(model, [x], 16, 2, progress=False))
    full = engine.simulate(x, 3)
    for keep in (1, 0, None):
        outs, _ = run_threads(engine, x, 3, fn=lambda e, inp, t: e.run_rank(inp, t, logits_to_keep=keep))
        for got, want, whole in zip(outs, engine.simulate(x, 3, logits_to_keep=keep), full):
            assert torch.equal(got, want)
            assert got.shape == (2, whole.shape[1] if keep is None else keep, 97)
            # a GEMM over fewer rows may round differently
            torch.testing.assert_close(got, whole[:, whole.shape[1] - got.shape[1]:], rtol=1e-5, atol=1e-6)
    classifier = tiny_classifier()
    books = astra.calibrate(classifier, [x % 50], 8, 2, progress=False)
    with pytest.raises(ValueError, match="logits_to_keep=1: a count >= 0 of per-token outputs"):
        astra.AstraEngine(classifier, books).simulate(x % 50, 2, logits_to_keep=1)


def test_sampling_draws_from_the_truncated_softmax():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0001]]))
    gen = torch.Generator().manual_seed(0)
    assert next_tokens(logits, Sampling(), gen).item() == 0
    assert next_tokens(logits, Sampling(temperature=1.0, top_k=1), gen).item() == 0
    assert next_tokens(logits, Sampling(temperature=1.0, top_p=0.4), gen).item() == 0

    def frequencies(sampling, draws=4000):
        tokens = next_tokens(logits.expand(draws, -1), sampling, gen).flatten()
        return torch.bincount(tokens, minlength=5).float() / draws

    # top_p = 0.7: 0.5 < 0.7 keeps the second token, 0.8 >= 0.7 drops the rest
    torch.testing.assert_close(frequencies(Sampling(1.0, top_p=0.7)), torch.tensor([0.625, 0.375, 0, 0, 0]),
                               atol=0.03, rtol=0)
    torch.testing.assert_close(frequencies(Sampling(1.0, top_k=3)), torch.tensor([0.5, 0.3, 0.15, 0, 0]) / 0.95,
                               atol=0.03, rtol=0)
    hot = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0001]) ** 0.5
    torch.testing.assert_close(frequencies(Sampling(2.0)), hot / hot.sum(), atol=0.03, rtol=0)
    for kwargs, match in ((dict(temperature=-1), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_p=0), "top_p")):
        with pytest.raises(ValueError, match=match):
            Sampling(**kwargs)


def test_seeded_sampling_is_reproducible():
    model = MODELS["qwen2"]()
    x = _ids()
    engine = astra.AstraEngine(model, astra.calibrate(model, [x], 16, 2, progress=False))
    runs = {seed: generate_simulated(engine, x, 2, 8, Sampling(temperature=5.0, seed=seed)) for seed in (0, 0, 1)}
    again = generate_simulated(engine, x, 2, 8, Sampling(temperature=5.0, seed=0))
    assert torch.equal(runs[0], again) and not torch.equal(runs[0], runs[1])


def test_generation_beyond_the_sliding_window_is_refused_before_the_prefill():
    model = hf_decoder("mistral", sliding_window=16)
    x = _ids(12)
    engine = astra.AstraEngine(model, astra.calibrate(model, [x], 8, 1, progress=False))
    assert generate_simulated(engine, x, 2, 5).shape == (2, 5)  # positions 0..15
    with pytest.raises(ValueError, match="17 positions exceed its sliding window of 16 tokens"):
        generate_simulated(engine, x, 2, 6)
    with pytest.raises(ValueError, match="17 positions exceed its sliding window of 16 tokens"):
        _generate(engine, x, 2, 6)


ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def _checkpoint_with_tokenizer(path):
    """A small Llama and a word-level tokenizer ("w0" .. "w96") saved together."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(97)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0").save_pretrained(path)
    hf_decoder("llama").save_pretrained(path)
    return str(path)


@pytest.mark.slow
def test_astra_generate_prints_the_text_as_it_comes(tmp_path):
    from astra_cli.run import RunConfig, load_tokenizer, prepare, resolve

    ckpt = _checkpoint_with_tokenizer(tmp_path / "ckpt")
    prompt = " ".join(f"w{i}" for i in range(3, 40, 2))
    args = ["--model", "llama", "--checkpoint", ckpt, "--prompt", prompt, "--steps", "5", "--ranks", "2",
            "--groups", "2", "--codebook-size", "16", "--temperature", "0.8", "--top-k", "10"]
    env = dict(ENV, ASTRA_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "astra", "generate", *args, "--json", str(tmp_path / "g.json")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "g.json").read_text())
    tokens = report["generated"][0]
    text = load_tokenizer(ckpt).decode(tokens)
    assert len(tokens) == 5 and report["text"] == text and report["tokens"] == 19
    assert proc.stdout.startswith(prompt + text) and "time to first token" in proc.stdout
    # the tokens are the simulation's, with the same (cached) codebooks and sampling
    os.environ["ASTRA_CACHE"] = env["ASTRA_CACHE"]
    try:
        cfg = resolve(RunConfig(model="llama", checkpoint=ckpt, prompt=prompt, generate=5, groups=2, codebook_size=16,
                                temperature=0.8, top_k=10, ranks=2))
        engine, inputs = prepare(cfg, verbose=False)
    finally:
        del os.environ["ASTRA_CACHE"]
    assert generate_simulated(engine, inputs, 2, 5, cfg.sampling).tolist() == report["generated"]
