"""Shared machinery of the accuracy experiments: codebook initialization,
the NAVQ fine-tuning loop, and evaluation through the simulation.

Fine-tuning trains the model's weights and the EMA codebooks together, on the
simulation of N ranks: loss = task loss + beta * commitment, with NAVQ noise
lambda on the remote embeddings (training only). The quantizers quantize the
attention inputs or, with ``quantize="kv"``, the keys and values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from astra._optional import require
from astra.calibrate import calibrate
from astra.codebooks import Codebooks
from astra.models.base import ModelAdapter

from .quantizer import BlockQuantizer
from .simulate import SimOut, simulate


@dataclass
class Batch:
    inputs: torch.Tensor  # token ids (B, T) or pixels (B, C, H, W)
    targets: torch.Tensor | None = None
    valid: torch.Tensor | None = None  # (B, T) bool, False at padding


@dataclass
class Variant:
    """One ASTRA configuration of an experiment."""

    name: str  # "astra", "astra_no_noise", "astra_single_cls", "astra_beta0", ...
    groups: int
    noise: float = 1.0  # NAVQ lambda
    beta: float = 1e-3  # commitment weight
    class_token: str = "distributed"


def init_quantizers(model: torch.nn.Module, batches: Iterable[torch.Tensor], codebook_size: int, groups: int,
                    seed: int, quantize: str = "input") -> list[BlockQuantizer]:
    """k-means codebooks on what the model's blocks quantize (astra.calibrate), one quantizer per block."""
    books = calibrate(model, batches, codebook_size, groups, seed=seed, progress=False, quantize=quantize)
    return [BlockQuantizer(cb, quantize=quantize) for cb in books.tensors]


def codebooks_of(quantizers: list[BlockQuantizer]) -> Codebooks:
    return Codebooks([q.codebook.detach().clone() for q in quantizers], quantizers[0].quantize)


def variant_name(name: str, quantize: str) -> str:
    """The record's name of an ASTRA variant: ``name``, with ``_kv`` when keys and values are quantized."""
    return name if quantize == "input" else f"{name}_kv"


def cosine_lr(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def finetune(model: torch.nn.Module, adapter: ModelAdapter, quantizers: list[BlockQuantizer] | None,
             batches: Iterator[Batch], steps: int, lr: float, ranks: int, variant: Variant,
             task_loss: Callable[[SimOut, Batch], torch.Tensor], desc: str, progress: bool = True) -> None:
    """NAVQ fine-tuning of the model and its codebooks for ``steps`` batches.

    With ``quantizers`` None the same loop trains the unquantized model (the
    "original_continued" control: as many extra steps, no quantization)."""
    quantizers = quantizers or []
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = cosine_lr(opt, steps, warmup=max(1, steps // 20))
    model.train()
    for q in quantizers:
        q.train()
    bar = range(steps)
    if progress:
        tqdm = require("tqdm.auto", extra="train", purpose="the fine-tuning progress bar").tqdm
        bar = tqdm(bar, desc=desc, unit="step", leave=False)
    for _ in bar:
        batch = next(batches)
        out = simulate(adapter, quantizers or None, batch.inputs, ranks, noise=variant.noise, class_token=variant.class_token,
                       valid=batch.valid)
        loss = task_loss(out, batch) + variant.beta * out.commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if progress:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    for q in quantizers:
        q.eval()
