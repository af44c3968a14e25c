"""Baselines run by the same runtime, on the same models and links as ASTRA.

    sp_fp32, sp_fp16  sequence parallelism exchanging block inputs
    kv_sp             sequence parallelism exchanging keys/values (ring-attention volume)
    tp                Megatron tensor parallelism (two all-reduces per block)
    tp_int8           tp with 8-bit row-quantized (Q80) all-reduces, as distributed-llama
    pp                pipeline parallelism (layers split over ranks) with chunked prefill
The single-device baseline is the unmodified model's own forward.
"""
from __future__ import annotations

import torch

from .pipeline_parallel import PipelineParallel
from .sequence_parallel import SequenceParallel
from .tensor_parallel import TensorParallel

BASELINES = ("sp_fp32", "sp_fp16", "kv_sp", "tp", "tp_int8", "pp")


def build(name: str, model: torch.nn.Module, backend: str | None = None, *, pp_chunks: int = 1):
    """A baseline method object with ``run_rank(inputs, transport, timer=..., logits_to_keep=...)``
    (``pp_chunks``: the prompt's chunk count, for ``pp``)."""
    if name == "sp_fp32":
        return SequenceParallel(model, "x", torch.float32, backend)
    if name == "sp_fp16":
        return SequenceParallel(model, "x", torch.float16, backend)
    if name == "kv_sp":
        return SequenceParallel(model, "kv", torch.float32, backend)
    if name == "tp":
        return TensorParallel(model, backend)
    if name == "tp_int8":
        return TensorParallel(model, backend, q80=True)
    if name == "pp":
        return PipelineParallel(model, pp_chunks, backend=backend)
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")


__all__ = ["BASELINES", "PipelineParallel", "SequenceParallel", "TensorParallel", "build"]
