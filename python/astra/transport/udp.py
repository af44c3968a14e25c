"""Transport over UDP datagrams with forward error correction: a lost packet costs no retransmission wait.

ASTRA's messages are a few packets (640 B of codes per block at G = 1). Over TCP one lost packet of such a
message waits for a retransmission timeout; here every message goes out with redundancy instead:

- A message is the frame of :mod:`.framing` (sequence, exchange, source, length, CRC-32: the same checks as on
  every transport). It is cut into stripes of at most :data:`STRIPE_PIECES` pieces of at most
  :data:`PIECE_BYTES` bytes, and each stripe is sent as its k data pieces plus n - k parity pieces of the
  erasure code (:mod:`.erasure`): the receiver rebuilds the stripe from *any* k of the n.
- The redundancy n - k follows the measured loss: every receiver counts, per peer, the pieces missing over the
  pieces sent (decayed over the messages, updated at every message) and reports it back in each datagram it
  sends to that peer (in a loss report of its own where it sends that peer nothing else). A sender picks the
  smallest n - k that loses a stripe with probability at most ``target`` at the reported loss (at least
  ``min_loss``, at most 50 %), or at a fixed ``loss`` when one is given.
- When more pieces are lost than the redundancy covers, the receiver asks for more (a repair request, after
  ``repair_s`` without progress) and the sender answers with new parity pieces: one round trip, not a timeout.
  Unanswered requests (a peer still computing) are repeated at doubling intervals, up to 8 ``repair_s``.
  A peer that stays silent until the exchange's deadline is a :class:`~astra.transport.PeerError` naming it and
  the exchange (block).
- Every datagram carries a header with its own CRC-32 and the job's id: a corrupted datagram, one of another
  job, or one that does not fit its message is discarded and counted (:attr:`UDPTransport.discarded`), never
  used; the rebuilt message is then checked as a frame. Pieces of an earlier message arriving late are
  discarded by their sequence number (and counted as arrived for the loss measure); duplicates are ignored.
- IPv4. Ranks find each other through the rendezvous of torch.distributed's TCP store at MASTER_ADDR:MASTER_PORT
  (:func:`rendezvous`): each binds a UDP socket on an ephemeral port and publishes its address, rank 0 the job
  id. ``ASTRA_UDP_HOST`` overrides the address a rank publishes (default: the local address that routes to
  MASTER_ADDR). Each socket asks for a 4 MiB receive buffer (the kernel caps it at net.core.rmem_max), and a
  thread per rank takes the datagrams off it while the rank computes.

What it does not do: encrypt or authenticate (trusted machines on a trusted network, as every ASTRA transport;
see :mod:`astra.transport`), control congestion (the messages are small and once per block), or multicast
(each peer gets its own datagrams, so a rank's uplink carries its codes N - 1 times). A peer that dies is
noticed at the deadline, not at once as over TCP: UDP has no connection to close.

Datagram layout (little-endian), a 40-byte header and one piece::

    offset  bytes  field
         0      4  magic b"ASU1"
         4      4  checksum: zlib.crc32 of bytes 8..end
         8      4  job id (chosen by rank 0 at the rendezvous)
        12      2  source rank
        14      2  stripe
        16      4  exchange id (as the frame's)
        20      8  sequence number (as the frame's)
        28      4  frame bytes (the whole message)
        32      1  kind: 0 a piece, 1 a repair request, 2 a loss report
        33      1  piece index
        34      2  n: pieces of the stripe sent at first (a piece), pieces held (a repair request)
        36      2  the sender's measured loss on the receiver's pieces, in 1/65535
        38      2  reserved (0)
        40         the piece (kind 0; none for the other kinds)
"""
from __future__ import annotations

import datetime
import functools
import math
import os
import random
import select
import socket
import struct
import threading
import time
import zlib
from collections import OrderedDict, defaultdict
from typing import Callable

import torch

from . import erasure, framing
from .base import FramedTransport, FrameWait, PeerError

