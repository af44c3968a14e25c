"""Rank emulation: recorded programs, the capture pass, the wire model, max-min links and the
discrete-event replay (exact on analytic cases)."""
import math
import random

import pytest
import torch
from runtime_helpers import hf_vit, run_threads, tiny_classifier, tiny_lm

import astra
from astra.partition import Layout
from astra_lab import baselines
from astra_lab.baselines.collectives import ring_allreduce
from astra_lab.emulation import (
    Compute,
    FluidLinks,
    Payloads,
    Post,
    Program,
    Receive,
    ReplayTransport,
    Wait,
    WireModel,
    capture,
    max_min_rates,
    replay,
)

IDEAL = WireModel.payload_only()  # bytes = payload, no latency, eager
MBPS = 8.0  # 1e6 bytes per second: seconds = megabytes


def seconds(nbytes, mbps=MBPS):
    return nbytes * 8 / (mbps * 1e6)


# --------------------------------------------------------------------------- program recording


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class SlowPayloads(Payloads):
    """Payloads whose look-up takes (fake) time: that time is the transport's, not the rank's compute."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def get(self, *args):
        self.clock.now += 100.0
        return super().get(*args)


def test_replay_transport_records_compute_and_calls_and_answers_from_the_capture():
    clock = FakeClock()
    payloads = SlowPayloads(clock)
    a, g1, g2 = torch.arange(3, dtype=torch.uint8), torch.arange(4, dtype=torch.uint8) + 7, torch.full((4,), 9)
    payloads.put("a", 1, [0], a)
    payloads.put("g", 1, [0, 2], g1)
    payloads.put("g", 2, [0, 1], g2.to(torch.uint8))
    t = ReplayTransport(0, 3, payloads, clock=clock)
    t.begin()
    clock.now += 1.0
    t.prepost({1: 3}, "a")
    clock.now += 2.0
    h = t.exchange(torch.zeros(5, dtype=torch.uint8), [1, 2], {1: 3}, "a")
    clock.now += 0.5
    got = h.wait()
    clock.now += 0.25
    parts = t.allgather(torch.ones(4, dtype=torch.uint8), [4, 4, 4], "g")
    clock.now += 0.125
    program = t.end()
    assert torch.equal(got[1], a) and set(got) == {1}
    assert set(parts) == {1, 2} and torch.equal(parts[1], g1) and torch.equal(parts[2], g2.to(torch.uint8))
    assert program.ops[:6] == [
        Compute(1.0), Receive("a", {1: 3}), Compute(2.0), Post(0, "a", {1: 5, 2: 5}, {1: 3}), Compute(0.5), Wait(0),
    ]
    # the allgather is an exchange and its wait; the 200 s of look-ups are not compute
    assert program.ops[6:] == [Compute(0.25), Receive("g", {1: 4, 2: 4}), Post(1, "g", {1: 4, 2: 4}, {1: 4, 2: 4}),
                               Wait(1), Compute(0.125)]
    assert program.compute_s == pytest.approx(3.875, rel=0, abs=1e-12)
    assert program.bytes_sent == 5 * 2 + 4 * 2
    assert t.stats.total_sent() == program.bytes_sent


def test_replay_transport_refuses_a_path_the_capture_did_not_take():
    payloads = Payloads()
    payloads.put("a", 1, [0], torch.zeros(3, dtype=torch.uint8))
    t = ReplayTransport(0, 2, payloads)
    t.begin()
    with pytest.raises(ValueError, match="expects 4 bytes from rank 1, the captured run sent 3"):
        t.exchange(torch.empty(0, dtype=torch.uint8), [], {1: 4}, "a").wait()
    t.begin()
    with pytest.raises(KeyError, match="no message 0 from rank 1 to rank 0 in exchange 'b'"):
        t.exchange(torch.empty(0, dtype=torch.uint8), [], {1: 3}, "b").wait()
    with pytest.raises(RuntimeError, match="call begin"):
        ReplayTransport(0, 2, payloads).exchange(torch.empty(0, dtype=torch.uint8), [], {}, "c")


def test_payloads_hold_a_broadcast_once_and_in_order():
    p = Payloads()
    x, y = torch.zeros(10, dtype=torch.uint8), torch.ones(6, dtype=torch.uint8)
    p.put("t", 0, [1, 2, 3], x)
    p.put("t", 0, [1], y)
    assert p.nbytes == 16
    assert p.get("t", 0, 3, 0) is x and p.get("t", 0, 1, 1) is y


def _replay_rank_outputs(method, inputs, world):
    """Capture, then run every rank alone over the replay transport: outputs and programs."""
    payloads = capture(method, inputs, world, timeout_s=30.0)
    outs, programs = [], []
    for r in range(world):
        t = ReplayTransport(r, world, payloads)
        t.begin()
        outs.append(method.run_rank(inputs, t))
        programs.append(t.end())
    return outs, programs, payloads


def _close(a, b):
    if a is None or b is None:
        assert a is None and b is None
    else:
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model_fn,world", [(tiny_lm, 3), (tiny_classifier, 3), (hf_vit, 2)])
def test_astra_ranks_replayed_alone_compute_what_a_real_run_computes(model_fn, world):
    model = model_fn()
    x = astra.models.example_inputs(model, 16 if model_fn is hf_vit else 24, batch=2, seed=3)
    books = astra.calibrate(model, [x], 8, 2, progress=False)
    engine = astra.AstraEngine(model, books)
    expected, _ = run_threads(engine, x, world)
    outs, programs, payloads = _replay_rank_outputs(engine, x, world)
    for got, want in zip(outs, expected):
        _close(got, want)
    # the program has one exchange per block (and the class-state allgather), with the codes' bytes
    adapter, layout = engine.adapter, engine.layout(x, world)
    blocks = len(adapter.blocks)
    for r, p in enumerate(programs):
        posts = [op for op in p.ops if isinstance(op, Post)]
        assert [op.tag for op in posts[:blocks]] == [f"block{i}" for i in range(blocks)]
        assert len(posts) == blocks + (1 if adapter.class_tokens else 0)
        codes = engine.payload_bytes(2, layout.size(r))
        for op in posts[:blocks]:
            assert op.sends == {d: codes for d in layout.destinations(r)}
            assert op.receives == {s: engine.payload_bytes(2, layout.size(s)) for s in layout.sources(r)}
        assert [op.exchange for op in p.ops if isinstance(op, Wait)] == list(range(len(posts)))
        assert p.compute_s > 0
    assert payloads.nbytes == sum(sum(op.sends.values()) // max(len(op.sends), 1)
                                  for p in programs for op in p.ops if isinstance(op, Post) and op.sends)


@pytest.mark.parametrize("name", baselines.BASELINES)
def test_baseline_ranks_replayed_alone_compute_what_a_real_run_computes(name):
    model = tiny_lm()
    x = astra.models.example_inputs(model, 24, batch=2, seed=4)
    method = baselines.build(name, model)
    expected, transports = run_threads(method, x, 2)
    outs, programs, _ = _replay_rank_outputs(method, x, 2)
    for got, want in zip(outs, expected):
        _close(got, want)
    for p, tr in zip(programs, transports):
        assert p.bytes_sent == tr.stats.total_sent()


def test_ring_allreduce_program_has_its_two_n_minus_one_steps():
    world = 4
    values = [torch.randn(10, generator=torch.Generator().manual_seed(r)) for r in range(world)]
    fn = type("Sum", (), {"run_rank": lambda self, x, t: ring_allreduce(values[t.rank], t, "s")})()
    outs, programs, _ = _replay_rank_outputs(fn, None, world)
    for out in outs:
        torch.testing.assert_close(out, sum(values), rtol=1e-6, atol=1e-6)
    chunks = [c.numel() * 4 for c in torch.empty(10).tensor_split(world)]
    for r, p in enumerate(programs):
        receives = [op for op in p.ops if isinstance(op, Receive)]
        posts = [op for op in p.ops if isinstance(op, Post)]
        first_post = next(i for i, op in enumerate(p.ops) if isinstance(op, Post))
        assert all(p.ops.index(op) < first_post for op in receives)  # every step's receive is preposted
        assert len(receives) == len(posts) == 2 * (world - 1)
        left, right = (r - 1) % world, (r + 1) % world
        for s, op in enumerate(posts[: world - 1]):
            assert op.tag == f"s/rs{s}" and op.sends == {right: chunks[(r - s) % world]}
            assert op.receives == {left: chunks[(r - s - 1) % world]}


def test_capture_raises_the_failing_ranks_error_without_hanging():
    class FailsOnRankOne:
        def run_rank(self, inputs, transport):
            if transport.rank == 1:
                raise ArithmeticError("rank one is broken")
            transport.exchange(torch.zeros(2, dtype=torch.uint8), [1], {1: 2}, "x").wait()

    with pytest.raises(ArithmeticError, match="rank one is broken"):
        capture(FailsOnRankOne(), None, 3, timeout_s=60.0)


# --------------------------------------------------------------------------- the wire model


def test_wire_model_counts_frames_acks_and_gloo_framing():
    w = WireModel()
    # 640 B of codes: one data frame (48 B gloo preamble, 32 B astra frame header), the send-ready notice and
    # the ACK of the receiver's notice forward; one ACK of the two frames and the recv-ready notice back
    assert w.frames(640) == 1 and w.frames(1368) == 1 and w.frames(1369) == 2
    assert w.forward_bytes(640) == 640 + 32 + 48 + 66 + (48 + 66) + 66
    assert w.reverse_bytes(640) == 66 + (48 + 66)
    assert w.forward_bytes(0) == 32 + 48 + 66 + 48 + 2 * 66  # an empty message still costs its frames
    big = 1448 * 1000 - 48 - 32  # exactly 1000 data frames
    assert w.forward_bytes(big) == big + 32 + 48 + 66 * 1000 + 48 + 2 * 66
    assert w.reverse_bytes(big) == 66 * math.ceil(1001 / 2) + 48 + 66
    # bulk: (1448 + 66 + 33) / 1448 L2 bytes per payload byte, what the netns counters show
    ratio = (w.forward_bytes(10**8) + w.reverse_bytes(10**8)) / 10**8
    assert ratio == pytest.approx((1448 + 66 + 33) / 1448, rel=1e-4)
    ideal = WireModel.payload_only()
    assert [ideal.forward_bytes(n) for n in (0, 1, 12345)] == [0, 1, 12345]
    assert ideal.reverse_bytes(12345) == 0 and ideal.latency_s == 0 and not ideal.rendezvous


@pytest.mark.parametrize("kwargs,match", [
    (dict(mss=0), "mss must be >= 1"), (dict(frame_bytes=-1), "must be >= 0"),
    (dict(segments_per_ack=0), "segments_per_ack"), (dict(latency_s=-1e-3), "latency_s"),
    (dict(latency_s=math.inf), "latency_s"),
])
def test_wire_model_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WireModel(**kwargs)
    with pytest.raises(ValueError, match="payload must be >= 0"):
        WireModel().forward_bytes(-1)


# --------------------------------------------------------------------------- max-min links


def test_max_min_rates_fill_progressively():
    # f0 and f1 share link A (10); f1 also crosses B (3): f1 = 3 at B, f0 takes the rest of A
    usage = {0: {"A": 1.0}, 1: {"A": 1.0, "B": 1.0}, 2: {"C": 1.0}}
    rates = max_min_rates(usage, {"A": 10.0, "B": 3.0, "C": math.inf})
    assert rates == {0: 7.0, 1: 3.0, 2: math.inf}
    # weights: a flow using 0.5 of a link per unit of rate gets twice the rate of one using 1
    rates = max_min_rates({0: {"A": 1.0}, 1: {"A": 0.5}}, {"A": 12.0})
    assert rates[0] == pytest.approx(8.0) and rates[1] == pytest.approx(8.0)
    rates = max_min_rates({0: {"A": 1.0}, 1: {"A": 1.0, "B": 0.25}}, {"A": 12.0, "B": 1.0})
    assert rates[1] == pytest.approx(4.0) and rates[0] == pytest.approx(8.0)


def test_fluid_links_share_a_symmetric_swap_with_its_acks():
    links = FluidLinks(2, MBPS)
    links.start(0, 0, 1, 1000, 100)
    links.start(1, 1, 0, 1000, 100)
    # each uplink carries one flow's data and the other's ACKs: rate C / 1.1
    assert links.rates()[0] == pytest.approx(1e6 / 1.1, rel=1e-12)
    assert links.next_finish() == pytest.approx(1100 / 1e6, rel=1e-12)
    assert links.advance(links.next_finish()) == [0, 1] and links.active == 0


def test_fluid_links_reject_bad_input():
    with pytest.raises(ValueError, match="topology must be one of star, shared"):
        FluidLinks(2, 10.0, "ring")
    with pytest.raises(ValueError, match="link rate must be positive"):
        FluidLinks(2, 0.0)
    links = FluidLinks(2, 10.0)
    with pytest.raises(ValueError, match="needs forward bytes"):
        links.start(0, 0, 1, 0, 0)
    links.start(0, 0, 1, 10, 0)
    with pytest.raises(ValueError, match="already on the links"):
        links.start(0, 0, 1, 10, 0)
    with pytest.raises(ValueError, match="past the next completion"):
        links.advance(1.0)


# --------------------------------------------------------------------------- the replay: analytic cases


def send(ex, tag, sizes):
    return Post(ex, tag, sizes, {})


def recv(ex, tag, sizes):
    return [Receive(tag, sizes), Post(ex, tag, {}, sizes)]


def test_one_message_on_an_idle_link():
    nbytes = 250_000
    p0 = Program(0, 2, [send(0, "m", {1: nbytes}), Wait(0)])
    p1 = Program(1, 2, [*recv(0, "m", {0: nbytes}), Wait(0)])
    rep = replay([p0, p1], MBPS, wire=IDEAL)
    assert rep.latency_s == seconds(nbytes)
    assert rep.ranks[1].wait_s == seconds(nbytes) and rep.ranks[0].finish_s == 0.0
    assert rep.wire_bytes == nbytes and rep.messages == 1
    # a latency is paid once eager; with rendezvous the receive's notice travels first
    eager = replay([p0, p1], MBPS, wire=WireModel.payload_only(latency_s=0.01))
    assert eager.latency_s == pytest.approx(0.01 + seconds(nbytes), rel=1e-12)
    rdv = replay([p0, p1], MBPS, wire=WireModel.payload_only(latency_s=0.01, rendezvous=True))
    assert rdv.latency_s == pytest.approx(0.02 + seconds(nbytes), rel=1e-12)
    assert rdv.ranks[0].finish_s == pytest.approx(0.01, rel=1e-12)  # the send is handed over when the notice is in
    # the netns model: forward bytes cross at the rate (the ACKs use the idle reverse links)
    w = WireModel()
    netns = replay([p0, p1], MBPS, wire=w)
    assert netns.latency_s == pytest.approx(2 * w.latency_s + seconds(w.forward_bytes(nbytes)), rel=1e-12)
    assert netns.wire_bytes == w.forward_bytes(nbytes) + w.reverse_bytes(nbytes)


def test_two_flows_share_an_uplink():
    small, large = 100_000, 300_000
    p0 = Program(0, 3, [send(0, "a", {1: small}), send(1, "b", {2: large}), Wait(0), Wait(1)])
    p1 = Program(1, 3, [*recv(0, "a", {0: small}), Wait(0)])
    p2 = Program(2, 3, [*recv(0, "b", {0: large}), Wait(0)])
    rep = replay([p0, p1, p2], MBPS, wire=IDEAL)
    # both at C/2 until the small one is through, then the large one alone
    assert rep.ranks[1].finish_s == pytest.approx(2 * seconds(small), rel=1e-12)
    assert rep.ranks[2].finish_s == pytest.approx(seconds(small + large), rel=1e-12)
    # one exchange to both: each destination gets C/2
    p0 = Program(0, 3, [send(0, "x", {1: small, 2: small}), Wait(0)])
    p1, p2 = (Program(r, 3, [*recv(0, "x", {0: small}), Wait(0)]) for r in (1, 2))
    rep = replay([p0, p1, p2], MBPS, wire=IDEAL)
    assert rep.ranks[1].finish_s == rep.ranks[2].finish_s == pytest.approx(2 * seconds(small), rel=1e-12)


@pytest.mark.parametrize("world", [2, 3, 5, 8])
def test_flows_converging_on_one_downlink(world):
    nbytes = 50_000
    p0 = Program(0, world, [*recv(0, "in", {s: nbytes for s in range(1, world)}), Wait(0)])
    senders = [Program(s, world, [send(0, "in", {0: nbytes}), Wait(0)]) for s in range(1, world)]
    rep = replay([p0, *senders], MBPS, wire=IDEAL)
    assert rep.latency_s == pytest.approx((world - 1) * seconds(nbytes), rel=1e-12)
    assert rep.ranks[0].wait_s == rep.latency_s


def test_shared_medium_serializes_what_a_star_sends_in_parallel():
    nbytes = 200_000
    programs = [Program(r, 2, [Receive("s", {1 - r: nbytes}), Post(0, "s", {1 - r: nbytes}, {1 - r: nbytes}), Wait(0)])
                for r in range(2)]
    star = replay(programs, MBPS, wire=IDEAL)
    shared = replay(programs, MBPS, topology="shared", wire=IDEAL)
    assert star.latency_s == pytest.approx(seconds(nbytes), rel=1e-12)
    assert shared.latency_s == pytest.approx(2 * seconds(nbytes), rel=1e-12)
    # with ACKs: star swaps at C / (1 + a), the medium carries everything once
    w = WireModel(latency_s=0.0, rendezvous=False)
    fwd, rev = w.forward_bytes(nbytes), w.reverse_bytes(nbytes)
    assert replay(programs, MBPS, wire=w).latency_s == pytest.approx(seconds(fwd + rev), rel=1e-12)
    assert replay(programs, MBPS, topology="shared", wire=w).latency_s == pytest.approx(
        seconds(2 * (fwd + rev)), rel=1e-12)


@pytest.mark.parametrize("compute_s,nbytes", [(0.5, 100_000), (0.1, 400_000)])
def test_compute_bound_and_link_bound_overlap(compute_s, nbytes):
    """Rank 0 posts, then both compute while the bytes travel: the wait hides behind whichever is longer."""
    p0 = Program(0, 2, [send(0, "m", {1: nbytes}), Compute(compute_s), Wait(0), Compute(0.25)])
    p1 = Program(1, 2, [*recv(0, "m", {0: nbytes}), Compute(compute_s), Wait(0), Compute(0.25)])
    rep = replay([p0, p1], MBPS, wire=IDEAL)
    assert rep.ranks[1].finish_s == pytest.approx(max(compute_s, seconds(nbytes)) + 0.25, rel=1e-12)
    assert rep.ranks[1].wait_s == pytest.approx(max(0.0, seconds(nbytes) - compute_s), abs=1e-12)
    assert rep.ranks[0].finish_s == pytest.approx(compute_s + 0.25, rel=1e-12)


def test_a_wait_that_is_already_satisfied_costs_nothing():
    p0 = Program(0, 2, [send(0, "m", {1: 1000}), Wait(0)])
    p1 = Program(1, 2, [*recv(0, "m", {0: 1000}), Compute(1.0), Wait(0), Compute(0.5)])
    rep = replay([p0, p1], MBPS, wire=WireModel(latency_s=1e-3))
    assert rep.ranks[1].wait_s == 0.0
    assert rep.ranks[1].finish_s == 1.5


def test_zero_byte_messages():
    p0 = Program(0, 2, [send(0, "z", {1: 0}), Wait(0)])
    p1 = Program(1, 2, [*recv(0, "z", {0: 0}), Wait(0)])
    assert replay([p0, p1], MBPS, wire=IDEAL).latency_s == 0.0
    assert replay([p0, p1], MBPS, wire=WireModel.payload_only(latency_s=0.003)).latency_s == pytest.approx(0.003)
    w = WireModel(latency_s=0.0, rendezvous=False)  # an empty gloo message still sends its frames
    assert replay([p0, p1], MBPS, wire=w).latency_s == pytest.approx(seconds(w.forward_bytes(0)), rel=1e-12)


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_ring_all_reduce_pattern(world):
    """2 (N - 1) steps, every rank sending one chunk to its right: each step costs chunk / rate."""
    chunk = 40_000
    programs = []
    for r in range(world):
        right, left = (r + 1) % world, (r - 1) % world
        ops = [Receive(f"s{s}", {left: chunk}) for s in range(2 * (world - 1))]
        for s in range(2 * (world - 1)):
            ops += [Post(s, f"s{s}", {right: chunk}, {left: chunk}), Wait(s), Compute(0.001)]
        programs.append(Program(r, world, ops))
    rep = replay(programs, MBPS, wire=IDEAL)
    steps = 2 * (world - 1)
    assert rep.latency_s == pytest.approx(steps * (seconds(chunk) + 0.001), rel=1e-12)
    # on a shared medium the N flows of a step take turns
    shared = replay(programs, MBPS, topology="shared", wire=IDEAL)
    assert shared.latency_s == pytest.approx(steps * (world * seconds(chunk) + 0.001), rel=1e-12)


def test_messages_between_one_pair_leave_in_order():
    """One TCP connection per pair: the second message waits for the first instead of sharing the link with it."""
    nbytes = 100_000  # 0.1 s
    p0 = Program(0, 2, [send(0, "a", {1: nbytes}), send(1, "b", {1: nbytes}), Wait(0), Wait(1)])
    p1 = Program(1, 2, [*recv(0, "a", {0: nbytes}), *recv(1, "b", {0: nbytes}), Wait(0), Compute(1.0), Wait(1)])
    rep = replay([p0, p1], MBPS, wire=IDEAL)
    assert rep.ranks[1].finish_s == pytest.approx(seconds(nbytes) + 1.0, rel=1e-12)  # shared: 2 x 0.1 s + 1 s
    assert rep.ranks[1].wait_s == pytest.approx(seconds(nbytes), rel=1e-12)


def test_rendezvous_holds_a_message_until_its_receive_is_posted():
    nbytes, late = 80_000, 0.3
    p0 = Program(0, 2, [send(0, "m", {1: nbytes}), Wait(0)])
    p1 = Program(1, 2, [Compute(late), *recv(0, "m", {0: nbytes}), Wait(0)])
    lat = 0.002
    rdv = replay([p0, p1], MBPS, wire=WireModel.payload_only(latency_s=lat, rendezvous=True))
    assert rdv.ranks[0].wait_s == pytest.approx(late + lat, rel=1e-12)  # the sender waits for the notice
    assert rdv.ranks[1].finish_s == pytest.approx(late + 2 * lat + seconds(nbytes), rel=1e-12)
    eager = replay([p0, p1], MBPS, wire=WireModel.payload_only(latency_s=lat))
    assert eager.ranks[0].finish_s == 0.0  # sent long before the receive was posted
    assert eager.ranks[1].finish_s == pytest.approx(max(late, seconds(nbytes) + lat), rel=1e-12)


def test_one_rank_takes_exactly_its_recorded_compute():
    rng = random.Random(0)
    ops = [Compute(rng.uniform(0, 0.1)) for _ in range(50)]
    program = Program(0, 1, ops)
    rep = replay([program], MBPS)
    assert rep.latency_s == pytest.approx(sum(op.seconds for op in ops), rel=1e-12)
    assert rep.ranks[0].compute_s == program.compute_s and rep.ranks[0].wait_s == 0.0


def _astra_like(world, blocks, rng, sizes=None, causal=False):
    """Random programs shaped like ASTRA's: prepost, post to every peer, compute, wait, compute."""
    programs = []
    size = sizes or {r: rng.randint(0, 60_000) for r in range(world)}
    for r in range(world):
        layout = Layout(world * 4, world, causal)
        srcs = {s: size[s] for s in layout.sources(r)}
        dsts = {d: size[r] for d in layout.destinations(r)}
        ops = [Compute(rng.uniform(0, 0.01)), Receive("block0", srcs)] if srcs else [Compute(0.001)]
        for i in range(blocks):
            ops += [Compute(rng.uniform(0, 0.02)), Post(i, f"block{i}", dsts, srcs), Compute(rng.uniform(0, 0.05)),
                    Wait(i)]
            if srcs and i + 1 < blocks:
                ops.append(Receive(f"block{i + 1}", srcs))
            ops.append(Compute(rng.uniform(0, 0.05)))
        programs.append(Program(r, world, ops))
    return programs


