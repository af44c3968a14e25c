"""The frame every message travels in, and its check on receipt.

A frame is a fixed 32-byte header followed by the payload (little-endian)::

    offset  bytes  field
         0      4  magic b"ASF1" (ASTRA frame, version 1)
         4      4  checksum: zlib.crc32 of the payload, continued over bytes 8..31
         8      8  sequence number: messages of this exchange name sent earlier from source to receiver
                   (a block exchange's is the number of the forward)
        16      4  exchange id: zlib.crc32 of the exchange name ("block3")
        20      4  source rank
        24      8  payload length n
        32      n  payload

The receiver knows what it expects (source, sequence, exchange, length) and
:func:`open_frame` rejects anything else with a :class:`FrameError` saying
what was wrong; the transport turns it into a :class:`~astra.transport.PeerError`
naming the peer and the exchange. A received payload is a view into the
receive buffer (no copy).

The checksum is ``zlib.crc32`` from the standard library: every rank has it
(GPU machines often have no network and no extra packages, so a faster
third-party checksum cannot be a dependency), and one pass over a few
kilobytes of codes is cheap next to a Transformer block. It detects
accidental corruption (bit errors, truncation, a mix-up of buffers), not
tampering: a peer that means harm can compute it too.

Sizes: where the library reports how many bytes arrived (MPI), the count is
checked against the frame. Where it does not (gloo completes a shorter
message silently into a larger buffer), the header's length and the checksum
catch short messages, and :func:`receive_buffer` leaves one frame of room
behind the frame with guard bytes in it, so a longer message overwrites the
guard instead of passing unnoticed.
"""
from __future__ import annotations

import ctypes
import os
import struct
import zlib
from dataclasses import dataclass

import torch

MAGIC = b"ASF1"
HEADER = struct.Struct("<4sIQIIQ")  # magic, checksum, sequence, exchange id, source, payload length
HEADER_BYTES = HEADER.size
_FIELDS = struct.Struct("<QIIQ")  # the checksummed header fields, bytes 8..31
_FIELDS_AT = HEADER_BYTES - _FIELDS.size
_CHECKSUM = struct.Struct("<I")
# Written behind the frame in a receive buffer that has room for more; random per process, so no peer's
# bytes carry it by design.
_GUARD = os.urandom(8)


def _memory(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous 1-D uint8 CPU tensor, as a writable buffer without a copy (valid while ``t``
    lives): what zlib and struct read and write, with torch alone (no numpy)."""
    if not t.numel():
        return memoryview(bytearray())
    return memoryview((ctypes.c_ubyte * t.numel()).from_address(t.data_ptr())).cast("B")


class FrameError(ValueError):
    """A received message is not the frame that was expected (the text says what differs)."""


@dataclass(frozen=True)
class Expected:
    """What a receiver expects from one source in one exchange."""

    source: int
    sequence: int
    exchange: int
    length: int  # payload bytes

    @property
    def frame_bytes(self) -> int:
        return HEADER_BYTES + self.length


def exchange_id(tag: str) -> int:
    """The 32-bit id of an exchange name, as carried in the header."""
    return zlib.crc32(tag.encode())


def payload_checksum(payload: torch.Tensor) -> int:
    """crc32 of a 1-D uint8 CPU payload: computed once per exchange, shared by the frames to every peer."""
    return zlib.crc32(_memory(payload))


def encode(payload: torch.Tensor, checksum: int, *, sequence: int, exchange: int, source: int) -> torch.Tensor:
    """The frame (1-D uint8 CPU tensor) of a 1-D uint8 CPU payload whose :func:`payload_checksum` is ``checksum``."""
    n = payload.numel()
    buf = torch.empty(HEADER_BYTES + n, dtype=torch.uint8)
    buf[HEADER_BYTES:] = payload
    data = _memory(buf)
    _FIELDS.pack_into(data, _FIELDS_AT, sequence, exchange, source, n)
    data[:4] = MAGIC
    _CHECKSUM.pack_into(data, 4, zlib.crc32(data[_FIELDS_AT:HEADER_BYTES], checksum))
    return buf


def receive_buffer(frame_bytes: int, *, device: torch.device | str = "cpu", room: bool = True) -> torch.Tensor:
    """A zeroed buffer for one frame; with ``room``, followed by as many bytes again with guard bytes at their start
    (the rest of the room is left unwritten)."""
    if not room:
        return torch.zeros(frame_bytes, dtype=torch.uint8, device=device)
    buf = torch.empty(2 * frame_bytes + len(_GUARD), dtype=torch.uint8)
    buf[:frame_bytes] = 0
    _memory(buf)[frame_bytes: frame_bytes + len(_GUARD)] = _GUARD
    return buf.to(device)


def long_message(frame_bytes: int, received: int | None = None) -> str:
    """The reason of a message longer than its frame (``received``: its size, where known)."""
    size = f"{received:,} bytes" if received is not None else "more bytes"
    return f"sent a long message: {size} where a {frame_bytes:,}-byte frame was expected"


def open_frame(buf: torch.Tensor, expected: Expected, received: int | None) -> torch.Tensor:
    """The payload (a view into ``buf``, 1-D uint8 CPU) of the frame received into ``buf``.

    ``received`` is the message's size where the library reports it (None
    where it does not: then a buffer from :func:`receive_buffer` with room
    tells a long message by its guard). Raises :class:`FrameError` on a
    short or long message, bytes that are not a frame, a wrong payload
    length, a checksum mismatch, or a frame from another source, exchange or
    sequence number.
    """
    size = expected.frame_bytes
    buf = buf.contiguous()  # kept: data is a view of its memory
    data = _memory(buf)
    if received is not None and received != size:
        if received > size:
            raise FrameError(long_message(size, received))
        raise FrameError(f"sent a short message: {received:,} bytes where a {size:,}-byte frame was expected")
    if data.nbytes < size:
        raise FrameError(f"sent a short message: {data.nbytes:,} bytes where a {size:,}-byte frame was expected")
    if received is None and data.nbytes > size and data[size: size + len(_GUARD)].tobytes() != _GUARD:
        raise FrameError(long_message(size))
    magic, checksum, sequence, exchange, source, length = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise FrameError(f"sent bytes that are not an ASTRA frame (they start with {magic!r}, not {MAGIC!r})")
    if length != expected.length:
        raise FrameError(f"sent a frame of {length:,} payload bytes where {expected.length:,} were expected")
    if zlib.crc32(data[_FIELDS_AT:HEADER_BYTES], zlib.crc32(data[HEADER_BYTES:size])) != checksum:
        raise FrameError("sent a corrupted or truncated frame (checksum mismatch)")
    if source != expected.source:
        raise FrameError(f"sent a frame that names rank {source} as its source")
    if exchange != expected.exchange:
        raise FrameError(f"sent a frame of another exchange (id {exchange:#010x}, expected {expected.exchange:#010x})")
    if sequence != expected.sequence:
        raise FrameError(f"sent a frame with sequence number {sequence} where {expected.sequence} was expected "
                         f"(a message of another forward)")
    return buf[HEADER_BYTES:size]
