"""``astra.parallelize``: one rank's handle on an ASTRA-parallel model.

Run the same script on every rank (``torchrun``, ``mpirun`` or ``astra run``
spawn them); each calls ``parallelize`` with the same model weights and
codebooks, then calls the result on the *whole* batch. Every rank embeds only
its own chunk of the sequence and exchanges VQ codes with the others.

    par = astra.parallelize(model, books, transport="gloo")
    with par:
        logits = par(input_ids)          # this rank's positions (B, T_r, V), or class logits (B, C)
"""
from __future__ import annotations

from typing import Callable

import torch

import astra_kernels as ak

from .codebooks import Codebooks
from .engine import AstraEngine
from .generate import Generation, Sampling, generate
from .handshake import handshake, setup_digest
from .launch import SETUP_TIMEOUT_S, make_transport
from .transport import Transport


class ParallelModel:
    """An :class:`AstraEngine` bound to this rank's transport."""

    def __init__(self, engine: AstraEngine, transport: Transport):
        self.engine, self.transport = engine, transport

    @property
    def rank(self) -> int:
        return self.transport.rank

    @property
    def world_size(self) -> int:
        return self.transport.world_size

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs``: token ids (B, T) or pixels (B, C, H, W), the same on every rank."""
        return self.engine.run_rank(inputs, self.transport)

    def generate(self, inputs: torch.Tensor, steps: int, sampling: Sampling = Sampling(),
                 on_token: Callable[[torch.Tensor], None] | None = None) -> Generation | None:
        """Distributed prefill, then ``steps`` tokens on the last rank, greedy or by ``sampling``; the
        generation on the last rank, None on the others (see :func:`astra.generate.generate`)."""
        return generate(self.engine, inputs, self.transport, steps, sampling, on_token)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "ParallelModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parallelize(model: torch.nn.Module, codebooks: Codebooks, *, transport: str | Transport = "gloo",
                timeout_s: float = 60.0, setup_timeout_s: float = SETUP_TIMEOUT_S, formulation: str = "auto",
                backend: str | None = None, table_budget_bytes: int = ak.TABLE_BUDGET_BYTES,
                encode: str = "auto", quantize: str | None = None,
                exchange_parts: int = 1, partition: str = "balanced") -> ParallelModel:
    """Wrap an unmodified model for this rank of an N-process job.

    Every rank then checks with the others that they hold the same setup (:mod:`astra.handshake`: weights,
    codebooks, G, K, model, version, ...) and raises :class:`astra.HandshakeError` on all ranks if not.

    Args:
        model: any model :func:`astra.adapt` supports (GPT-2, ViT, BERT, Llama, Mistral, Qwen2, Qwen3, Tiny).
        codebooks: one codebook per block (``astra.calibrate`` or ``Codebooks.load``).
        transport: "gloo", "nccl", "mpi" or "udp" (the launcher's environment names rank and world size),
            or an already created :class:`astra.transport.Transport` (then ``timeout_s`` is unused).
        timeout_s: a silent peer becomes a :class:`astra.PeerError` after this long.
        setup_timeout_s: how long the ranks wait for each other to arrive (the rendezvous and the handshake):
            ranks that calibrate their codebooks may arrive minutes apart.
        formulation, backend, table_budget_bytes, encode, quantize, exchange_parts, partition: as
            :class:`astra.AstraEngine`.
    """
    astra_engine = AstraEngine(model, codebooks, formulation=formulation, backend=backend,
                               table_budget_bytes=table_budget_bytes, encode=encode, quantize=quantize,
                               exchange_parts=exchange_parts, partition=partition)
    created = isinstance(transport, str)
    if created:
        transport = make_transport(transport, timeout_s, setup_timeout_s)
    try:
        handshake(transport, setup_digest(astra_engine, transport.world_size), timeout_s=setup_timeout_s)
    except BaseException:
        if created:
            transport.close()
        raise
    return ParallelModel(astra_engine, transport)
