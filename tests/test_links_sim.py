"""The modelled ``sim`` links: per-message latency plus bits over rate, star up/downlink queues,
one shared medium, and the parameter checks."""
import time

import pytest
import torch

from astra.transport import LoopbackHub
from astra_lab.links import SimLinkTransport


def sim_links(world=2, timeout_s=10.0, **kw):
    return [SimLinkTransport(t, **kw) for t in LoopbackHub(world).transports(timeout_s)]


def wire_s(nbytes, mbps):
    """The paper's per-message cost without latency: bits / rate."""
    return nbytes * 8 / (mbps * 1e6)


EMPTY = torch.empty(0, dtype=torch.uint8)


def random_bytes(n, seed):
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "nbytes,mbps,latency_ms",
    [
        (1500, 0.1, 0.0),  # bandwidth term only: 0.12 s
        (1, 1000.0, 150.0),  # latency term only: 0.15 s
        (1000, 0.1, 50.0),  # both: 0.08 + 0.05 s
    ],
)
def test_sim_one_message_costs_latency_plus_bits_over_rate(nbytes, mbps, latency_ms):
    s0, s1 = sim_links(rate_mbps=mbps, latency_ms=latency_ms)
    payload = random_bytes(nbytes, seed=nbytes)
    model = wire_s(nbytes, mbps) + latency_ms / 1000
    start = time.monotonic()
    h0 = s0.exchange(payload, [1], {}, "m")
    h1 = s1.exchange(EMPTY, [], {0: nbytes}, "m")
    got = h1.wait()
    elapsed = time.monotonic() - start
    assert elapsed >= model, f"delivered after {elapsed:.4f} s, the model says {model:.4f} s"
    assert elapsed < 3 * model + 0.2
    # the receiver's own accounted wait covers (nearly) all of it: it posted right after the sender
    assert h1.record.wait_s >= model - 0.02
    assert h0.wait() == {}  # the sender receives nothing
    # bytes intact; accounting counts payloads only, the inner transport also carries the 8 B/rank header
    assert set(got) == {0} and torch.equal(got[0], payload)
    assert s0.stats.total_sent() == nbytes and s0.stats.total_received() == 0
    assert s1.stats.total_received() == nbytes and s1.stats.total_sent() == 0
    assert s0.inner.stats.total_sent() == nbytes + 8 * 2
    assert s1.inner.stats.total_received() == nbytes + 8 * 2


def test_sim_star_uplink_queues_messages_leaving_one_rank():
    """Rank 0 sends one message to ranks 1 and 2: the second waits for the first on rank 0's uplink."""
    nbytes, mbps = 2000, 0.1  # 0.16 s each
    tx = wire_s(nbytes, mbps)
    links = sim_links(3, rate_mbps=mbps)
    payload = random_bytes(nbytes, seed=1)
    start = time.monotonic()
    links[0].exchange(payload, [1, 2], {}, "m")
    h1 = links[1].exchange(EMPTY, [], {0: nbytes}, "m")
    h2 = links[2].exchange(EMPTY, [], {0: nbytes}, "m")
    got1 = h1.wait()
    t1 = time.monotonic() - start
    got2 = h2.wait()
    t2 = time.monotonic() - start
    assert tx <= t1 < 1.5 * tx, (t1, tx)
    assert 2 * tx <= t2 < 3 * tx + 0.2, (t2, tx)
    assert torch.equal(got1[0], payload) and torch.equal(got2[0], payload)
    assert links[0].stats.total_sent() == 2 * nbytes


def test_sim_star_uplink_queue_persists_across_exchanges():
    """Two exchanges posted back to back from rank 0, to two different ranks (so that no downlink
    queues): the second message leaves rank 0's uplink after the first."""
    nbytes, mbps = 2000, 0.1
    tx = wire_s(nbytes, mbps)
    links = sim_links(3, rate_mbps=mbps)
    a, b = random_bytes(nbytes, 2), random_bytes(nbytes, 3)
    start = time.monotonic()
    links[0].exchange(a, [1], {}, "a")
    links[0].exchange(b, [2], {}, "b")
    got_a = links[1].exchange(EMPTY, [], {0: nbytes}, "a").wait()
    ta = time.monotonic() - start
    got_b = links[2].exchange(EMPTY, [], {0: nbytes}, "b").wait()
    tb = time.monotonic() - start
    assert tx <= ta < 1.5 * tx
    assert 2 * tx <= tb < 3 * tx + 0.2
    assert torch.equal(got_a[0], a) and torch.equal(got_b[0], b)


def test_sim_star_downlink_queues_converging_messages():
    """Ranks 1 and 2 send to rank 0 at once: both fit their uplinks in tx, but rank 0's downlink takes 2 tx."""
    nbytes, mbps = 2000, 0.1
    tx = wire_s(nbytes, mbps)
    links = sim_links(3, rate_mbps=mbps)
    p1, p2 = random_bytes(nbytes, 4), random_bytes(nbytes, 5)
    start = time.monotonic()
    h0 = links[0].exchange(EMPTY, [], {1: nbytes, 2: nbytes}, "m")
    links[1].exchange(p1, [0], {}, "m")
    links[2].exchange(p2, [0], {}, "m")
    got = h0.wait()
    elapsed = time.monotonic() - start
    assert 2 * tx <= elapsed < 3 * tx + 0.2, (elapsed, tx)
    assert torch.equal(got[1], p1) and torch.equal(got[2], p2)
    assert links[0].stats.total_received() == 2 * nbytes


