"""A uniform view of a Transformer for the ASTRA runtime.

The runtime never calls a model's own ``forward``: it runs the blocks itself,
split by sequence, from the weights that an adapter exposes (views of the
model's parameters, no copies except where a fused QKV weight must be built).
An adapter tells the runtime how to embed a chunk of tokens, whether there is
a class token, whether attention is causal, and how to turn final hidden
states into outputs.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

NORM_KINDS = ("layer", "rms")


@dataclass
class Norm:
    """A normalization over the last dimension: LayerNorm (``kind="layer"``) or RMSNorm (``kind="rms"``,
    computed as Hugging Face's Llama-family RMSNorm does: in fp32, cast back, then scaled; no bias)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float
    kind: str = "layer"

    def __post_init__(self):
        if self.kind not in NORM_KINDS:
            raise ValueError(f"norm kind must be one of {', '.join(NORM_KINDS)}, got {self.kind!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


@dataclass
class BlockWeights:
    """One Transformer block.

    w_qkv: ((H + 2*Hkv) * d, D), rows ordered q, k, v, as nn.Linear weights
    (d may differ from D / H).
    norm_first: pre-LN (GPT-2, ViT, Llama: x + attn(norm1(x))) or post-LN (BERT:
    norm1(x + attn(x))). The attention input is norm1(x) for pre-LN, x for post-LN.
    MLP: fc2(act(fc1(x))), or with ``w_gate`` the gated MLP (SwiGLU for act = SiLU)
    fc2(act(gate(x)) * fc1(x)), fc1 being Hugging Face's up_proj and fc2 its down_proj.
    q_norm, k_norm: per-head norms over d (Qwen3), applied to the projected
    queries and keys before any rotation.
    rotary: queries and keys are rotated by their global positions (RoPE,
    rotate-half layout) after the per-head norms; values never are. The
    rotation's (cos, sin) rows come from the model (:meth:`ModelAdapter.rotary`).
    """

    norm1: Norm
    w_qkv: torch.Tensor
    b_qkv: torch.Tensor | None
    w_out: torch.Tensor  # (D, H*d)
    b_out: torch.Tensor | None
    norm2: Norm
    w_fc1: torch.Tensor  # (F, D)
    b_fc1: torch.Tensor | None
    w_fc2: torch.Tensor  # (D, F)
    b_fc2: torch.Tensor | None
    act: Callable[[torch.Tensor], torch.Tensor]
    heads: int
    kv_heads: int
    head_dim: int
    norm_first: bool = True
    w_gate: torch.Tensor | None = None  # (F, D): the gated MLP's gate projection
    b_gate: torch.Tensor | None = None
    q_norm: Norm | None = None
    k_norm: Norm | None = None
    rotary: bool = False

    @property
    def dim(self) -> int:
        return self.w_qkv.shape[1]

    @property
    def kv_dim(self) -> int:
        """Hkv*d: the width of one token's keys (and of its values)."""
        return self.kv_heads * self.head_dim

    @property
    def macs_per_token(self) -> int:
        """Multiply-adds of the block's matrix products for one token (q/k/v, output projection, MLP)."""
        weights = (self.w_qkv, self.w_out, self.w_fc1, self.w_fc2, self.w_gate)
        return sum(w.numel() for w in weights if w is not None)

    @property
    def macs_per_pair(self) -> int:
        """Multiply-adds of attention for one (query, key) pair: q.k and p.v over every query head."""
        return 2 * self.heads * self.head_dim

    def _slice(self, t: torch.Tensor | None, part: str) -> torch.Tensor | None:
        if t is None:
            return None
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        start, size = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}[part]
        return t[start : start + size]

    @property
    def w_k(self) -> torch.Tensor:
        return self._slice(self.w_qkv, "k")

    @property
    def w_v(self) -> torch.Tensor:
        return self._slice(self.w_qkv, "v")

    @property
    def w_kv(self) -> torch.Tensor:
        """(2 * Hkv*d, D): the K and V rows of w_qkv, one GEMM for both."""
        return self.w_qkv[self.heads * self.head_dim:]

    @property
    def b_kv(self) -> torch.Tensor | None:
        return None if self.b_qkv is None else self.b_qkv[self.heads * self.head_dim:]

    @property
    def b_k(self) -> torch.Tensor | None:
        return self._slice(self.b_qkv, "k")

    @property
    def b_v(self) -> torch.Tensor | None:
        return self._slice(self.b_qkv, "v")

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        up = F.linear(x, self.w_fc1, self.b_fc1)
        if self.w_gate is None:
            return F.linear(self.act(up), self.w_fc2, self.b_fc2)
        return F.linear(self.act(F.linear(x, self.w_gate, self.b_gate)) * up, self.w_fc2, self.b_fc2)


class FusedQKV:
    """One (3D, D) QKV weight from separate q, k, v ``nn.Linear`` layers.

    Under autograd (training) every access concatenates afresh, so gradients
    reach the layers; otherwise the concatenation is cached until a parameter
    changes (tensor versions), so inference pays for it once.
    """

    def __init__(self, q: torch.nn.Linear, k: torch.nn.Linear, v: torch.nn.Linear):
        self._layers = (q, k, v)
        self._key = None
        self._cached: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def _params(self) -> list[torch.Tensor]:
        return [p for layer in self._layers for p in (layer.weight, layer.bias) if p is not None]

    def _cat(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = self._layers
        bias = None if q.bias is None else torch.cat([q.bias, k.bias, v.bias])
        return torch.cat([q.weight, k.weight, v.weight]), bias

    def get(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        params = self._params()
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self._cat()
        key = tuple((p.data_ptr(), p._version) for p in params)
        if key != self._key:
            with torch.no_grad():
                self._cached = self._cat()
            self._key = key
        return self._cached


class ModelAdapter(ABC):
    """What the runtime needs to know about one model family."""

    #: attention among tokens is causal (decoder LM)
    causal: bool = False
    #: class tokens kept on every rank (Distributed Class Tokens), 0 or 1
    class_tokens: int = 0

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @property
    @abstractmethod
    def blocks(self) -> list[BlockWeights]: ...

    @property
    def dim(self) -> int:
        return self.blocks[0].dim

    def quantized_dim(self, quantize: str) -> int:
        """Width of one quantized vector per token: D (``quantize="input"``: the attention input) or
        Hkv*d (``quantize="kv"``: the pre-rotation key, and the value, each)."""
        return self.dim if quantize == "input" else self.blocks[0].kv_dim

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The rotary embedding (cos, sin), each (T, d), of global ``positions`` (T,) int64, exactly as the
        model computes it; None for models without rotary positions."""
        return None

    def check_positions(self, stop: int) -> None:
        """Raise ValueError unless the runtime reproduces the model on positions [0, ``stop``)."""

    @abstractmethod
    def num_tokens(self, inputs: torch.Tensor) -> int:
        """Sequence length T (excluding class tokens) of a batch of inputs."""

    @abstractmethod
    def embed(self, inputs: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Hidden states (B, stop - start, D) of token positions [start, stop)."""

    def embed_tokens(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Language models: hidden states (B, t, D) of token ids (B, t) at positions [start, start + t)."""
        raise TypeError(f"{type(self).__name__} does not embed token ids (not a language model)")

    def class_token(self, batch: int) -> torch.Tensor:
        """(B, class_tokens, D): the class token(s) with their position embedding."""
        raise TypeError(f"{type(self).__name__} has no class token")

    @abstractmethod
    def token_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-token outputs of final hidden states (B, T, D), e.g. LM logits (B, T, V)."""

    def token_outputs_slice(self, hidden: torch.Tensor, part: int, parts: int) -> torch.Tensor:
        """Output features [part-th of ``parts`` near-equal slices] of :meth:`token_outputs`
        (a vocabulary-parallel LM head), computing only that slice."""
        raise TypeError(f"{type(self).__name__} has no per-token output head")

    def class_outputs(self, pooled: torch.Tensor) -> torch.Tensor:
        """Outputs (B, C) from the class-token state averaged over ranks (B, D)."""
        raise TypeError(f"{type(self).__name__} has no class token")

    @abstractmethod
    def reference_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The unmodified model's own forward output on one device (logits)."""
