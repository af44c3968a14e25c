"""Codebooks without training: k-means on what each block quantizes.

The unquantized model runs over calibration batches; for every block and
group, faiss k-means fits K centroids to the collected vectors: the attention
inputs (D/G features per group), or with ``quantize="kv"`` the keys before
rotation and the values (G groups of Hkv*d/G each). Deterministic for a given
seed and thread count, so ranks that calibrate independently agree.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from typing import TYPE_CHECKING, Iterable

import torch

from . import digest
from ._optional import require
from .codebooks import Codebooks, check_quantize
from .dense import dense_forward
from .models import adapt, example_inputs

if TYPE_CHECKING:
    import numpy as np

PURPOSE = "k-means calibration"


def kmeans(samples: np.ndarray, k: int, *, iters: int, seed: int) -> np.ndarray:
    """(N, d) float32 -> (k, d) centroids (faiss; N >= k)."""
    np = require("numpy", extra="calibrate", purpose=PURPOSE)  # first: faiss imports it
    faiss = require("faiss", extra="calibrate", purpose=PURPOSE)
    km = faiss.Kmeans(samples.shape[1], k, niter=iters, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(samples, dtype=np.float32))
    return km.centroids


def calibrate(model: torch.nn.Module, batches: Iterable[torch.Tensor], codebook_size: int, groups: int, *,
              iters: int = 20, seed: int = 0, progress: bool = True, quantize: str = "input") -> Codebooks:
    """Fit per-block codebooks by k-means on what ``quantize`` sends of the tokens of ``batches``: (G, K, D/G)
    for the attention inputs, (2G, K, Hkv*d/G) for the keys and values (see :mod:`astra.codebooks`).

    Every batch is an input of the model (token ids or pixels). Needs at least
    ``codebook_size`` tokens in total. faiss uses as many threads as torch.
    """
    np = require("numpy", extra="calibrate", purpose=PURPOSE)  # first: faiss imports it
    faiss = require("faiss", extra="calibrate", purpose=PURPOSE)

    check_quantize(quantize)
    adapter = adapt(model)
    dim = adapter.quantized_dim(quantize)
    if groups < 1 or dim % groups:
        what = "the model width D" if quantize == "input" else "the key/value width Hkv*d"
        raise ValueError(f"groups G={groups} must divide {what}={dim}")
    if codebook_size < 2:
        raise ValueError(f"codebook size K must be >= 2, got {codebook_size}")
    collected: list[list[torch.Tensor]] = [[] for _ in adapter.blocks]
    for inputs in batches:
        dense_forward(adapter, inputs, collect=collected, quantize=quantize)
    if not collected[0]:
        raise ValueError("calibrate needs at least one batch of inputs")
    faiss.omp_set_num_threads(torch.get_num_threads())
    width, count = dim // groups, groups * (2 if quantize == "kv" else 1)  # kv: the key's groups, then the value's
    jobs = [(b, g) for b in range(len(adapter.blocks)) for g in range(count)]
    bar = None
    if progress:
        tqdm = require("tqdm.auto", extra="calibrate", purpose="the calibration progress bar").tqdm
        bar = tqdm(total=len(jobs), desc=f"k-means K={codebook_size} G={groups}", unit="codebook", leave=False)
    books = []
    for b, samples in enumerate(collected):
        x = torch.cat([s.reshape(-1, width * count) for s in samples]).float().cpu().numpy()
        if x.shape[0] < codebook_size:
            raise ValueError(f"calibration has {x.shape[0]} tokens per block, fewer than K={codebook_size} codewords")
        cents = []
        for g in range(count):
            cents.append(kmeans(x[:, g * width : (g + 1) * width], codebook_size, iters=iters, seed=seed + 7919 * b + g))
            if bar is not None:
                bar.update()
        books.append(torch.from_numpy(np.stack(cents)))
    if bar is not None:
        bar.close()
    ref = adapter.blocks[0].w_qkv
    return Codebooks(books, quantize).to(dtype=ref.dtype, device=ref.device)


def cache_dir() -> str:
    """Where calibrated codebooks are cached: $ASTRA_CACHE or ~/.cache/astra."""
    return os.environ.get("ASTRA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "astra"))


def cached_calibration(model: torch.nn.Module, *, tokens: int, batch: int, codebook_size: int, groups: int,
                       iters: int, seed: int, progress: bool, quantize: str = "input") -> Codebooks:
    """Codebooks calibrated on random inputs of shape (batch, tokens), cached on disk.

    The cache is keyed by the content of everything the codebooks depend on:
    the model's weights and configuration (:mod:`astra.digest`), the
    calibration inputs themselves, K, G, the k-means iterations and seed. Two
    processes that hold the same model share an entry whatever path or seed
    the model came from, and a changed checkpoint never reuses a stale one.
    Calibration uses at least 2K vectors per block.
    """
    count = max(2, math.ceil(2 * codebook_size / (tokens * batch)))
    batches = [example_inputs(model, tokens, batch, seed=seed + 1 + i) for i in range(count)]
    ident = json.dumps({
        "format": 2, "model": digest.config_digest(model), "weights": digest.weights_digest(model),
        "inputs": digest.tensors_digest((f"batch.{i}", b) for i, b in enumerate(batches)),
        "codebook_size": codebook_size, "groups": groups, "iters": iters, "seed": seed, "quantize": quantize,
    }, sort_keys=True)
    path = os.path.join(cache_dir(), "codebooks", hashlib.sha256(ident.encode()).hexdigest()[:20] + ".safetensors")
    if os.path.exists(path):
        return Codebooks.load(path)
    books = calibrate(model, batches, codebook_size, groups, iters=iters, seed=seed, progress=progress,
                      quantize=quantize)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    books.save(path)
    return books
