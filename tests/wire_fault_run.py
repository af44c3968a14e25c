"""``astra run`` with rank 1 misbehaving, for tests/test_wire_faults.py: ``python tests/wire_fault_run.py ARGS``
(ARGS as ``python -m astra ARGS``; under mpirun, or spawning its own gloo ranks, which import this module too).

WIRE_FAULT (environment) says how rank 1 misbehaves: ``corrupt`` (flips a bit of its block1 frames),
``hang`` (never sends block1) or ``codebooks`` (holds other codebooks than the other ranks).
"""
from __future__ import annotations

import os
import sys
import time

import astra_cli.run as run
from astra.codebooks import Codebooks
from astra.launch import rank_env
from astra.transport.mpi import MPITransport
from astra.transport.torch_dist import TorchDistTransport
from astra_cli.main import main

FAULT = os.environ["WIRE_FAULT"]


def _faulty_send(send):
    def send_frames(self, frames, receives, tag):
        if self.rank == 1 and tag == "block1":
            if FAULT == "corrupt":
                frames = {dst: f.clone() for dst, f in frames.items()}
                for f in frames.values():
                    f[40] ^= 0x80
            elif FAULT == "hang":
                time.sleep(3600)
        return send(self, frames, receives, tag)

    return send_frames


for _cls in (TorchDistTransport, MPITransport):
    _cls._send_frames = _faulty_send(_cls._send_frames)

_load_codebooks = run.load_codebooks


def _other_codebooks(model, cfg, verbose) -> Codebooks:
    books = _load_codebooks(model, cfg, verbose)
    if FAULT == "codebooks" and rank_env().rank == 1:
        books = Codebooks([t + 1e-3 for t in books.tensors])
    return books


run.load_codebooks = _other_codebooks

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
