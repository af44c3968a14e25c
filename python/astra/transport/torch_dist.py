"""Transport over torch.distributed point-to-point ops: gloo on CPU, NCCL on GPU.

gloo: each exchange posts one ``isend`` per destination and one ``irecv`` per
source, tagged by exchange, so gloo's background threads move the bytes while
the caller computes, and receives can be posted ahead of their exchange.
Waiting on each receive separately, with a deadline, tells exactly which peer
failed: a crashed peer closes its socket (gloo raises at once), a hung one
runs into the timeout. gloo completes a message shorter than its receive
buffer without saying how long it was, so every receive buffer has one frame
of room with guard bytes (:func:`.framing.receive_buffer`) and the frame's
header and checksum tell the rest. (A message longer than even that makes
gloo abort the receiving process, which its peers then see as a closed
connection.)

NCCL (``grouped``): NCCL ignores tags and may deadlock on a lone ``irecv``
followed by an ``isend`` to the same peer, so each exchange is one
``batch_isend_irecv`` group holding all its receives and sends, posted when
the exchange is; messages between two ranks then match in posting order,
and the frame's exchange id and sequence number check that order. Frames are
built and checked on the host (a copy each way per message); NCCL needs the
sizes of a send and its receive to match, so its receive buffers have no
room, and a message of another size is NCCL's error or a timeout. The
first exchange of every NCCL transport is a barrier of all ranks, as
``batch_isend_irecv`` requires.
"""
from __future__ import annotations

import datetime
import os
import re
import time
import zlib

import torch
import torch.distributed as dist

from . import framing
from .base import FramedTransport, FrameWait, PeerError


def _reason(exc: BaseException) -> str:
    """The library's error in one line, without gloo's source location and advice to check the remote's logs."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"^\[[^\]]*\] ", "", text).split(" This is typically caused by")[0]


def _tag_number(tag: str) -> int:
    # gloo/NCCL tags are ints; both sides derive the same one from the exchange name.
    return zlib.crc32(tag.encode()) & 0x3FFFFFFF


def _peer_error(rank: int, peers: list[int], tag: str, reason: str) -> PeerError:
    """The error of a request with ``peers``: one names its peer; a group (NCCL) completes as one, so its error
    names every rank in it."""
    peers = sorted(set(peers))
    if len(peers) == 1:
        return PeerError(rank, peers[0], tag, reason)
    return PeerError(rank, None, tag, f"{reason} (ranks {', '.join(map(str, peers))}, one group)")


class _TorchFrames(FrameWait):
    """``parts``: (peers, work) pairs, one per request (or one for a whole NCCL group)."""

    def __init__(self, transport: "TorchDistTransport", tag: str, parts: list[tuple[list[int], object]],
                 buffers: dict[int, torch.Tensor], frames: dict[int, torch.Tensor]):
        self._t, self._tag, self._parts, self._buffers = transport, tag, parts, buffers
        self._frames = frames  # the send buffers must outlive the requests

    def wait(self, timeout_s: float) -> dict[int, tuple[torch.Tensor, int | None]]:
        deadline = time.monotonic() + timeout_s
        for peers, work in self._parts:
            self._finish(work, peers, deadline, timeout_s)
        return {src: (buf.cpu(), None) for src, buf in self._buffers.items()}

    def _finish(self, work, peers: list[int], deadline: float, timeout_s: float) -> None:
        left = max(deadline - time.monotonic(), 1e-3)
        try:
            completed = work.wait(timeout=datetime.timedelta(seconds=left))
        except RuntimeError as exc:
            reason = f"timed out after {timeout_s:g} s" if "Timed out" in str(exc) else _reason(exc)
            raise _peer_error(self._t.rank, peers, self._tag, reason) from exc
        if completed is False:  # NCCL reports a timeout by returning False
            raise _peer_error(self._t.rank, peers, self._tag, f"timed out after {timeout_s:g} s")


class TorchDistTransport(FramedTransport):
    """torch.distributed transport; ``backend`` is "gloo" (CPU tensors) or "nccl" (CUDA tensors).

    ``setup_timeout_s`` bounds the rendezvous of the ranks (default: ``timeout_s``); the exchanges have their own
    timeouts."""

    def __init__(self, backend: str = "gloo", *, timeout_s: float = 60.0, setup_timeout_s: float | None = None,
                 init_method: str | None = None, rank: int | None = None, world_size: int | None = None):
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
                timeout=datetime.timedelta(seconds=setup_timeout_s or timeout_s),
            )
        super().__init__(dist.get_rank(), dist.get_world_size(), timeout_s)
        self.name = backend
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        #: post each exchange as one batch_isend_irecv group (NCCL needs it; gloo takes either)
        self.grouped = backend == "nccl"
        self._room = backend == "gloo"  # receive buffers with room behind the frame (NCCL needs exact sizes)
        if self.grouped:
            self.barrier("connect", timeout_s=setup_timeout_s or timeout_s)

    def _receive_frames(self, frame_sizes: dict[int, int], tag: str):
        if self.grouped:  # posted with the exchange's sends, as one group
            return {src: (None, framing.receive_buffer(size, device=self.device, room=self._room))
                    for src, size in frame_sizes.items()}
        recvs = {}
        for src, size in frame_sizes.items():
            buf = framing.receive_buffer(size, room=self._room)
            recvs[src] = (self._call(dist.irecv, buf, [src], tag), buf)
        return recvs

    def _send_frames(self, frames: dict[int, torch.Tensor], receives, tag: str) -> FrameWait:
        receives = receives or {}
        buffers = {src: buf for src, (_, buf) in receives.items()}
        if self.grouped:
            frames = {dst: frame.to(self.device) for dst, frame in frames.items()}
            peers = [src for src in receives] + [dst for dst in frames]
            ops = [dist.P2POp(dist.irecv, buf, src, tag=_tag_number(tag)) for src, buf in buffers.items()]
            ops += [dist.P2POp(dist.isend, frame, dst, tag=_tag_number(tag)) for dst, frame in frames.items()]
            works = self._call(dist.batch_isend_irecv, ops, peers, tag) if ops else []
            parts = [([p], w) for p, w in zip(peers, works)] if len(works) == len(ops) else [(peers, w) for w in works]
        else:
            parts = [([src], work) for src, (work, _) in receives.items()]
            parts += [([dst], self._call(dist.isend, frame, [dst], tag)) for dst, frame in frames.items()]
        return _TorchFrames(self, tag, parts, buffers, frames)

    def _call(self, op, tensor, peers: list[int], tag: str):
        """Post ``op`` (irecv/isend with the one peer, or batch_isend_irecv of the op list ``tensor`` with
        ``peers``); a library error (e.g. a peer's closed connection) is a PeerError naming them."""
        try:
            if op is dist.batch_isend_irecv:
                return op(tensor)
            return op(tensor, peers[0], tag=_tag_number(tag))
        except RuntimeError as exc:
            raise _peer_error(self.rank, peers, tag, _reason(exc)) from exc

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
