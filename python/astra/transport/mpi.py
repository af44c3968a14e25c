"""Transport over MPI through mpi4py (e.g. Open MPI from the OS packages).

Non-blocking ``Isend``/``Irecv`` per peer on numpy views of the payloads.
MPI has no timed wait, so the handle polls ``Test`` until a deadline; with
``mpi_yield_when_idle`` (set by ``astra``'s launch docs) polling costs
nothing measurable next to a Transformer block.
"""
from __future__ import annotations

import time
import zlib

import torch

from .._optional import MissingDependency, require
from .base import ExchangeRecord, Handle, PeerError, Transport

PURPOSE = "the MPI transport"
np = require("numpy", extra="mpi", purpose=PURPOSE)


def _tag_number(tag: str) -> int:
    return zlib.crc32(tag.encode()) & 0x7FFF  # MPI guarantees tags up to 32767


class _MPIHandle(Handle):
    def __init__(self, transport: "MPITransport", record, timeout_s, sends, recvs):
        super().__init__(record, timeout_s)
        self._t, self._sends, self._recvs = transport, sends, recvs

    def _wait(self) -> dict[int, torch.Tensor]:
        deadline = time.monotonic() + self.timeout_s
        pending = [(src, req) for src, (req, _) in self._recvs.items()] + list(self._sends.items())
        spins = 0
        while pending:
            pending = [(peer, req) for peer, req in pending if not req.Test()]
            if not pending:
                break
            if time.monotonic() > deadline:
                peer = pending[0][0]
                raise PeerError(self._t.rank, peer, self.record.tag, f"timed out after {self.timeout_s:g} s")
            spins += 1
            time.sleep(0 if spins < 200 else 1e-4)  # spin briefly, then yield the core
        return {src: torch.from_numpy(buf) for src, (_, buf) in self._recvs.items()}


class MPITransport(Transport):
    """MPI transport on ``MPI.COMM_WORLD`` (launch with mpirun)."""

    name = "mpi"

    def __init__(self, *, timeout_s: float = 60.0):
        try:
            MPI = require("mpi4py.MPI", extra="mpi", purpose=PURPOSE)
        except MissingDependency:
            raise
        except ImportError as exc:  # mpi4py is installed, the MPI library it loads is not
            raise RuntimeError(f"{PURPOSE} needs an MPI library (Debian: apt-get install openmpi-bin libopenmpi-dev): "
                               f"{exc}") from exc
        self._comm = MPI.COMM_WORLD
        super().__init__(self._comm.Get_rank(), self._comm.Get_size(), timeout_s)

    def _post_receives(self, recv_sizes: dict[int, int], tag: str):
        recvs = {}
        for src, size in recv_sizes.items():
            buf = np.empty(size, dtype=np.uint8)
            recvs[src] = (self._comm.Irecv(buf, source=src, tag=_tag_number(tag)), buf)
        return recvs

    def _post(self, payload, send_to, receives, record: ExchangeRecord, timeout_s: float) -> Handle:
        data = np.ascontiguousarray(payload.cpu().numpy())
        sends = {dst: self._comm.Isend(data, dest=dst, tag=_tag_number(record.tag)) for dst in send_to}
        handle = _MPIHandle(self, record, timeout_s, sends, receives or {})
        handle._keepalive = data  # the send buffer must outlive the requests
        return handle
