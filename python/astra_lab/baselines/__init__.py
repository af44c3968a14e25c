"""Baselines run by the same runtime, on the same models and links as ASTRA.

    sp_fp32, sp_fp16  sequence parallelism exchanging block inputs
    kv_sp             sequence parallelism exchanging keys/values (ring-attention volume)
    tp                Megatron tensor parallelism (two all-reduces per block)
The single-device baseline is the unmodified model's own forward.
"""
from __future__ import annotations

import torch

from .sequence_parallel import SequenceParallel
from .tensor_parallel import TensorParallel

BASELINES = ("sp_fp32", "sp_fp16", "kv_sp", "tp")


def build(name: str, model: torch.nn.Module, backend: str | None = None):
    """A baseline method object with ``run_rank(inputs, transport, timer=...)``."""
    if name == "sp_fp32":
        return SequenceParallel(model, "x", torch.float32, backend)
    if name == "sp_fp16":
        return SequenceParallel(model, "x", torch.float16, backend)
    if name == "kv_sp":
        return SequenceParallel(model, "kv", torch.float32, backend)
    if name == "tp":
        return TensorParallel(model, backend)
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")


__all__ = ["BASELINES", "SequenceParallel", "TensorParallel", "build"]
