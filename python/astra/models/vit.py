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

from .base import BlockWeights, ModelAdapter, Norm


class ViTAdapter(ModelAdapter):
    class_tokens = 1

    def __init__(self, model):
        super().__init__(model)
        cfg = model.config
        heads = cfg.num_attention_heads
        self._blocks = []
        for layer in model.vit.encoder.layer:
            att = layer.attention.attention
            qkv_w = torch.cat([att.query.weight, att.key.weight, att.value.weight]).detach()
            qkv_b = None
            if att.query.bias is not None:
                qkv_b = torch.cat([att.query.bias, att.key.bias, att.value.bias]).detach()
            self._blocks.append(
                BlockWeights(
                    norm1=Norm(layer.layernorm_before.weight, layer.layernorm_before.bias, layer.layernorm_before.eps),
                    w_qkv=qkv_w,
                    b_qkv=qkv_b,
                    w_out=layer.attention.output.dense.weight,
                    b_out=layer.attention.output.dense.bias,
                    norm2=Norm(layer.layernorm_after.weight, layer.layernorm_after.bias, layer.layernorm_after.eps),
                    w_fc1=layer.intermediate.dense.weight,
                    b_fc1=layer.intermediate.dense.bias,
                    w_fc2=layer.output.dense.weight,
                    b_fc2=layer.output.dense.bias,
                    act=layer.intermediate.intermediate_act_fn,
                    heads=heads,
                    kv_heads=heads,
                    head_dim=cfg.hidden_size // heads,
                )
            )
        ln = model.vit.layernorm
        self._ln = Norm(ln.weight, ln.bias, ln.eps)
        self._patch = cfg.patch_size

    @property
    def blocks(self) -> list[BlockWeights]:
        return self._blocks

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
