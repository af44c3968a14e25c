"""Small models, inputs and codebooks for the runtime tests (all offline, seconds)."""
import os
import threading

import torch

import astra
from astra.dense import dense_forward
from astra.transport import LoopbackHub

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_lm(kv_heads=2, layers=2, seed=0):
    torch.manual_seed(seed)
    return astra.TinyTransformer(vocab=50, dim=32, heads=4, kv_heads=kv_heads, layers=layers, max_len=64).eval()


def tiny_classifier(seed=0):
    torch.manual_seed(seed)
    return astra.TinyTransformer(vocab=50, dim=32, heads=4, layers=2, max_len=64, num_classes=7).eval()


def hf_gpt2(layers=2, positions=64, seed=0):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=layers, n_embd=32, n_head=4, n_positions=positions, vocab_size=97,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def hf_vit(layers=2, side=8, patch=2, seed=0):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                                 image_size=side, patch_size=patch, num_labels=5)
    return transformers.ViTForImageClassification(cfg).eval()


LLAMA3_ROPE = dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16)  # scaled to these short sequences: every band is exercised


def hf_decoder(family="llama", layers=2, heads=4, kv_heads=2, dim=32, head_dim=None, tie=True, vocab=97, seed=0,
               **config):
    """A small unmodified Hugging Face decoder LLM: llama (llama3 rope scaling), mistral, qwen2 or qwen3."""
    import transformers

    names = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    if family == "llama":
        config.setdefault("rope_scaling", LLAMA3_ROPE)
    torch.manual_seed(seed)
    cfg = getattr(transformers, f"{names}Config")(
        num_hidden_layers=layers, hidden_size=dim, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim or dim // heads, intermediate_size=2 * dim, vocab_size=vocab, tie_word_embeddings=tie,
        max_position_embeddings=256, bos_token_id=0, eos_token_id=None, pad_token_id=None, **config)
    return getattr(transformers, f"{names}ForCausalLM")(cfg).eval()


def exact_codebooks(model, inputs, groups=1, quantize="input"):
    """Codebooks whose codewords are exactly every token's quantized vector (quantization is lossless): its
    block input, or its keys and values (``quantize="kv"``: G groups each)."""
    adapter = astra.adapt(model)
    collected = [[] for _ in adapter.blocks]
    dense_forward(adapter, inputs, collect=collected, quantize=quantize)
    count = groups * (2 if quantize == "kv" else 1)
    books = []
    for samples in collected:
        x = torch.cat([s.reshape(-1, s.shape[-1]) for s in samples])
        x = torch.cat([x, x[:1] + 100.0])  # K >= 2 even for one token
        books.append(x.reshape(x.shape[0], count, -1).transpose(0, 1).contiguous())
    return astra.Codebooks(books, quantize)


def run_threads(engine, inputs, world_size, fn=None, timeout_s=30.0):
    """Run every rank's ``fn(engine, inputs, transport)`` (default: run_rank) in threads over loopback."""
    fn = fn or (lambda e, x, t: e.run_rank(x, t))
    transports = LoopbackHub(world_size).transports(timeout_s)
    outs, errors = [None] * world_size, []

    def work(r):
        try:
            outs[r] = fn(engine, inputs, transports[r])
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return outs, transports


def run_per_rank(transports, fns, join_timeout_s=60.0) -> list:
    """Run ``fns[r](transports[r])`` in one thread per rank; each rank's result, or the exception it raised."""
    outcomes = [None] * len(fns)

    def work(r):
        try:
            outcomes[r] = fns[r](transports[r])
        except Exception as exc:  # noqa: BLE001 - returned to the test
            outcomes[r] = exc

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=join_timeout_s)
        assert not t.is_alive(), "a rank hung"
    return outcomes
