"""Adapter for unmodified Hugging Face decoder LLMs: ``LlamaForCausalLM``, ``MistralForCausalLM``,
``Qwen2ForCausalLM`` and ``Qwen3ForCausalLM``.

The four share one block: RMSNorm before attention and before the MLP, q/k/v projections with
grouped-query heads (Hkv <= H; the head width d may differ from D / H), rotary positions (RoPE,
rotate-half layout), a gated SiLU MLP (down(act(gate(x)) * up(x))), and a final RMSNorm before the LM
head (tied to the token embeddings or not). What differs is read from the model's own modules:

    Qwen2     biases on q/k/v (whatever the projections carry is used, as for attention_bias/mlp_bias)
    Qwen3     per-head RMSNorm of the queries and keys (q_norm, k_norm) before the rotation
    Mistral   a sliding window over every layer (``config.sliding_window``); Qwen2/Qwen3 slide the
              layers whose attention module has a ``sliding_window``

The rotation's (cos, sin) rows come from the model's own rotary embedding module (``model.model.rotary_emb``),
so rope_theta and rope scaling (e.g. Llama 3's ``llama3`` type) give exactly the model's frequencies. Ranks
see only part of the sequence, so only rope types whose frequencies do not depend on the sequence length
are reproducible (:data:`STATIC_ROPE_TYPES`); the others are refused. Sliding-window attention is not
implemented: positions beyond the window are refused (within it, the window changes nothing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import BlockWeights, FusedQKV, ModelAdapter, Norm

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
# rope types (Hugging Face's ROPE_INIT_FUNCTIONS names, "default": rope_theta alone) whose frequencies and
# attention scaling are fixed once for all positions; "dynamic" and "longrope" change with the sequence length
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _rms(norm: torch.nn.Module) -> Norm:
    return Norm(norm.weight, None, norm.variance_epsilon, kind="rms")


def _sliding_window(model: torch.nn.Module) -> int | None:
    """The narrowest sliding window of any layer, None when every layer attends to all earlier tokens."""
    if type(model).__name__ == "MistralForCausalLM":
        return model.config.sliding_window
    windows = [w for layer in model.model.layers if (w := getattr(layer.self_attn, "sliding_window", None))]
    return min(windows, default=None)


class DecoderAdapter(ModelAdapter):
    causal = True

    def __init__(self, model: torch.nn.Module):
        name = type(model).__name__
        if name not in SUPPORTED:
            raise TypeError(f"DecoderAdapter adapts {', '.join(SUPPORTED)}, not {name}")
        super().__init__(model)
        self._rotary = model.model.rotary_emb
        rope_type = getattr(self._rotary, "rope_type", "default")
        if rope_type not in STATIC_ROPE_TYPES:
            raise ValueError(f"{name} uses rope type {rope_type!r}, whose frequencies depend on the sequence length "
                             f"(no rank sees all of it); ASTRA reproduces rope types {', '.join(STATIC_ROPE_TYPES)}")
        self.sliding_window = _sliding_window(model)
        layers = model.model.layers
        self._qkv = [FusedQKV(a.q_proj, a.k_proj, a.v_proj) for a in (layer.self_attn for layer in layers)]
        self._norm = _rms(model.model.norm)

    def _block(self, layer: torch.nn.Module, qkv: FusedQKV) -> BlockWeights:
        attn, mlp = layer.self_attn, layer.mlp
        w_qkv, b_qkv = qkv.get()
        d = attn.head_dim
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        return BlockWeights(
            norm1=_rms(layer.input_layernorm),
            w_qkv=w_qkv,
            b_qkv=b_qkv,
            w_out=attn.o_proj.weight,
            b_out=attn.o_proj.bias,
            norm2=_rms(layer.post_attention_layernorm),
            w_fc1=mlp.up_proj.weight,
            b_fc1=mlp.up_proj.bias,
            w_fc2=mlp.down_proj.weight,
            b_fc2=mlp.down_proj.bias,
            act=mlp.act_fn,
            heads=attn.q_proj.out_features // d,
            kv_heads=attn.k_proj.out_features // d,
            head_dim=d,
            w_gate=mlp.gate_proj.weight,
            b_gate=mlp.gate_proj.bias,
            q_norm=None if q_norm is None else _rms(q_norm),
            k_norm=None if k_norm is None else _rms(k_norm),
            rotary=True,
        )

    @property
    def blocks(self) -> list[BlockWeights]:
        return [self._block(layer, qkv) for layer, qkv in zip(self.model.model.layers, self._qkv)]

    def num_tokens(self, inputs: torch.Tensor) -> int:
        return inputs.shape[1]

    def check_positions(self, stop: int) -> None:
        if self.sliding_window is not None and stop > self.sliding_window:
            raise ValueError(f"{type(self.model).__name__}: {stop} positions exceed its sliding window of "
                             f"{self.sliding_window} tokens; ASTRA attends to all earlier tokens, which equals "
                             "sliding-window attention only within the window")

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.model.model.embed_tokens.weight  # the model's rotary rows come in its compute dtype
        probe = torch.empty(0, dtype=weight.dtype, device=weight.device)
        cos, sin = self._rotary(probe, positions.to(weight.device)[None])
        return cos[0], sin[0]

    def embed(self, inputs: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """inputs: token ids (B, T) -> (B, stop - start, D)."""
        return self.embed_tokens(inputs[:, start:stop], start)

    def embed_tokens(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        self.check_positions(start + ids.shape[1])
        return self.model.model.embed_tokens(ids)

    def token_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.lm_head
        return F.linear(self._norm(hidden), head.weight, head.bias)

    def token_outputs_slice(self, hidden: torch.Tensor, part: int, parts: int) -> torch.Tensor:
        head = self.model.lm_head
        bias = None if head.bias is None else head.bias.tensor_split(parts)[part]
        return F.linear(self._norm(hidden), head.weight.tensor_split(parts)[part], bias)

    def reference_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=inputs).logits
