"""King James Bible: a byte-level language model, perplexity before/after ASTRA.

Two architectures of the same size (:data:`ARCHITECTURES`): GPT-2 (task ``kjv``: learned positions,
LayerNorm, GELU MLP) and Llama (task ``kjv_llama``: RoPE, grouped-query attention with Hkv < H,
RMSNorm, SwiGLU MLP).

1. train the original model on 95 % of the text (random windows), measure test
   perplexity on the last 5 % (non-overlapping windows);
2. for each G: k-means codebooks (zero-shot perplexity), NAVQ fine-tuning in
   the N-device simulation, perplexity; ablation (``ablation``): no noise at the last G.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from astra import adapt
from astra._optional import require

from . import data
from .loop import Batch, Variant, codebooks_of, cosine_lr, finetune, init_quantizers, variant_name
from .simulate import simulate

transformers = require("transformers", extra="train", purpose="the KJV experiment")
tqdm = require("tqdm.auto", extra="train", purpose="the KJV experiment").tqdm


# architecture -> its task name in the accuracy record
ARCHITECTURES = {"gpt2": "kjv", "llama": "kjv_llama"}


@dataclass
class KjvConfig:
    architecture: str = "gpt2"  # a key of ARCHITECTURES
    dim: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2  # llama: grouped-query attention (gpt2 has one kv head per query head)
    context: int = 256
    steps: int = 2500
    batch: int = 16
    lr: float = 3e-3
    ranks: int = 4
    codebook_size: int = 1024
    groups: list[int] = field(default_factory=lambda: [1, 32])
    ft_steps: int = 500
    ft_lr: float = 5e-4
    noise: float = 1.0
    beta: float = 1e-3
    test_windows: int = 300
    calib_windows: int = 32
    seed: int = 0
    quantize: str = "input"  # what the tokens send: attention inputs, or keys and values ("kv")
    ablation: bool = True  # also fine-tune the last G without NAVQ's noise
    out: str = "runs/accuracy/kjv"


QUICK = KjvConfig(dim=32, layers=2, heads=2, kv_heads=1, context=32, steps=4, batch=4, codebook_size=16,
                  groups=[1, 4], ft_steps=3, test_windows=8, calib_windows=4, out="runs/accuracy/kjv-quick")
LLAMA = KjvConfig(architecture="llama", groups=[1, 16, 32], ft_steps=300, ablation=False, out="runs/accuracy/kjv_llama")
QUICK_LLAMA = KjvConfig(**{**asdict(QUICK), "architecture": "llama", "out": "runs/accuracy/kjv_llama-quick"})


def _model_class(cfg: KjvConfig):
    if cfg.architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {cfg.architecture!r}")
    return transformers.GPT2LMHeadModel if cfg.architecture == "gpt2" else transformers.LlamaForCausalLM


def build_model(cfg: KjvConfig):
    """A randomly initialised byte-level LM of ``cfg``'s architecture (vocabulary 256, tied embeddings)."""
    cls = _model_class(cfg)
    torch.manual_seed(cfg.seed)
    if cfg.architecture == "gpt2":
        config = transformers.GPT2Config(vocab_size=256, n_positions=cfg.context, n_embd=cfg.dim, n_layer=cfg.layers,
                                         n_head=cfg.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                         bos_token_id=0, eos_token_id=0)
    else:  # SwiGLU width 8/3 D rounded to a multiple of 8, as Llama sizes its MLP
        config = transformers.LlamaConfig(vocab_size=256, hidden_size=cfg.dim, intermediate_size=(8 * cfg.dim // 3 + 7) // 8 * 8,
                                          num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                                          num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.context,
                                          rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=0,
                                          eos_token_id=0, attention_dropout=0.0)
    return cls(config)


def _windows(stream, cfg: KjvConfig, gen):
    while True:
        w = data.random_windows(stream, cfg.context, cfg.batch, gen)
        yield Batch(w[:, :-1], w[:, 1:])


def _lm_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def train_original(cfg: KjvConfig, train, progress: bool):
    path = os.path.join(cfg.out, "original")
    meta = os.path.join(path, "astra_train.json")
    want = {k: v for k, v in asdict(cfg).items()
            if k in ("architecture", "dim", "layers", "heads", "kv_heads", "context", "steps", "batch", "lr", "seed")}
    if os.path.exists(meta) and json.load(open(meta)) == want:
        return _model_class(cfg).from_pretrained(path).eval()
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = cosine_lr(opt, cfg.steps, warmup=cfg.steps // 20)
    batches = _windows(train, cfg, torch.Generator().manual_seed(cfg.seed))
    model.train()
    bar = tqdm(range(cfg.steps), desc=f"{ARCHITECTURES[cfg.architecture]}: train byte-level LM", unit="step",
               disable=not progress, leave=False)
    for _ in bar:
        b = next(batches)
        loss = _lm_loss(model(input_ids=b.inputs).logits, b.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    model.save_pretrained(path)
    with open(meta, "w") as f:
        json.dump(want, f)
    return model


def test_windows(test: torch.Tensor, context: int, count: int) -> torch.Tensor:
    """Up to ``count`` non-overlapping windows (n, context + 1) of the test bytes: inputs and next-byte targets."""
    n = min(count, (test.numel() - 1) // context)
    return torch.stack([test[i * context: (i + 1) * context + 1] for i in range(n)])


@torch.no_grad()
def perplexity_of(logits_of, windows: torch.Tensor) -> float:
    """exp(mean next-byte cross-entropy) of ``logits_of(inputs (b, T)) -> (b, T, 256)`` over ``windows``."""
    total = 0.0
    for i in range(0, windows.shape[0], 16):
        w = windows[i: i + 16]
        total += _lm_loss(logits_of(w[:, :-1]), w[:, 1:]).item() * w.shape[0]
    return math.exp(total / windows.shape[0])


def perplexity(adapter, quantizers, test, cfg: KjvConfig, ranks: int) -> float:
    """Test perplexity of the N-rank training simulation (no quantizers: the model itself)."""
    return perplexity_of(lambda x: simulate(adapter, quantizers, x, ranks).outputs,
                         test_windows(test, cfg.context, cfg.test_windows))


def run(cfg: KjvConfig, command: str, progress: bool = True) -> list[dict]:
    torch.manual_seed(cfg.seed)
    train, test = data.kjv_bytes()
    original = train_original(cfg, train, progress)
    task = ARCHITECTURES[cfg.architecture]
    row = dict(task=task, command=command, metric="perplexity")
    rows = [dict(row, ranks=1, groups=None, variant="original", value=perplexity(adapt(original), None, test, cfg, 1))]
    # Control: the same extra training without quantization (an under-trained LM improves with any training).
    control = copy.deepcopy(original)
    finetune(control, adapt(control), None, _windows(train, cfg, torch.Generator().manual_seed(cfg.seed)), cfg.ft_steps,
             cfg.ft_lr, 1, Variant("original_continued", 0), lambda out, b: _lm_loss(out.outputs, b.targets),
             desc=f"{task}: continue training the original", progress=progress)
    rows.append(dict(row, ranks=1, groups=None, variant="original_continued",
                     value=perplexity(adapt(control), None, test, cfg, 1)))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    calib = [data.random_windows(train, cfg.context, 8, gen)[:, :-1] for _ in range(max(1, cfg.calib_windows // 8))]
    variants = [Variant("astra", g, cfg.noise, cfg.beta) for g in cfg.groups]
    if cfg.ablation:
        variants.append(Variant("astra_no_noise", cfg.groups[-1], 0.0, cfg.beta))
    for v in variants:
        model = copy.deepcopy(original)
        adapter = adapt(model)
        quantizers = init_quantizers(model, calib, cfg.codebook_size, v.groups, cfg.seed, cfg.quantize)
        if v.name == "astra":
            rows.append(dict(row, ranks=cfg.ranks, groups=v.groups,
                             variant=variant_name("astra_zero_shot", cfg.quantize),
                             value=perplexity(adapter, quantizers, test, cfg, cfg.ranks)))
        finetune(model, adapter, quantizers, _windows(train, cfg, torch.Generator().manual_seed(cfg.seed + v.groups)),
                 cfg.ft_steps, cfg.ft_lr, cfg.ranks, v, lambda out, b: _lm_loss(out.outputs, b.targets),
                 desc=f"{task}: NAVQ fine-tune {v.name} G={v.groups}", progress=progress)
        rows.append(dict(row, ranks=cfg.ranks, groups=v.groups, variant=variant_name(v.name, cfg.quantize),
                         value=perplexity(adapter, quantizers, test, cfg, cfg.ranks)))
        if v.name == "astra":  # the fine-tuned model and its codebooks, for the runtime (and the studies)
            path = os.path.join(cfg.out, f"astra-G{v.groups}" + ("" if cfg.quantize == "input" else "-kv"))
            model.save_pretrained(path)
            codebooks_of(quantizers).save(path)
    return rows