def _swap(links, nbytes):
    """Ranks 0 and 1 send each other ``nbytes`` at the same time; seconds until both have received."""
    p0, p1 = random_bytes(nbytes, 6), random_bytes(nbytes, 7)
    start = time.monotonic()
    h0 = links[0].exchange(p0, [1], {1: nbytes}, "swap")
    h1 = links[1].exchange(p1, [0], {0: nbytes}, "swap")
    got0, got1 = h0.wait(), h1.wait()
    elapsed = time.monotonic() - start
    assert torch.equal(got0[1], p1) and torch.equal(got1[0], p0)
    return elapsed


def test_sim_shared_medium_serializes_what_a_star_sends_in_parallel(tmp_path):
    """The docstring: star = own full-duplex up/downlinks, shared = one medium every message queues on."""
    nbytes, mbps = 2500, 0.1  # 0.2 s per message
    tx = wire_s(nbytes, mbps)
    star = _swap(sim_links(rate_mbps=mbps, topology="star"), nbytes)
    shared = _swap(sim_links(rate_mbps=mbps, topology="shared", medium_path=str(tmp_path / "medium")), nbytes)
    assert tx <= star < 1.5 * tx, (star, tx)
    assert 2 * tx <= shared < 3 * tx + 0.2, (shared, tx)
    assert shared / star > 1.5


def test_sim_shared_medium_factor_two_doubles_a_message(tmp_path):
    """medium_factor = 2: infrastructure Wi-Fi, every frame crosses the air twice."""
    nbytes, mbps = 1500, 0.1
    tx = wire_s(nbytes, mbps)
    s0, s1 = sim_links(rate_mbps=mbps, topology="shared", medium_factor=2.0, medium_path=str(tmp_path / "m"))
    payload = random_bytes(nbytes, 8)
    start = time.monotonic()
    s0.exchange(payload, [1], {}, "m")
    got = s1.exchange(EMPTY, [], {0: nbytes}, "m").wait()
    elapsed = time.monotonic() - start
    assert 2 * tx <= elapsed < 3 * 2 * tx + 0.2
    assert torch.equal(got[0], payload)


def test_sim_transmit_end_and_set_rate(tmp_path):
    (s,) = sim_links(1, rate_mbps=8.0)
    assert s.transmit_end(5.0, 1000) == pytest.approx(5.0 + 1000 * 8 / 8e6, rel=1e-12)
    s.set_rate(80.0)
    assert s.transmit_end(5.0, 1000) == pytest.approx(5.0 + 1000 * 8 / 80e6, rel=1e-12)
    (w,) = sim_links(1, rate_mbps=8.0, topology="shared", medium_factor=2.0, medium_path=str(tmp_path / "m"))
    assert w.transmit_end(0.0, 1000) == pytest.approx(2 * 1000 * 8 / 8e6, rel=1e-12)
    assert s.name == "loopback+sim"


def test_sim_allgather_and_set_rate_change_the_wait():
    """A blocking allgather (every rank in its own thread, as in a real run) at two rates."""
    import threading

    nbytes = 1250  # 0.1 s at 0.1 Mbps, 0.05 s at 0.2 Mbps
    links = sim_links(rate_mbps=0.1)
    results = {}

    def work(r, tag):
        data = random_bytes(nbytes, 10 + r)
        start = time.monotonic()
        parts = links[r].allgather(data, [nbytes, nbytes], tag)
        results[(r, tag)] = (time.monotonic() - start, parts)

    for rate, tag in [(0.1, "slow"), (0.2, "fast")]:
        for link in links:
            link.set_rate(rate)
        threads = [threading.Thread(target=work, args=(r, tag)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in range(2):
            elapsed, parts = results[(r, tag)]
            assert torch.equal(parts[1 - r], random_bytes(nbytes, 11 - r))
            assert elapsed < 3 * wire_s(nbytes, rate) + 0.2
        # the slower of the two ranks waited at least the modelled wire time
        assert max(results[(r, tag)][0] for r in range(2)) >= wire_s(nbytes, rate) - 0.005


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rate_mbps=0.0), "link rate must be positive"),
        (dict(rate_mbps=-5.0), "link rate must be positive"),
        (dict(rate_mbps=10.0, topology="mesh"), "topology must be one of star, shared"),
        (dict(rate_mbps=10.0, topology="shared"), "shared topology needs medium_path"),
    ],
)
def test_sim_rejects_bad_parameters(kwargs, match):
    (inner,) = LoopbackHub(1).transports()
    with pytest.raises(ValueError, match=match):
        SimLinkTransport(inner, **kwargs)
