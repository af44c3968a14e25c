"""A block's VQ module during fine-tuning.

Forward, for the vectors z (M, W) that the tokens send (their attention inputs, W = D, or with
``quantize="kv"`` their keys before rotation and values, W = 2*Hkv*d):
  codes    = nearest codewords (astra_kernels.vq_encode, fast kernels, no gradient)
  x_q      = codebook lookup of the codes
  NAVQ     x~ = x_q + lambda * eps, eps ~ N(mu_r, sigma_r^2) per feature, where
           (mu_r, sigma_r) are the statistics of the batch's quantization residual
           r = z - x_q (training only; lambda = 0 or eval: x~ = x_q)
  STE      remote = z + sg(x~ - z): the forward value is x~, the gradient goes to z
  commit   beta * mean ||z - sg(x_q)||^2 pulls z towards its codeword
Codebooks learn by exponential moving averages of their assigned vectors
(k-means in the limit), with Laplace smoothing, and codewords unused for a
while restart at random vectors of the batch (dead-code restarts).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import astra_kernels as ak
from astra.codebooks import check_quantize


@dataclass
class QuantOut:
    remote: torch.Tensor  # (M, W): what the other ranks see (STE, noise in training)
    commit: torch.Tensor  # scalar: mean ||z - sg(x_q)||^2
    codes: torch.Tensor  # (M, G) int32


class BlockQuantizer(nn.Module):
    def __init__(self, codebook: torch.Tensor, *, quantize: str = "input", decay: float = 0.99, eps: float = 1e-5,
                 dead_after: float = 0.03):
        """codebook: (G, K, W/G) initial codewords (e.g. k-means from astra.calibrate); ``quantize``: what they
        quantize (:mod:`astra.codebooks`)."""
        super().__init__()
        if codebook.dim() != 3:
            raise ValueError(f"codebook must be (G, K, D/G), got {tuple(codebook.shape)}")
        self.quantize = check_quantize(quantize)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        g, k, _ = codebook.shape
        self.decay, self.eps, self.dead_after = decay, eps, dead_after
        self.register_buffer("codebook", codebook.detach().float().clone())
        self.register_buffer("cluster_size", torch.ones(g, k))
        self.register_buffer("embed_sum", codebook.detach().float().clone())

    @property
    def groups(self) -> int:
        return self.codebook.shape[0]

    def forward(self, z: torch.Tensor, noise: float = 0.0) -> QuantOut:
        g, k, dg = self.codebook.shape
        codes, _ = ak.vq_encode(z.detach().float(), self.codebook)
        x_q = ak.vq_decode(codes, self.codebook).to(z.dtype)
        commit = (z - x_q).pow(2).mean()
        if self.training:
            self._ema_update(z.detach().float(), codes)
        target = x_q
        if self.training and noise > 0:
            residual = (z - x_q).detach()
            mu, sigma = residual.mean(0), residual.std(0, unbiased=False)
            target = x_q + noise * (mu + sigma * torch.randn_like(x_q))
        return QuantOut(remote=z + (target - z).detach(), commit=commit, codes=codes)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        g, k, dg = self.codebook.shape
        rows = (codes.long() + torch.arange(g, device=z.device) * k).reshape(-1)  # (M*G,) rows of (G*K, Dg)
        counts = torch.bincount(rows, minlength=g * k).reshape(g, k).float()
        sums = torch.zeros(g * k, dg, device=z.device).index_add_(0, rows, z.reshape(-1, dg)).reshape(g, k, dg)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum(-1, keepdim=True)
        smoothed = (self.cluster_size + self.eps) / (total + k * self.eps) * total
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(-1))
        # Dead codes: an expected share far below uniform; restart them on vectors of this batch.
        dead = self.cluster_size < self.dead_after * total / k
        if dead.any():
            samples = z.reshape(-1, g, dg).transpose(0, 1)  # (G, M, Dg)
            for gi in torch.nonzero(dead.any(-1)).flatten().tolist():
                idx = torch.nonzero(dead[gi]).flatten()
                pick = torch.randint(0, samples.shape[1], (idx.numel(),), device=z.device)
                self.codebook[gi, idx] = samples[gi, pick]
                self.embed_sum[gi, idx] = samples[gi, pick]
                self.cluster_size[gi, idx] = 1.0