@pytest.mark.parametrize("seed", range(6))
def test_replay_invariants_on_random_programs(seed):
    rng = random.Random(seed)
    world = rng.choice([2, 3, 4, 6])
    programs = _astra_like(world, rng.randint(1, 6), rng, causal=seed % 2 == 1)
    wire = WireModel()
    rep = replay(programs, rng.choice([1.0, 10.0, 100.0]), wire=wire)
    for p, t in zip(programs, rep.ranks):
        assert t.compute_s == p.compute_s
        assert t.finish_s == pytest.approx(t.compute_s + t.wait_s, rel=1e-9, abs=1e-12)
        assert t.wait_s >= 0
    assert rep.latency_s == max(t.finish_s for t in rep.ranks)
    sent = [(op.tag, dst, size) for p in programs for op in p.ops if isinstance(op, Post)
            for dst, size in op.sends.items()]
    assert rep.messages == len(sent)
    assert rep.wire_bytes == sum(wire.forward_bytes(s) + wire.reverse_bytes(s) for _, _, s in sent)
    # unlimited links leave the compute's critical path; the same programs replay identically
    unlimited = replay(programs, math.inf, wire=WireModel.payload_only())
    assert unlimited.latency_s <= rep.latency_s
    assert unlimited.latency_s >= max(p.compute_s for p in programs) - 1e-12
    assert replay(programs, 10.0, wire=wire) == replay(programs, 10.0, wire=wire)
    # communication alone: a slower link never finishes sooner
    comm = [Program(p.rank, p.world_size, [op for op in p.ops if not isinstance(op, Compute)]) for p in programs]
    assert replay(comm, 1.0, wire=wire).latency_s >= replay(comm, 10.0, wire=wire).latency_s


