"""Transports: how ranks exchange bytes (torch.distributed, MPI, in-process loopback)."""
from .base import ExchangeRecord, Handle, PeerError, Transport, TransportStats
from .loopback import LoopbackHub, LoopbackTransport

__all__ = ["ExchangeRecord", "Handle", "LoopbackHub", "LoopbackTransport", "PeerError", "Transport", "TransportStats"]
