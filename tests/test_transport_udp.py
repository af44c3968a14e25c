"""The UDP transport on 127.0.0.1, ranks as threads: exchanges equal their input byte for byte, survive as many
lost pieces as their redundancy (and more, by repair), name a silent peer, and never use a corrupted, foreign,
late or duplicated datagram."""
import random
import socket
import threading
import time
import zlib

import pytest
import torch
from runtime_helpers import run_per_rank

from astra.launch import free_port, make_transport
from astra.transport import PeerError, TransportFailed, udp
from astra.transport.udp import PIECE_BYTES, STRIPE_PIECES, UDPTransport, parity_for, random_drop, rendezvous


class Tap(socket.socket):
    """A UDP socket whose outgoing datagrams pass through ``self.mangle(data) -> list of datagrams`` (and are
    recorded in ``self.sent``)."""

    mangle = None

    def sendto(self, data, address):
        self.sent = getattr(self, "sent", []) + [(bytes(data), address)]
        for datagram in (self.mangle(bytes(data)) if self.mangle else [data]):
            super().sendto(datagram, address)
        return len(data)


def _transports(n, timeout_s=5.0, **options):
    socks = [Tap(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    addresses = [s.getsockname() for s in socks]
    return [UDPTransport(r, n, socks[r], addresses, job=7, timeout_s=timeout_s, **options) for r in range(n)]


def _run(transports, fns):
    """Run ``fns[r](transports[r])`` in one thread per rank; each rank's result or exception."""
    return run_per_rank(transports, fns)


def _payload(n, seed):
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _all_to_all(sizes, blocks=1, seed=0):
    """fns for ranks that each send their payload of ``sizes[r]`` bytes to all others in ``blocks`` exchanges;
    returns (fns, payloads[block][rank])."""
    n = len(sizes)
    payloads = [[_payload(sizes[r], seed + 100 * b + r) for r in range(n)] for b in range(blocks)]

    def fn(r):
        def run(t):
            got = []
            for b in range(blocks):
                others = [p for p in range(n) if p != r]
                got.append(t.exchange(payloads[b][r], others, {p: sizes[p] for p in others}, f"block{b}").wait())
            return got
        return run

    return [fn(r) for r in range(n)], payloads


def _check(outcomes, payloads):
    for r, got in enumerate(outcomes):
        assert not isinstance(got, BaseException), got
        for b, received in enumerate(got):
            assert set(received) == {p for p in range(len(payloads[b])) if p != r}
            for src, data in received.items():
                assert torch.equal(data, payloads[b][src]), (r, b, src)


@pytest.fixture
def closing():
    made = []
    yield made.extend
    for t in made:
        t.close()


@pytest.mark.parametrize("sizes", [(640, 0), (1, 1200 - 32), (1200 - 31, 5000),
                                   (STRIPE_PIECES * PIECE_BYTES * 2 + 17, 3)])
def test_exchange_equals_input_byte_for_byte(closing, sizes):
    ts = _transports(2)
    closing(ts)
    fns, payloads = _all_to_all(sizes, blocks=3)
    _check(_run(ts, fns), payloads)
    assert not [reason for t in ts for reason in t.discarded if reason not in ("late", "duplicate")]


def test_three_ranks_all_gather_and_handshake_json(closing):
    ts = _transports(3)
    closing(ts)
    fns, payloads = _all_to_all([300, 7000, 1], blocks=2, seed=5)
    _check(_run(ts, fns), payloads)
    got = _run(ts, [lambda t: t.gather_json({"rank": t.rank, "x": [1, 2]}, "handshake")] * 3)
    assert got == [[{"rank": r, "x": [1, 2]} for r in range(3)]] * 3


def test_each_peer_gets_the_redundancy_of_its_own_link(closing):
    ts = _transports(3, timeout_s=3.0)
    closing(ts)
    drop = random_drop(0.2, seed=2)
    ts[0].drop = lambda destination, stripe, index: destination == 2 and drop(destination, stripe, index)
    fns, payloads = _all_to_all([3 * PIECE_BYTES, 100, 100], blocks=20, seed=4)
    _check(_run(ts, fns), payloads)
    last = {dst: sent.first[0] for (dst, _, _), sent in ts[0]._history.items()}  # the last message to each
    k = -(-(3 * PIECE_BYTES + 32) // PIECE_BYTES)
    assert last[1] - k == parity_for(k, 0.005, 1e-3) < last[2] - k
    assert ts[2].measured_loss(0) > 0.05 and ts[1].measured_loss(0) == 0.0


def _drop_first(count):
    """A drop hook that drops pieces 0 .. count-1 (the data pieces first) of every stripe."""
    return lambda destination, stripe, index: index < count


@pytest.mark.parametrize("size", [640, 3 * PIECE_BYTES + 5, STRIPE_PIECES * PIECE_BYTES - 32])  # one stripe
def test_losses_up_to_the_redundancy_need_no_repair(closing, size):
    loss = 0.2
    ts = _transports(2, timeout_s=2.0, loss=loss, repair_s=None)  # FEC alone: a missing piece would time out
    closing(ts)
    k = -(-min(size + 32, STRIPE_PIECES * PIECE_BYTES) // PIECE_BYTES)
    m = parity_for(k, loss, ts[0].target)
    assert m >= 1
    ts[0].drop = _drop_first(m)
    fns, payloads = _all_to_all([size, 10], blocks=2)
    start = time.monotonic()
    _check(_run(ts, fns), payloads)
    assert time.monotonic() - start < 1.5
    assert ts[0].pieces_dropped >= 2 * m


def test_one_loss_past_the_redundancy_is_a_peer_error_without_repair_and_repaired_with_it(closing):
    loss, size = 0.2, 3 * PIECE_BYTES
    k = -(-(size + 32) // PIECE_BYTES)
    m = parity_for(k, loss, 1e-3)
    fns, payloads = _all_to_all([size, 10], blocks=1)

    ts = _transports(2, timeout_s=0.5, loss=loss, repair_s=None)
    closing(ts)
    ts[0].drop = _drop_first(m + 1)
    outcomes = _run(ts, fns)
    assert isinstance(outcomes[1], PeerError) and outcomes[1].peer == 0 and outcomes[1].tag == "block0"
    assert f"timed out after 0.5 s (holding {k - 1} of {k} pieces)" in str(outcomes[1])
    with pytest.raises(TransportFailed):
        ts[1].exchange(payloads[0][1], [0], {0: size}, "block1")

    ts = _transports(2, timeout_s=2.0, loss=loss, repair_s=0.01)
    closing(ts)
    first_round = lambda destination, stripe, index: index < m + 1  # noqa: E731 - repairs send later indices
    ts[0].drop = first_round
    _check(_run(ts, fns), payloads)
    assert ts[1].repairs_asked >= 1


def test_random_loss_is_measured_and_the_redundancy_follows_it(closing):
    ts = _transports(2, timeout_s=3.0)
    closing(ts)
    ts[0].drop = random_drop(0.15, seed=11)
    fns, payloads = _all_to_all([4 * PIECE_BYTES, 640], blocks=40, seed=3)
    _check(_run(ts, fns), payloads)
    measured = ts[1].measured_loss(0)
    assert 0.05 < measured < 0.3, measured
    assert ts[0].reported_loss(1) > 0.05  # rank 1 told rank 0 what it measured
    assert ts[0].measured_loss(1) == 0.0 and ts[1].reported_loss(0) == 0.0  # the other direction is clean
    # rank 0's last message to rank 1 carried the redundancy for a loss of more than 5 % (the report may have
    # moved since), rank 1's the floor's
    k = -(-(4 * PIECE_BYTES + 32) // PIECE_BYTES)
    parity = next(reversed(ts[0]._history.values())).first[0] - k
    assert parity_for(k, 0.5, 1e-3) >= parity >= parity_for(k, 0.05, 1e-3) > parity_for(k, 0.005, 1e-3)
    assert next(reversed(ts[1]._history.values())).first[0] - 1 == parity_for(1, 0.005, 1e-3)


def test_repairs_alone_recover_a_lossy_link(closing):
    ts = _transports(2, timeout_s=5.0, loss=0.0, repair_s=0.005)  # no redundancy: every loss needs a repair
    closing(ts)
    ts[0].drop = random_drop(0.3, seed=5)
    fns, payloads = _all_to_all([STRIPE_PIECES * PIECE_BYTES * 2 + 500, 10], blocks=4, seed=6)
    _check(_run(ts, fns), payloads)
    assert ts[0].pieces_dropped > 10 and ts[1].repairs_asked >= 4


def test_a_closing_rank_still_answers_repairs_of_its_last_message(closing):
    ts = _transports(2, timeout_s=2.0, loss=0.0, repair_s=0.05)  # rank 0 lingers 0.5 s
    closing(ts)
    ts[1].repair_s = 0.3  # rank 1 asks after its receiver thread would have ended without the linger
    ts[0].drop = lambda destination, stripe, index: index == 0  # the one piece of the first round
    payload = _payload(500, 3)
    got = {}
    receiver = threading.Thread(target=lambda: got.update(ts[1].exchange(_payload(0, 0), [], {0: 500},
                                                                         "class").wait()))
    receiver.start()
    ts[0].exchange(payload, [1], {}, "class").wait()
    ts[0].close()  # at once: the receiver has not asked yet
    receiver.join(timeout=5)
    assert torch.equal(got[0], payload) and ts[0].pieces_dropped == 1 and ts[1].repairs_asked >= 1


def test_repairs_run_through_every_parity_index_and_then_the_data_pieces_again(closing):
    ts = _transports(2, timeout_s=5.0, loss=0.0, repair_s=None)
    closing(ts)
    size = 2 * PIECE_BYTES - 32  # a frame of 2 pieces, sent with no parity
    first_round, offered = [True], []

    def drop(destination, stripe, index):
        offered.append(index)
        return first_round[0] or index >= 2

    ts[0].drop = drop
    payload = _payload(size, 1)
    sender = ts[0].exchange(payload, [1], {}, "block0")
    first_round[0] = False
    sender.wait()
    got = {}
    receiver = threading.Thread(target=lambda: got.update(ts[1].exchange(_payload(0, 0), [], {0: size},
                                                                         "block0").wait()))
    receiver.start()
    exchange = zlib.crc32(b"block0")
    for _ in range(128):  # 127 requests send parity 2..255, the 128th data pieces 0 and 1 again
        ts[0]._repair(1, 0, exchange, 0, held=0)
    receiver.join(timeout=10)
    assert torch.equal(got[0], payload)
    assert offered == list(range(256)) + [0, 1]
    assert [udp.HEADER.unpack_from(d)[9] for d, _ in ts[0].sock.sent] == [0, 1]  # only those were not dropped


def test_a_link_that_loses_every_first_round_is_sized_at_the_cap_and_repaired(closing):
    ts = _transports(2, timeout_s=3.0, repair_s=0.005)
    closing(ts)
    # rank 0's first rounds are all lost; its answers to repair requests (from its receiver thread) arrive
    ts[0].drop = lambda destination, stripe, index: not threading.current_thread().name.startswith("astra-udp")
    fns, payloads = _all_to_all([640, 10], blocks=30, seed=9)
    _check(_run(ts, fns), payloads)
    assert ts[1].measured_loss(0) > 0.8 and ts[0].reported_loss(1) > 0.8
    assert next(reversed(ts[0]._history.values())).first[0] == 1 + parity_for(1, 0.5, 1e-3)


def test_a_receiver_that_sends_nothing_back_still_reports_its_loss(closing):
    ts = _transports(2, timeout_s=3.0)
    closing(ts)
    ts[0].drop = random_drop(0.15, seed=12)
    payloads = [_payload(2 * PIECE_BYTES, b) for b in range(30)]
    out = _run(ts, [lambda t: [t.exchange(p, [1], {}, f"block{b}").wait() for b, p in enumerate(payloads)],
                    lambda t: [t.exchange(_payload(0, 0), [], {0: p.numel()}, f"block{b}").wait()[0]
                               for b, p in enumerate(payloads)]])
    assert all(torch.equal(got, p) for got, p in zip(out[1], payloads))
    deadline = time.monotonic() + 2.0  # the last report may still be in flight
    while abs(ts[0].reported_loss(1) - ts[1].measured_loss(0)) > 0.01 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ts[0].reported_loss(1) > 0.05 and ts[0].reported_loss(1) == pytest.approx(ts[1].measured_loss(0), abs=0.01)


def test_a_silent_peer_is_a_peer_error_naming_it_and_the_block(closing):
    ts = _transports(2, timeout_s=0.4)
    closing(ts)
    fns, _ = _all_to_all([640, 640], blocks=1)
    start = time.monotonic()
    outcomes = _run(ts, [fns[0], lambda t: None])
    assert time.monotonic() - start < 3.0
    error = outcomes[0]
    assert isinstance(error, PeerError) and error.rank == 0 and error.peer == 1 and error.tag == "block0"
    assert "no piece arrived" in str(error)


def test_corrupted_foreign_and_duplicated_datagrams_are_discarded_never_used(closing):
    ts = _transports(2)
    closing(ts)
    rng = random.Random(4)

    def mangle(data):
        bad = bytearray(data)
        bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        other_job = bytearray(data)
        other_job[8] ^= 0xFF  # job id: the checksum is fixed up, so only the job tells it apart
        other_job[4:8] = zlib.crc32(bytes(other_job[8:])).to_bytes(4, "little")
        assert udp.HEADER.unpack_from(other_job)[2] != 7
        return [bytes(bad), b"xy", b"NOPE" + bytes(60), bytes(other_job), data, data]

    ts[1].sock.mangle = mangle
    fns, payloads = _all_to_all([3000, 5 * PIECE_BYTES], blocks=3, seed=8)
    _check(_run(ts, fns), payloads)
    seen = ts[0].discarded
    assert seen["checksum"] >= 1 and seen["short"] >= 1 and seen["not astra"] >= 1 and seen["other job"] >= 1
    assert seen["duplicate"] + seen["late"] >= 1
    assert not ts[1].discarded.get("checksum")


def test_late_pieces_of_an_earlier_block_are_discarded(closing):
    ts = _transports(2)
    closing(ts)
    fns, payloads = _all_to_all([900, 900], blocks=1, seed=1)
    _check(_run(ts, fns), payloads)
    replay = list(ts[1].sock.sent)
    late_before = ts[0].discarded["late"]
    for data, address in replay:  # block0's pieces again, after block0 was rebuilt
        socket.socket.sendto(ts[1].sock, data, address)
    fns2, payloads2 = _all_to_all([900, 900], blocks=1, seed=2)  # block0 again: the next sequence number
    _check(_run(ts, fns2), payloads2)
    assert ts[0].discarded["late"] >= late_before + len(replay)


def test_a_message_of_another_size_is_a_peer_error_from_the_frame_check(closing):
    ts = _transports(2, timeout_s=2.0)
    closing(ts)
    out = _run(ts, [
        lambda t: t.exchange(_payload(10, 0), [1], {1: 100}, "block2").wait(),
        lambda t: t.exchange(_payload(90, 0), [0], {0: 10}, "block2").wait(),
    ])
    assert isinstance(out[0], PeerError) and out[0].peer == 1 and out[0].tag == "block2"
    assert "short message" in str(out[0])
    assert isinstance(out[1], dict) and torch.equal(out[1][0], _payload(10, 0))


def test_parity_for_bounds_the_stripe_failure():
    assert parity_for(1, 0.0, 1e-3) == 0
    assert parity_for(1, 0.05, 1e-3) == 2  # all three copies lost: 1.25e-4; two: 2.5e-3 > 1e-3
    assert parity_for(10, 0.02, 1e-6) > parity_for(10, 0.02, 1e-3) > parity_for(10, 0.005, 1e-3)
    with pytest.raises(ValueError, match="loss"):
        parity_for(3, 1.0, 1e-3)


def test_rendezvous_through_the_tcp_store(closing):
    port = free_port()
    made = _run([None, None], [lambda _, r=r: rendezvous(r, 2, "127.0.0.1", port, timeout_s=5.0, setup_timeout_s=20.0)
                               for r in range(2)])
    assert all(isinstance(t, UDPTransport) for t in made), made
    closing(made)
    assert made[0].job == made[1].job and made[0].addresses == made[1].addresses
    fns, payloads = _all_to_all([2000, 640], blocks=2)
    _check(_run(made, fns), payloads)


def test_bad_setups_fail_clearly(monkeypatch):
    with pytest.raises(RuntimeError, match="could not reach the rendezvous|did not all arrive"):
        rendezvous(1, 2, "127.0.0.1", free_port(), timeout_s=1.0, setup_timeout_s=1.0)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="udp: MASTER_ADDR is not set"):
        make_transport("udp", 1.0)
    with pytest.raises(ValueError, match="choose gloo, nccl, mpi or udp"):
        make_transport("carrier-pigeon", 1.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(ValueError, match="3 addresses for 2 ranks"):
        UDPTransport(0, 2, sock, [("127.0.0.1", 1)] * 3)
    sock.close()
