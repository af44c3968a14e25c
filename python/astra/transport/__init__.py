"""Transports: how ranks exchange bytes (torch.distributed, MPI, UDP datagrams with forward error correction,
in-process loopback).

What the wire guarantees:

- Every message travels in a frame (:mod:`.framing`) that carries the
  exchange's sequence number (for a block exchange, the forward's number),
  the exchange id, the source rank, the payload length and a CRC-32 of
  header and payload. A receiver uses a payload only if all of them are what
  it expects; otherwise it raises :class:`PeerError` naming the peer, the
  exchange and what was wrong (a short, long, corrupted or truncated
  message, bytes that are not a frame, or a frame of another source,
  exchange or forward). A message of an earlier forward is never taken for
  one of this forward.
- Every wait has a timeout: a dead or hung peer is a :class:`PeerError` too.
  A transport that failed refuses further use (:class:`TransportFailed`).
- The runtime checks every received code against the codebook size before
  using it (:meth:`astra.AstraEngine.run_rank`), and the ranks compare a
  digest of their setup before the first forward (:mod:`astra.handshake`).

What it does not:

- The ranks are trusted machines of one job. The checksum detects accidental
  corruption (a flipped bit, a truncated or mixed-up buffer; a random error
  passes with probability 2^-32 per message), not tampering: anyone who can
  write to the link can also compute a valid checksum.
- There is no encryption and no authentication: the codes, class-token
  states and setup digests travel in the clear, and any process that reaches
  the ranks' ports can join or disturb a job. Run jobs on a network you
  trust, or inside an encrypted tunnel.
"""
from .base import ExchangeRecord, FramedTransport, Handle, PeerError, Transport, TransportFailed, TransportStats
from .loopback import LoopbackHub, LoopbackTransport

__all__ = ["ExchangeRecord", "FramedTransport", "Handle", "LoopbackHub", "LoopbackTransport", "PeerError", "Transport",
           "TransportFailed", "TransportStats"]
