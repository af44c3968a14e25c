"""Adapter for Hugging Face ``GPT2LMHeadModel`` (causal LM, pre-LN, learned positions)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._optional import require
from .base import BlockWeights, ModelAdapter, Norm


class GPT2Adapter(ModelAdapter):
    causal = True

    def __init__(self, model):
        activations = require("transformers.activations", extra="hf", purpose="the GPT-2 adapter")
        super().__init__(model)
        cfg = model.config
        act = activations.ACT2FN[cfg.activation_function]
        t = model.transformer
        heads = cfg.n_head
        self._blocks = [
            BlockWeights(
                # Conv1D stores (in, out): its transpose is the nn.Linear weight (a view).
                norm1=Norm(b.ln_1.weight, b.ln_1.bias, b.ln_1.eps),
                w_qkv=b.attn.c_attn.weight.t(),
                b_qkv=b.attn.c_attn.bias,
                w_out=b.attn.c_proj.weight.t(),
                b_out=b.attn.c_proj.bias,
                norm2=Norm(b.ln_2.weight, b.ln_2.bias, b.ln_2.eps),
                w_fc1=b.mlp.c_fc.weight.t(),
                b_fc1=b.mlp.c_fc.bias,
                w_fc2=b.mlp.c_proj.weight.t(),
                b_fc2=b.mlp.c_proj.bias,
                act=act,
                heads=heads,
                kv_heads=heads,
                head_dim=cfg.n_embd // heads,
            )
            for b in t.h
        ]
        self._ln_f = Norm(t.ln_f.weight, t.ln_f.bias, t.ln_f.eps)

    @property
    def blocks(self) -> list[BlockWeights]:
        return self._blocks

    def num_tokens(self, inputs: torch.Tensor) -> int:
        return inputs.shape[1]

    def embed(self, inputs: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """inputs: token ids (B, T) -> (B, stop - start, D)."""
        return self.embed_tokens(inputs[:, start:stop], start)

    def check_positions(self, stop: int) -> None:
        limit = self.model.transformer.wpe.num_embeddings
        if stop > limit:
            raise ValueError(f"{stop} positions exceed the model's n_positions={limit}")

    def embed_tokens(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        t = self.model.transformer
        stop = start + ids.shape[1]
        self.check_positions(stop)
        return t.wte(ids) + t.wpe(torch.arange(start, stop, device=ids.device))

    def token_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self._ln_f(hidden), self.model.lm_head.weight)

    def token_outputs_slice(self, hidden: torch.Tensor, part: int, parts: int) -> torch.Tensor:
        w = self.model.lm_head.weight.tensor_split(parts)[part]
        return F.linear(self._ln_f(hidden), w)

    def reference_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=inputs).logits
