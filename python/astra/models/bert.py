"""Adapter for Hugging Face ``BertModel`` (post-LN encoder), e.g. the MiniLM sentence encoder.

Post-LN blocks quantize and send the block input itself. The [CLS] token is an
ordinary token of rank 0 (sentence embeddings are mean-pooled over all tokens,
as all-MiniLM-L6-v2 does), and the per-token outputs are the final hidden states.
"""
from __future__ import annotations

import torch

from .base import BlockWeights, FusedQKV, ModelAdapter, Norm


class BertAdapter(ModelAdapter):
    def __init__(self, model):
        super().__init__(model)
        cfg = model.config
        self._heads = cfg.num_attention_heads
        self._head_dim = cfg.hidden_size // self._heads
        self._qkv = [FusedQKV(l.attention.self.query, l.attention.self.key, l.attention.self.value)
                     for l in model.encoder.layer]
        emb = model.embeddings
        self._emb_norm = Norm(emb.LayerNorm.weight, emb.LayerNorm.bias, emb.LayerNorm.eps)

    @property
    def blocks(self) -> list[BlockWeights]:
        out = []
        for layer, qkv in zip(self.model.encoder.layer, self._qkv):
            w_qkv, b_qkv = qkv.get()
            ln1, ln2 = layer.attention.output.LayerNorm, layer.output.LayerNorm
            out.append(BlockWeights(
                norm1=Norm(ln1.weight, ln1.bias, ln1.eps),
                w_qkv=w_qkv,
                b_qkv=b_qkv,
                w_out=layer.attention.output.dense.weight,
                b_out=layer.attention.output.dense.bias,
                norm2=Norm(ln2.weight, ln2.bias, ln2.eps),
                w_fc1=layer.intermediate.dense.weight,
                b_fc1=layer.intermediate.dense.bias,
                w_fc2=layer.output.dense.weight,
                b_fc2=layer.output.dense.bias,
                act=layer.intermediate.intermediate_act_fn,
                heads=self._heads,
                kv_heads=self._heads,
                head_dim=self._head_dim,
                norm_first=False,
            ))
        return out

    def num_tokens(self, inputs: torch.Tensor) -> int:
        return inputs.shape[1]

    def embed(self, inputs: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return self.embed_tokens(inputs[:, start:stop], start)

    def embed_tokens(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        emb = self.model.embeddings
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        x = emb.word_embeddings(ids) + emb.position_embeddings(pos) + emb.token_type_embeddings(torch.zeros_like(ids))
        return self._emb_norm(x)

    def token_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        """The encoder's final hidden states (B, T, D); mean-pool them for sentence embeddings."""
        return hidden

    def reference_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=inputs).last_hidden_state