MAGIC = b"ASU1"
HEADER = struct.Struct("<4sIIHHIQIBBHHH")
HEADER_BYTES = HEADER.size
#: bytes of one piece: with the 40-byte header and UDP/IPv4's 28, a datagram of 1268 bytes passes links and
#: tunnels with an MTU down to 1280 unfragmented
PIECE_BYTES = 1200
#: data pieces per stripe (each stripe is coded on its own; n <= 256 pieces per stripe)
STRIPE_PIECES = 32
PIECE, REPAIR, REPORT = 0, 1, 2
#: a receiver that sends nothing else to a peer reports its loss measure when it moved by this much
_REPORT_STEP = 0.005
_LOSS_SCALE = 65535
#: the loss measure starts as if this many pieces had arrived (a peer's first few pieces say little)
_PRIOR_PIECES = 20.0
#: the most loss the redundancy is sized for (past it, repairs fill in; a link that loses more is broken)
_SIZING_LOSS = 0.5
#: messages a sender keeps to answer repair requests from
_HISTORY = 256
#: how far ahead of the next expected message a sequence number may be (further: not of this job's run)
_AHEAD = 64


def stripes(frame_bytes: int) -> list[tuple[int, int, int]]:
    """The stripes of a message: (offset, bytes, k) each; k = data pieces of that stripe."""
    span = STRIPE_PIECES * PIECE_BYTES
    out = []
    for offset in range(0, max(frame_bytes, 1), span):
        size = min(span, frame_bytes - offset)
        out.append((offset, size, max(1, -(-size // PIECE_BYTES))))
    return out


def piece_bytes(size: int, k: int) -> int:
    """Bytes of each piece of a stripe of ``size`` bytes in k pieces (as :func:`erasure.split` cuts it)."""
    return -(-size // k) if size else 1


@functools.lru_cache(maxsize=4096)  # the losses a sender sees repeat: they travel in 1/65535 steps
def parity_for(k: int, loss: float, target: float) -> int:
    """The fewest parity pieces m such that k data pieces plus m lose more than m (the stripe) with probability
    at most ``target`` when each piece is lost independently with probability ``loss``."""
    if not 0 <= loss < 1:
        raise ValueError(f"loss must be in [0, 1), got {loss}")
    for m in range(erasure.MAX_PIECES - k + 1):
        n = k + m
        failing = sum(math.comb(n, j) * loss ** j * (1 - loss) ** (n - j) for j in range(m + 1, n + 1))
        if failing <= target:
            return m
    return erasure.MAX_PIECES - k


def random_drop(fraction: float, seed: int) -> Callable[[int, int, int], bool]:
    """A drop hook (:attr:`UDPTransport.drop`) that drops each outgoing piece with probability ``fraction``,
    seeded."""
    rng = random.Random(seed)
    return lambda destination, stripe, index: rng.random() < fraction


class _Message:
    """Pieces of one message from one source, as they arrive."""

    def __init__(self, frame_bytes: int):
        self.frame_bytes = frame_bytes
        self.layout = stripes(frame_bytes)
        self.pieces: list[dict[int, bytes]] = [{} for _ in self.layout]
        self.sent = [0] * len(self.layout)  # n of each stripe, as the sender said
        self.last = time.monotonic()  # the last piece's arrival (or when the receive was posted)
        self.asked, self.tries = 0.0, 0  # the last repair request; requests since the last piece

    def complete(self) -> bool:
        return all(len(p) >= k for p, (_, _, k) in zip(self.pieces, self.layout))

    def held(self) -> str:
        return ", ".join(f"{len(p)} of {k}" for p, (_, _, k) in zip(self.pieces, self.layout))

    def first_round(self) -> tuple[int, int]:
        """(pieces sent at first, of them arrived)."""
        return sum(self.sent), sum(sum(1 for i in p if i < n) for p, n in zip(self.pieces, self.sent))

    def rebuild(self) -> torch.Tensor:
        out = torch.empty(self.frame_bytes, dtype=torch.uint8)
        for (offset, size, k), pieces in zip(self.layout, self.pieces):
            got = {i: torch.frombuffer(bytearray(b), dtype=torch.uint8) for i, b in sorted(pieces.items())[:k]}
            out[offset: offset + size] = erasure.decode(got, k, size)
        return out


class _Sent:
    """A message this rank sent to one peer: per stripe its data pieces, the pieces sent at first, and the next
    index to send on a repair."""

    def __init__(self, frame_bytes: int, data: list[torch.Tensor], first: list[int]):
        self.frame_bytes, self.data, self.first, self.following = frame_bytes, data, first, list(first)


class _UDPFrames(FrameWait):
    def __init__(self, transport: "UDPTransport", tag: str, keys: dict[int, tuple[int, int, int]]):
        self._t, self._tag, self._keys = transport, tag, keys

    def wait(self, timeout_s: float) -> dict[int, tuple[torch.Tensor, int | None]]:
        t = self._t
        deadline = time.monotonic() + timeout_s
        pending, out = dict(self._keys), {}
        with t._ready:
            while pending:
                for src, key in list(pending.items()):
                    message = t._inbox.get(key)
                    if message is not None and message.complete():
                        out[src] = (message.rebuild(), message.frame_bytes)
                        t._consume(key)
                        t._report(src)
                        del pending[src]
                if not pending:
                    break
                now = time.monotonic()
                if now >= deadline:
                    src, key = next(iter(pending.items()))
                    message = t._inbox[key]  # posted in _receive_frames, removed only when rebuilt
                    held = f"holding {message.held()} pieces" if any(message.pieces) else "no piece arrived"
                    raise PeerError(t.rank, src, self._tag, f"timed out after {timeout_s:g} s ({held})")
                if t.repair_s is not None:
                    for src, key in pending.items():
                        t._ask(src, key, now)
                t._ready.wait(min(deadline - now, t.repair_s or deadline - now))
        return out


class UDPTransport(FramedTransport):
    """UDP transport of rank ``rank`` on the bound socket ``sock``; ``addresses[r]`` = (host, port) of rank r.

    ``job``: the job id every rank's datagrams carry (the same on all ranks). ``loss``: assume this loss rate
    when sizing the redundancy (None: the loss the peers measure, at least ``min_loss``). ``target``: the
    probability of a stripe missing more pieces than its redundancy. ``repair_s``: ask for more pieces after this
    long without progress (None: never; FEC alone). Create the ranks' transports with :func:`rendezvous`, or
    directly with sockets and addresses (tests, fixed setups)."""

    name = "udp"

    def __init__(self, rank: int, world_size: int, sock: socket.socket, addresses: list[tuple[str, int]], *,
                 job: int = 0, timeout_s: float = 60.0, loss: float | None = None, min_loss: float = 0.005,
                 target: float = 1e-3, repair_s: float | None = 0.01):
        super().__init__(rank, world_size, timeout_s)
        if len(addresses) != world_size:
            raise ValueError(f"udp: {len(addresses)} addresses for {world_size} ranks")
        if loss is not None and not 0 <= loss < 1:
            raise ValueError(f"udp: loss must be in [0, 1), got {loss}")
        if not 0 < target < 1:
            raise ValueError(f"udp: target must be in (0, 1), got {target}")
        if repair_s is not None and repair_s <= 0:
            raise ValueError(f"udp: repair_s must be positive or None, got {repair_s}")
        self.sock, self.addresses, self.job = sock, [tuple(a) for a in addresses], job & 0xFFFFFFFF
        self.loss, self.min_loss, self.target, self.repair_s = loss, min_loss, target, repair_s
        #: test hook: called as drop(destination, stripe, index) for each outgoing piece; True drops it
        self.drop: Callable[[int, int, int], bool] | None = None
        #: datagrams discarded on receipt, by reason
        self.discarded: dict[str, int] = defaultdict(int)
        self.pieces_sent = self.pieces_dropped = self.repairs_asked = 0
        self._ready = threading.Condition()
        self._inbox: dict[tuple[int, int, int], _Message] = {}  # (source, exchange, sequence) -> pieces
        self._next: dict[tuple[int, int], int] = defaultdict(int)  # (source, exchange) -> next expected sequence
        # source -> its last rebuilt message (key, pieces): late pieces still count as arrived until the next one
        self._tally: dict[int, tuple[tuple[int, int, int], _Message]] = {}
        self._counts: dict[int, list[float]] = {}  # source -> decayed [pieces sent, missing]
        self._reported: dict[int, float] = {}  # destination -> loss it measured on our pieces
        self._told: dict[int, float] = {}  # source -> the loss measure last sent to it
        self._history: OrderedDict[tuple[int, int, int], _Sent] = OrderedDict()  # (destination, exchange, seq)
        self._sending = threading.Lock()
        self._closed = False
        self._asked_at = 0.0  # when a peer last asked this rank for a repair
        self.sock.settimeout(None)  # sends block while the link drains the socket's buffer: that paces them
        self._thread = threading.Thread(target=self._receive_loop, name=f"astra-udp-rank{rank}", daemon=True)
        self._thread.start()

    # --- the loss measure ----------------------------------------------------

    def measured_loss(self, peer: int) -> float:
        """The fraction of ``peer``'s pieces to this rank that did not arrive (decayed over its messages)."""
        sent, missing = self._counts.get(peer, (0.0, 0.0))
        return missing / sent if sent else 0.0

    def reported_loss(self, peer: int) -> float:
        """The loss ``peer`` last reported on this rank's pieces to it."""
        return self._reported.get(peer, 0.0)

    def _sizing_loss(self, peer: int) -> float:
        if self.loss is not None:
            return self.loss
        return min(max(self.reported_loss(peer), self.min_loss), _SIZING_LOSS)

    def _consume(self, key: tuple[int, int, int]) -> None:
        """``key``'s message was rebuilt: later pieces of it are late. Counts the loss of the source's earlier
        messages (whose late pieces had until now to arrive). Called under ``_ready``."""
        src, exchange, sequence = key
        self._next[(src, exchange)] = max(self._next[(src, exchange)], sequence + 1)
        counts = self._counts.setdefault(src, [_PRIOR_PIECES, 0.0])
        if src in self._tally:
            sent, arrived = self._tally[src][1].first_round()
            counts[0] = 0.9 * counts[0] + sent
            counts[1] = 0.9 * counts[1] + (sent - arrived)
        self._tally[src] = (key, self._inbox.pop(key))
        for old in [k for k in self._inbox if k[:2] == (src, exchange) and k[2] < sequence]:
            del self._inbox[old]

    # --- sending -------------------------------------------------------------

    def _datagram(self, kind: int, dst: int, stripe: int, exchange: int, sequence: int, frame_bytes: int,
                  count: int, index: int, piece: bytes = b"") -> bytes:
        loss = round(min(self.measured_loss(dst), 1.0) * _LOSS_SCALE)
        self._told[dst] = loss / _LOSS_SCALE
        head = HEADER.pack(MAGIC, 0, self.job, self.rank, stripe, exchange, sequence, frame_bytes, kind, index,
                           count, loss, 0)
        body = head[8:] + piece
        return MAGIC + struct.pack("<I", zlib.crc32(body)) + body

    def _send_pieces(self, dst: int, key: tuple[int, int], sent: _Sent, stripe: int, pieces: torch.Tensor,
                     indices: list[int]) -> None:
        """Send ``pieces`` (indices ``indices``) of one stripe of ``sent`` to ``dst``; raises OSError."""
        exchange, sequence = key
        for index, piece in zip(indices, pieces):
            self.pieces_sent += 1
            if self.drop is not None and self.drop(dst, stripe, index):
                self.pieces_dropped += 1
                continue
            # the piece's bytes without numpy, through framing's buffer view
            self.sock.sendto(self._datagram(PIECE, dst, stripe, exchange, sequence, sent.frame_bytes,
                                            sent.first[stripe], index, framing._memory(piece).tobytes()),
                             self.addresses[dst])

    def _receive_frames(self, frame_sizes: dict[int, int], tag: str):
        exchange, keys = framing.exchange_id(tag), {}
        with self._ready:
            for src, size in frame_sizes.items():
                # FramedTransport counted this receive already: its sequence number is the count before
                key = (src, exchange, self._received[(tag, src)] - 1)
                keys[src] = key
                message = self._inbox.setdefault(key, _Message(size))
                message.last = time.monotonic()
        return keys

    def _send_frames(self, frames: dict[int, torch.Tensor], receives, tag: str) -> FrameWait:
        exchange = framing.exchange_id(tag)
        encoded: dict[tuple[int, ...], tuple[torch.Tensor, list[torch.Tensor]]] = {}  # the frames to all peers
        for dst, frame in frames.items():
            sequence = self._sent[(tag, dst)] - 1  # counted by FramedTransport before this call
            layout = stripes(frame.numel())
            first = [k + parity_for(k, self._sizing_loss(dst), self.target) for _, _, k in layout]
            # peers with the same redundancy get the same pieces: the frames differ only where sequences do
            same = encoded.get(tuple(first))
            if same is not None and torch.equal(same[0], frame):
                coded = same[1]
            else:
                coded = [erasure.encode(frame[offset: offset + size], k, n)
                         for (offset, size, k), n in zip(layout, first)]
                encoded[tuple(first)] = (frame, coded)
            data = [pieces[:k] for pieces, (_, _, k) in zip(coded, layout)]
            sent = _Sent(frame.numel(), data, first)
            with self._sending:
                self._history[(dst, exchange, sequence)] = sent
                while len(self._history) > _HISTORY:
                    self._history.popitem(last=False)
            try:
                for stripe, pieces in enumerate(coded):
                    self._send_pieces(dst, (exchange, sequence), sent, stripe, pieces, list(range(pieces.shape[0])))
            except OSError as exc:
                raise PeerError(self.rank, dst, tag, f"could not send to {self.addresses[dst]}: {exc}") from None
        return _UDPFrames(self, tag, receives or {})

    def _ask(self, src: int, key: tuple[int, int, int], now: float) -> None:
        """Ask ``src`` for more pieces of ``key``'s stripes that lack some, once per ``repair_s`` without
        progress. Called under ``_ready``."""
        message = self._inbox.get(key)
        if message is None or now - max(message.last, message.asked) < self.repair_s * 2 ** min(message.tries, 3):
            return
        message.asked, message.tries = now, message.tries + 1
        for stripe, (pieces, (_, _, k)) in enumerate(zip(message.pieces, message.layout)):
            if len(pieces) < k:
                self.repairs_asked += 1
                try:
                    self.sock.sendto(self._datagram(REPAIR, src, stripe, key[1], key[2], message.frame_bytes,
                                                    len(pieces), 0), self.addresses[src])
                except OSError:
                    pass  # asked again later; the deadline still bounds the wait

    def _report(self, src: int) -> None:
        """Tell ``src`` the loss measured on its pieces where it moved since this rank last told it (in any
        datagram). Called under ``_ready``."""
        if abs(self.measured_loss(src) - self._told.get(src, 0.0)) >= _REPORT_STEP:
            try:
                self.sock.sendto(self._datagram(REPORT, src, 0, 0, 0, 0, 0, 0), self.addresses[src])
            except OSError:
                pass  # advisory: the next message's report tries again

    def _repair(self, dst: int, stripe: int, exchange: int, sequence: int, held: int) -> None:
        """Answer ``dst``'s repair request: new parity pieces of one stripe (after the last index: data pieces
        again), as many as it lacks plus the redundancy for them."""
        with self._sending:
            sent = self._history.get((dst, exchange, sequence))
            if sent is None or stripe >= len(sent.data):
                return
            data = sent.data[stripe]
            k = data.shape[0]
            lacking = max(k - held, 1)
            count = min(lacking + parity_for(lacking, self._sizing_loss(dst), self.target), erasure.MAX_PIECES)
            indices = [(sent.following[stripe] + j) % erasure.MAX_PIECES for j in range(count)]
            sent.following[stripe] += count
        parity = [i - k for i in indices if i >= k]
        extra = erasure.parity(data, min(parity), max(parity) - min(parity) + 1) if parity else None
        pieces = torch.stack([data[i] if i < k else extra[i - k - min(parity)] for i in indices])
        try:
            self._send_pieces(dst, (exchange, sequence), sent, stripe, pieces, indices)
        except OSError:
            pass  # the requester asks again, or its wait names this rank at the deadline

    # --- receiving -----------------------------------------------------------

    def _receive_loop(self) -> None:
        while not self._closed:
            try:
                if not select.select([self.sock], [], [], 0.2)[0]:  # checks for close this often
                    continue
                data = self.sock.recv(65536)
            except (OSError, ValueError):
                return  # closed
            try:
                reason = self._take(data)
            except Exception as exc:  # noqa: BLE001 - the thread must keep receiving; the count shows it
                reason = f"error: {type(exc).__name__}: {exc}"
            if reason is not None:
                with self._ready:
                    self.discarded[reason] += 1

    def _take(self, data: bytes) -> str | None:
        """Use one datagram; returns why it was discarded (None: used)."""
        if len(data) < HEADER_BYTES:
            return "short"
        (magic, checksum, job, src, stripe, exchange, sequence, frame_bytes, kind, index, count, loss,
         _) = HEADER.unpack_from(data)
        if magic != MAGIC:
            return "not astra"
        if zlib.crc32(memoryview(data)[8:]) != checksum:
            return "checksum"
        if job != self.job:
            return "other job"
        if src == self.rank or src >= self.world_size:
            return "source"
        if kind not in (PIECE, REPAIR, REPORT):
            return "kind"
        with self._ready:
            self._reported[src] = loss / _LOSS_SCALE
        if kind == REPAIR:
            self._asked_at = time.monotonic()
            self._repair(src, stripe, exchange, sequence, count)
        if kind != PIECE:
            return None
        piece = data[HEADER_BYTES:]
        with self._ready:
            key = (src, exchange, sequence)
            if sequence < self._next[(src, exchange)]:
                # late: still counts as arrived for the loss measure while the message is being tallied
                tallied, message = self._tally.get(src, (None, None))
                if tallied == key and stripe < len(message.pieces):
                    message.pieces[stripe].setdefault(index, piece)
                return "late"
            if sequence >= self._next[(src, exchange)] + _AHEAD:
                return "sequence"
            message = self._inbox.get(key)
            if message is None or (frame_bytes != message.frame_bytes and not any(message.pieces)):
                # a message of another size than posted is rebuilt at its own size: its frame check then says so
                message = self._inbox[key] = _Message(frame_bytes)
            if frame_bytes != message.frame_bytes or stripe >= len(message.layout):
                return "layout"
            _, size, k = message.layout[stripe]
            if len(piece) != piece_bytes(size, k):
                return "layout"
            if index in message.pieces[stripe]:
                return "duplicate"
            message.pieces[stripe][index] = piece
            message.sent[stripe] = max(message.sent[stripe], count)
            message.last, message.tries = time.monotonic(), 0
            if message.complete():
                self._ready.notify_all()
        return None

    def close(self) -> None:
        """Stop; first answer repair requests until none came for ``10 repair_s`` (at most 1 s): the peers may
        still be rebuilding this rank's last messages, and ask at most ``8 repair_s`` apart."""
        if self._closed:
            return
        if self.repair_s is not None:
            start = time.monotonic()
            quiet = 10 * self.repair_s
            while time.monotonic() - max(start, self._asked_at) < quiet and time.monotonic() - start < 1.0:
                time.sleep(self.repair_s)
        self._closed = True
        self._thread.join(timeout=5.0)
        self.sock.close()


def _advertised_host(master_addr: str) -> str:
    """The local address that routes to ``master_addr`` (no packet is sent), or ASTRA_UDP_HOST."""
    if os.environ.get("ASTRA_UDP_HOST"):
        return os.environ["ASTRA_UDP_HOST"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((master_addr, 9))
        except OSError as exc:
            raise RuntimeError(f"udp: no route to MASTER_ADDR {master_addr!r} ({exc}); set ASTRA_UDP_HOST to this "
                               f"rank's address") from None
        return probe.getsockname()[0]


def rendezvous(rank: int, world_size: int, master_addr: str, master_port: int, *, timeout_s: float = 60.0,
               setup_timeout_s: float | None = None, **options) -> UDPTransport:
    """This rank's :class:`UDPTransport`: binds a UDP socket, publishes its address in torch.distributed's TCP
    store at ``master_addr:master_port`` (rank 0 hosts it), and reads every other rank's. ``setup_timeout_s``
    bounds the wait for the other ranks (default ``timeout_s``); ``options`` go to :class:`UDPTransport`."""
    from torch.distributed import TCPStore

    setup = setup_timeout_s or timeout_s
    host = _advertised_host(master_addr)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((host, 0))
        try:
            store = TCPStore(master_addr, master_port, world_size, rank == 0,
                             timeout=datetime.timedelta(seconds=setup), wait_for_workers=False)
        except (RuntimeError, OSError) as exc:
            raise RuntimeError(f"udp: rank {rank} could not reach the rendezvous at {master_addr}:{master_port} "
                               f"within {setup:g} s: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
        if rank == 0:
            store.set("astra-udp/job", str(random.getrandbits(32)))
        store.set(f"astra-udp/{rank}", f"{host}:{sock.getsockname()[1]}")
        try:
            job = int(store.get("astra-udp/job"))
            addresses = []
            for r in range(world_size):
                peer_host, _, port = store.get(f"astra-udp/{r}").decode().rpartition(":")
                addresses.append((peer_host, int(port)))
            store.set(f"astra-udp/ready/{rank}", "1")
            if rank == 0:  # the store lives in rank 0: keep it until every rank has read it
                store.wait([f"astra-udp/ready/{r}" for r in range(world_size)])
        except RuntimeError as exc:
            raise RuntimeError(f"udp: rank {rank}: the other ranks did not all arrive at the rendezvous within "
                               f"{setup:g} s ({str(exc).splitlines()[0]})") from None
        del store
        return UDPTransport(rank, world_size, sock, addresses, job=job, timeout_s=timeout_s, **options)
    except BaseException:
        sock.close()
        raise
