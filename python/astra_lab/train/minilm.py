"""all-MiniLM-L6-v2 (pretrained, from PyPI): ASTRA sentence embeddings vs the original ones.

Sentences are KJV verses; the first ``test_sentences`` of a seeded shuffle are
held out. Metric: mean cosine similarity between the ASTRA embedding (mean
pooling of the N-device simulation's outputs) and the original model's
embedding of the same sentence. Zero-shot: k-means codebooks only. NAVQ:
fine-tuning by distillation (loss 1 - cos(student, teacher)) on the other
sentences.
"""
from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from astra import adapt
from astra._optional import require

from . import data
from .loop import Batch, Variant, finetune, init_quantizers, variant_name
from .simulate import simulate

transformers = require("transformers", extra="train", purpose="the MiniLM experiment")


@dataclass
class MinilmConfig:
    ranks: int = 4
    codebook_size: int = 1024
    groups: list[int] = field(default_factory=lambda: [1, 16])
    max_tokens: int = 64
    test_sentences: int = 1000
    calib_sentences: int = 600
    ft_steps: int = 400
    ft_batch: int = 32
    ft_lr: float = 2e-5
    noise: float = 1.0
    beta: float = 1e-3
    seed: int = 0
    quantize: str = "input"  # what the tokens send: attention inputs, or keys and values ("kv")


QUICK = MinilmConfig(codebook_size=16, groups=[1, 4], test_sentences=16, calib_sentences=8, ft_steps=2, ft_batch=4)


def load():
    os.environ["HF_HUB_OFFLINE"] = "1"
    path = data.minilm_dir()
    return transformers.AutoModel.from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


def _encode(tokenizer, sentences: list[str], max_tokens: int) -> Batch:
    enc = tokenizer(sentences, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    return Batch(enc["input_ids"], valid=enc["attention_mask"].bool())


def _pool(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    w = valid.unsqueeze(-1).to(hidden.dtype)
    return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)


def _buckets(tokenizer, sentences: list[str], size: int, max_tokens: int) -> list[Batch]:
    """Batches of sentences of similar length (little padding)."""
    order = sorted(sentences, key=lambda s: len(tokenizer.tokenize(s)))
    return [_encode(tokenizer, order[i: i + size], max_tokens) for i in range(0, len(order), size)]


@torch.no_grad()
def embeddings(adapter, quantizers, batches: list[Batch], ranks: int) -> torch.Tensor:
    return torch.cat([_pool(simulate(adapter, quantizers, b.inputs, ranks, valid=b.valid).outputs, b.valid)
                      for b in batches])


def run(cfg: MinilmConfig, command: str, progress: bool = True) -> list[dict]:
    torch.manual_seed(cfg.seed)
    teacher, tokenizer = load()
    verses = data.kjv_verses()
    random.Random(cfg.seed).shuffle(verses)
    test, train = verses[: cfg.test_sentences], verses[cfg.test_sentences:]
    test_batches = _buckets(tokenizer, test, 64, cfg.max_tokens)
    t_adapter = adapt(teacher)
    reference = embeddings(t_adapter, None, test_batches, 1)
    row = dict(task="minilm", command=command, metric="cosine_similarity")
    rows = [dict(row, ranks=1, groups=None, variant="original",
                 value=F.cosine_similarity(embeddings(t_adapter, None, test_batches, cfg.ranks), reference).mean().item())]
    # calibration: one unpadded sentence per batch (block inputs of real tokens only)
    calib = [_encode(tokenizer, [s], cfg.max_tokens).inputs for s in train[: cfg.calib_sentences]]
    gen = random.Random(cfg.seed + 1)

    def batches():
        while True:
            b = _encode(tokenizer, gen.sample(train, cfg.ft_batch), cfg.max_tokens)
            with torch.no_grad():
                b.targets = _pool(simulate(t_adapter, None, b.inputs, 1, valid=b.valid).outputs, b.valid)
            yield b

    def distill(out, b):
        return (1 - F.cosine_similarity(_pool(out.outputs, b.valid), b.targets)).mean()

    for g in cfg.groups:
        student = copy.deepcopy(teacher)
        adapter = adapt(student)
        quantizers = init_quantizers(student, calib, cfg.codebook_size, g, cfg.seed, cfg.quantize)
        cos = F.cosine_similarity(embeddings(adapter, quantizers, test_batches, cfg.ranks), reference).mean().item()
        rows.append(dict(row, ranks=cfg.ranks, groups=g, variant=variant_name("astra_zero_shot", cfg.quantize),
                         value=cos))
        finetune(student, adapter, quantizers, batches(), cfg.ft_steps, cfg.ft_lr, cfg.ranks,
                 Variant("astra", g, cfg.noise, cfg.beta), distill, desc=f"minilm: NAVQ distillation G={g}",
                 progress=progress)
        cos = F.cosine_similarity(embeddings(adapter, quantizers, test_batches, cfg.ranks), reference).mean().item()
        rows.append(dict(row, ranks=cfg.ranks, groups=g, variant=variant_name("astra", cfg.quantize), value=cos))
    return rows
