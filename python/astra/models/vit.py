"""Adapter for Hugging Face ``ViTForImageClassification`` (pre-LN encoder with a class token).

With ASTRA every rank keeps its own copy of the class token (Distributed
Class Tokens): it attends to the rank's local patches at full precision and
to remote patches through their codes. The final class-token hidden states
(before the last LayerNorm) are averaged over ranks, then the model's own
LayerNorm and classifier run on the average.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import BlockWeights, FusedQKV, ModelAdapter, Norm


class ViTAdapter(ModelAdapter):
    class_tokens = 1

    def __init__(self, model):
        super().__init__(model)
        cfg = model.config
        self._heads = cfg.num_attention_heads
        self._head_dim = cfg.hidden_size // self._heads
        self._qkv = [FusedQKV(*self._projections(layer)[:3]) for layer in self._layers(model)]
        ln = model.vit.layernorm
        self._ln = Norm(ln.weight, ln.bias, ln.eps)
        self._patch = cfg.patch_size

    @staticmethod
    def _layers(model):
        vit = model.vit
        return vit.layers if hasattr(vit, "layers") else vit.encoder.layer  # transformers >= 5.20 / older

    @staticmethod
    def _projections(layer):
        """(q, k, v, out, fc1, fc2, act) of one layer, in either transformers layout."""
        att = layer.attention
        if hasattr(att, "q_proj"):  # newer layout: q/k/v/o_proj and an mlp module
            return att.q_proj, att.k_proj, att.v_proj, att.o_proj, layer.mlp.fc1, layer.mlp.fc2, layer.mlp.activation_fn
        return (att.attention.query, att.attention.key, att.attention.value, att.output.dense,
                layer.intermediate.dense, layer.output.dense, layer.intermediate.intermediate_act_fn)

    def _block(self, layer, qkv: FusedQKV) -> BlockWeights:
        _, _, _, o, fc1, fc2, act = self._projections(layer)
        w_qkv, b_qkv = qkv.get()
        before, after = layer.layernorm_before, layer.layernorm_after
        return BlockWeights(
            norm1=Norm(before.weight, before.bias, before.eps),
            w_qkv=w_qkv,
            b_qkv=b_qkv,
            w_out=o.weight,
            b_out=o.bias,
            norm2=Norm(after.weight, after.bias, after.eps),
            w_fc1=fc1.weight,
            b_fc1=fc1.bias,
            w_fc2=fc2.weight,
            b_fc2=fc2.bias,
            act=act,
            heads=self._heads,
            kv_heads=self._heads,
            head_dim=self._head_dim,
        )

    @property
    def blocks(self) -> list[BlockWeights]:
        return [self._block(layer, qkv) for layer, qkv in zip(self._layers(self.model), self._qkv)]

    def num_tokens(self, inputs: torch.Tensor) -> int:
        return (inputs.shape[2] // self._patch) * (inputs.shape[3] // self._patch)

    def embed(self, inputs: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """inputs: pixels (B, C, H, W) -> patch embeddings (B, stop - start, D) of patches [start, stop)."""
        emb = self.model.vit.embeddings
        conv = emb.patch_embeddings.projection
        p = self._patch
        expected = emb.position_embeddings.shape[1] - 1
        if self.num_tokens(inputs) != expected:
            raise ValueError(f"image gives {self.num_tokens(inputs)} patches but the model has {expected} positions")
        # Only this chunk's patches: (B, C*p*p, T) columns in row-major patch order, as the conv sees them.
        cols = F.unfold(inputs, kernel_size=p, stride=p)[:, :, start:stop].transpose(1, 2)
        x = F.linear(cols, conv.weight.reshape(conv.out_channels, -1), conv.bias)
        return x + emb.position_embeddings[:, 1 + start : 1 + stop]

    def class_token(self, batch: int) -> torch.Tensor:
        emb = self.model.vit.embeddings
        return (emb.cls_token + emb.position_embeddings[:, :1]).expand(batch, -1, -1)

    def token_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        raise TypeError("ViT classifies from the class token only; it has no per-token outputs")

    def class_outputs(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(self._ln(pooled))

    def reference_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=inputs).logits