def test_replay_names_deadlocks_and_inconsistent_programs():
    waits_forever = Program(1, 2, [*recv(0, "m", {0: 10}), Wait(0)])
    silent = Program(0, 2, [Compute(0.1)])
    with pytest.raises(RuntimeError, match="deadlock: rank 1 waits in exchange 'm' for rank 0's message"):
        replay([silent, waits_forever], MBPS)
    sender = Program(0, 2, [send(0, "m", {1: 10}), Wait(0)])
    with pytest.raises(RuntimeError, match="rank 0 waits in exchange 'm' for rank 1 to post its receive"):
        replay([sender, Program(1, 2, [Compute(0.1)])], MBPS)
    with pytest.raises(ValueError, match="messages nobody receives: rank 0 -> rank 1 in exchange 'm'"):
        replay([sender, Program(1, 2, [Compute(0.1)])], MBPS, wire=IDEAL)
    with pytest.raises(ValueError, match="sends 10 bytes, the receiver expects 12"):
        replay([sender, Program(1, 2, [*recv(0, "m", {0: 12}), Wait(0)])], MBPS)
    with pytest.raises(ValueError, match="program 1 is rank 0 of 2"):
        replay([sender, sender], MBPS)
    with pytest.raises(ValueError, match="waits for exchange 3 before posting it"):
        replay([Program(0, 1, [Wait(3)])], MBPS)
    with pytest.raises(ValueError, match="without a matching posted receive"):
        replay([Program(0, 2, []), Program(1, 2, [Post(0, "m", {}, {0: 5}), Wait(0)])], MBPS)
