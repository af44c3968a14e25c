"""Transport over MPI through mpi4py (e.g. Open MPI from the OS packages).

Non-blocking ``Isend``/``Irecv`` per peer on numpy views of the frames. Each
receive buffer is one byte longer than its frame, and MPI reports the size of
every message that arrived (``Status.Get_count``), so a short or long
message is told exactly; one that does not fit is MPI's truncation error,
reported as the same long message. MPI has no timed wait, so the handle
polls ``Test`` until a deadline; with ``mpi_yield_when_idle`` (set by
``astra``'s launch docs) polling costs nothing measurable next to a
Transformer block. :meth:`MPITransport.abort` is ``MPI_Abort``: a failed rank
ends the whole job instead of leaving its peers to time out.
"""
from __future__ import annotations

import time
import zlib

import torch

from .._optional import MissingDependency, require
from . import framing
from .base import FramedTransport, FrameWait, PeerError

PURPOSE = "the MPI transport"
np = require("numpy", extra="mpi", purpose=PURPOSE)


def _tag_number(tag: str) -> int:
    # MPI guarantees tags up to 32767; two exchange names with one tag number are told apart by the frame's
    # exchange id.
    return zlib.crc32(tag.encode()) & 0x7FFF


class _MPIFrames(FrameWait):
    def __init__(self, transport: "MPITransport", tag: str, sends: dict, recvs: dict, frames: dict):
        self._t, self._tag, self._sends, self._recvs = transport, tag, sends, recvs
        self._frames = frames  # the send buffers must outlive the requests

    def wait(self, timeout_s: float) -> dict[int, tuple[torch.Tensor, int | None]]:
        from mpi4py import MPI

        deadline = time.monotonic() + timeout_s
        pending = [(src, req, status, buf.size - 1) for src, (req, buf, status) in self._recvs.items()]
        pending += [(dst, req, None, None) for dst, req in self._sends.items()]
        spins = 0
        while pending:
            still = []
            for peer, req, status, frame_bytes in pending:
                try:
                    done = req.Test(status)
                except MPI.Exception as exc:
                    if frame_bytes is not None and exc.Get_error_class() == MPI.ERR_TRUNCATE:
                        raise PeerError(self._t.rank, peer, self._tag, framing.long_message(frame_bytes)) from None
                    raise PeerError(self._t.rank, peer, self._tag, f"MPI error: {exc.Get_error_string()}") from None
                if not done:
                    still.append((peer, req, status, frame_bytes))
            pending = still
            if not pending:
                break
            if time.monotonic() > deadline:
                raise PeerError(self._t.rank, pending[0][0], self._tag, f"timed out after {timeout_s:g} s")
            spins += 1
            time.sleep(0 if spins < 200 else 1e-4)  # spin briefly, then yield the core
        return {src: (torch.from_numpy(buf), status.Get_count(MPI.BYTE))
                for src, (_, buf, status) in self._recvs.items()}


class MPITransport(FramedTransport):
    """MPI transport on ``comm`` (default ``MPI.COMM_WORLD``; launch with mpirun)."""

    name = "mpi"

    def __init__(self, *, timeout_s: float = 60.0, comm=None):
        try:
            MPI = require("mpi4py.MPI", extra="mpi", purpose=PURPOSE)
        except MissingDependency:
            raise
        except ImportError as exc:  # mpi4py is installed, the MPI library it loads is not
            raise RuntimeError(f"{PURPOSE} needs an MPI library (Debian: apt-get install openmpi-bin libopenmpi-dev): "
                               f"{exc}") from exc
        self._mpi = MPI
        self._comm = MPI.COMM_WORLD if comm is None else comm
        super().__init__(self._comm.Get_rank(), self._comm.Get_size(), timeout_s)

    def _receive_frames(self, frame_sizes: dict[int, int], tag: str):
        recvs = {}
        for src, size in frame_sizes.items():
            buf = np.zeros(size + 1, dtype=np.uint8)  # one byte of room: a longer message shows in its count
            recvs[src] = (self._call(self._comm.Irecv, buf, src, tag), buf, self._mpi.Status())
        return recvs

    def _send_frames(self, frames: dict[int, torch.Tensor], receives, tag: str) -> FrameWait:
        sends = {dst: self._call(self._comm.Isend, frame.numpy(), dst, tag) for dst, frame in frames.items()}
        return _MPIFrames(self, tag, sends, receives or {}, frames)

    def _call(self, op, buf, peer: int, tag: str):
        """Post ``op`` (Isend/Irecv) with ``peer``; an MPI error is a PeerError naming it."""
        try:
            return op(buf, peer, tag=_tag_number(tag))
        except self._mpi.Exception as exc:
            raise PeerError(self.rank, peer, tag, f"MPI error: {exc.Get_error_string()}") from None

    def abort(self, code: int) -> None:
        self._comm.Abort(code)
