"""Transport over torch.distributed point-to-point ops: gloo on CPU, NCCL on GPU.

Each exchange posts one ``isend`` per destination and one ``irecv`` per
source, tagged by exchange, so gloo's background threads move the bytes while
the caller computes. Waiting on each receive separately, with a deadline,
tells exactly which peer failed: a crashed peer closes its socket (gloo
raises at once), a hung one runs into the timeout.
"""
from __future__ import annotations

import datetime
import os
import time
import zlib

import torch
import torch.distributed as dist

from .base import ExchangeRecord, Handle, PeerError, Transport


def _tag_number(tag: str) -> int:
    # gloo/NCCL tags are ints; both sides derive the same one from the exchange name.
    return zlib.crc32(tag.encode()) & 0x3FFFFFFF


class _TorchHandle(Handle):
    def __init__(self, transport: "TorchDistTransport", record, timeout_s, sends, recvs):
        super().__init__(record, timeout_s)
        self._t, self._sends, self._recvs = transport, sends, recvs

    def _wait(self) -> dict[int, torch.Tensor]:
        deadline = time.monotonic() + self.timeout_s
        out = {}
        for src, (work, buf) in self._recvs.items():
            out[src] = buf
            self._finish(work, src, deadline)
        for dst, work in self._sends.items():
            self._finish(work, dst, deadline)
        return out

    def _finish(self, work, peer: int, deadline: float) -> None:
        left = max(deadline - time.monotonic(), 1e-3)
        try:
            completed = work.wait(timeout=datetime.timedelta(seconds=left))
        except RuntimeError as exc:
            reason = "timed out" if "Timed out" in str(exc) else str(exc).splitlines()[0]
            raise PeerError(self._t.rank, peer, self.record.tag, f"{reason} (timeout {self.timeout_s:g} s)") from exc
        if completed is False:  # NCCL reports a timeout by returning False
            raise PeerError(self._t.rank, peer, self.record.tag, f"timed out after {self.timeout_s:g} s")


class TorchDistTransport(Transport):
    """torch.distributed transport; ``backend`` is "gloo" (CPU tensors) or "nccl" (CUDA tensors)."""

    def __init__(self, backend: str = "gloo", *, timeout_s: float = 60.0, init_method: str | None = None,
                 rank: int | None = None, world_size: int | None = None):
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"torch.distributed backend must be 'gloo' or 'nccl', got {backend!r}")
        if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
            raise RuntimeError("NCCL needs CUDA devices and a torch build with NCCL; use backend='gloo' on CPU")
        if not dist.is_initialized():
            rank = int(os.environ["RANK"]) if rank is None else rank
            world_size = int(os.environ["WORLD_SIZE"]) if world_size is None else world_size
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
            dist.init_process_group(
                backend, init_method=init_method or "env://", rank=rank, world_size=world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        super().__init__(dist.get_rank(), dist.get_world_size(), timeout_s)
        self.name = backend
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def _post_receives(self, recv_sizes: dict[int, int], tag: str):
        recvs = {}
        for src, size in recv_sizes.items():
            buf = torch.empty(size, dtype=torch.uint8, device=self.device)
            recvs[src] = (dist.irecv(buf, src, tag=_tag_number(tag)), buf)
        return recvs

    def _post(self, payload, send_to, receives, record: ExchangeRecord, timeout_s: float) -> Handle:
        payload = payload.to(self.device)
        sends = {dst: dist.isend(payload, dst, tag=_tag_number(record.tag)) for dst in send_to}
        return _TorchHandle(self, record, timeout_s, sends, receives or {})

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
