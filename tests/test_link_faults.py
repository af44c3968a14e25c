"""Link faults: rate schedules (parsing, the bits integrated over the steps, the thread that applies them), the
TCP loss model against its closed forms, the sim link's delay, loss and schedule against the modelled times,
the bench's latency percentiles, and the refusals of bad faults on the command line."""
import math
import random
import re
import threading
import time

import pytest
import torch
from bench_rows import make_row

import astra_cli as cli
from astra.transport import LoopbackHub, PeerError
from astra_lab.bench import report
from astra_lab.bench.config import BenchConfig
from astra_lab.bench.rank import row_fields
from astra_lab.bench.stats import latency_percentiles, nearest_rank
from astra_lab.links import RateSchedule, ScheduleThread, SimLinkTransport, TcpLoss, loss_permille
from astra_lab.links import loss as loss_mod

EMPTY = torch.empty(0, dtype=torch.uint8)


def random_bytes(n, seed):
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- rate schedules


def test_schedule_parses_and_prints_its_spec():
    s = RateSchedule.parse(" 0:50, 2:5 ,4.5:50")
    assert s.steps == ((0.0, 50.0), (2.0, 5.0), (4.5, 50.0))
    assert s.spec == "0:50,2:5,4.5:50" and s.first_mbps == 50.0
    assert [s.rate_at(t) for t in (-1.0, 0.0, 1.999, 2.0, 4.4, 4.5, 1e9)] == [50, 50, 50, 5, 5, 50, 50]


@pytest.mark.parametrize(
    "spec,match",
    [
        ("", r"step '' is not seconds:Mbps"),
        ("0:50,2", r"step '2' is not seconds:Mbps"),
        ("0:50:1", r"step '0:50:1' is not seconds:Mbps"),
        ("0:fast", r"step '0:fast' is not two numbers"),
        ("1:50,2:5", r"starts at offset 0.*got 1 s first"),
        ("0:50,2:5,2:10", r"offsets must increase: 2 s follows 2 s"),
        ("0:50,3:5,2:10", r"offsets must increase: 2 s follows 3 s"),
        ("0:50,2:0", r"step 2:0: rates must be positive"),
        ("0:-5", r"rates must be positive"),
        ("0:50,inf:5", r"not finite"),
        ("0:nan", r"not finite"),
    ],
)
def test_bad_schedules_are_refused_naming_the_problem(spec, match):
    with pytest.raises(ValueError, match=match):
        RateSchedule.parse(spec)


def _transmit_end_oracle(steps, start, bits, dt=2e-5):
    """Step time forward in slices of ``dt`` at the rate of each slice's start: the integral, within a few dt
    per change of rate."""
    k, left = 0, bits
    while True:
        t = start + k * dt
        k += 1
        rate = steps[0][1]
        for offset, mbps in steps:
            if offset <= t:
                rate = mbps
        sent = rate * 1e6 * dt
        if sent >= left:
            return t + left / (rate * 1e6)
        left -= sent


def test_transmit_end_integrates_the_bits_over_the_steps():
    s = RateSchedule.parse("0:0.1,0.1:0.2,0.3:0.05")
    # inside one step: bits / rate
    assert s.transmit_end(0.0, 5_000) == pytest.approx(0.05)
    # across a change: 10 kbit in the first 0.1 s at 0.1 Mbps, the other 10 kbit at 0.2 Mbps in 0.05 s
    assert s.transmit_end(0.0, 20_000) == pytest.approx(0.15)
    # across two changes: 0.1 -> 0.3 s carries 40 kbit, then 5 kbit at 0.05 Mbps
    assert s.transmit_end(0.1, 45_000) == pytest.approx(0.4)
    # before the start: the first rate; after the last change: the last rate, for ever
    assert s.transmit_end(-1.0, 10_000) == pytest.approx(-0.9)
    assert s.transmit_end(10.0, 5_000) == pytest.approx(10.1)
    rng = random.Random(0)
    for _ in range(30):
        start, bits = rng.uniform(-0.2, 0.5), rng.uniform(1, 60_000)
        assert s.transmit_end(start, bits) == pytest.approx(_transmit_end_oracle(s.steps, start, bits), abs=2e-4)


def test_schedule_thread_applies_the_steps_at_their_offsets_and_restores_the_first_rate():
    applied = []
    epoch = time.monotonic()
    thread = ScheduleThread(RateSchedule.parse("0:50,0.1:5,0.2:20"),
                            lambda mbps: applied.append((time.monotonic() - epoch, mbps)), epoch)
    thread.join()
    assert [m for _, m in applied] == [5, 20]
    assert 0.1 <= applied[0][0] < 0.18 and 0.2 <= applied[1][0] < 0.28
    thread.stop()
    assert [m for _, m in applied] == [5, 20, 50]


def test_schedule_thread_stopped_early_skips_the_rest_and_restores():
    applied = []
    thread = ScheduleThread(RateSchedule.parse("0:50,0.05:5,30:20"), applied.append, time.monotonic())
    time.sleep(0.15)
    start = time.monotonic()
    thread.stop()
    assert time.monotonic() - start < 1.0  # did not wait for the step at 30 s
    assert applied == [5, 50]
    unchanged = []
    ScheduleThread(RateSchedule.parse("0:50,30:5"), unchanged.append, time.monotonic()).stop()
    assert unchanged == []  # still at the first rate: nothing to restore


def test_schedule_thread_raises_a_failed_change_on_stop():
    def broken(mbps):
        raise RuntimeError(f"tc refused {mbps}")

    thread = ScheduleThread(RateSchedule.parse("0:50,0.01:5"), broken, time.monotonic())
    thread.join()
    with pytest.raises(RuntimeError, match="tc refused 5"):
        thread.stop()


# --------------------------------------------------------------------------- the TCP loss model


@pytest.mark.parametrize("pct,want", [(0, 0), (2, 20), (0.25, 2), (0.26, 3), (12.34, 123), (100, 1000)])
def test_loss_is_applied_in_steps_of_a_tenth_of_a_percent(pct, want):
    assert loss_permille(pct) == want


@pytest.mark.parametrize("pct", [-1, -0.01, 100.01, 120, math.nan])
def test_loss_outside_a_percentage_is_refused(pct):
    with pytest.raises(ValueError, match="loss must be a percentage in 0..100"):
        loss_permille(pct)


def test_repair_times_follow_the_rto_backoff():
    m = TcpLoss(10, seed=0, delay_s=0.05)
    rto = 0.2 + 0.1  # the minimum RTO plus the round trip
    assert m.repair_s(0, fast=False) == 0.0
    assert m.repair_s(1, fast=False) == pytest.approx(rto)
    assert m.repair_s(3, fast=False) == pytest.approx(rto * (1 + 2 + 4))
    assert m.repair_s(1, fast=True) == pytest.approx(0.1)  # fast retransmit: one round trip
    assert m.repair_s(2, fast=True) == pytest.approx(0.1 + rto)
    assert m.repair_s(15, fast=False) == pytest.approx(sum(min(rto * 2**i, 120.0) for i in range(15)))
    assert m.repair_s(16, fast=False) == math.inf  # past tcp_retries2: never delivered


def test_one_packet_messages_are_late_as_the_closed_form_says():
    """One packet, loss p: late 0 with probability 1 - p, one RTO with p (1 - p), three with p^2 (1 - p);
    mean RTO p / (1 - 2p)."""
    p, n = 0.2, 40_000
    m = TcpLoss(100 * p, seed=1)
    late = [m.late_s(640) for _ in range(n)]
    share = {k: sum(1 for x in late if x == pytest.approx(k * 0.2)) / n for k in (0, 1, 3)}
    assert share[0] == pytest.approx(1 - p, abs=0.01)
    assert share[1] == pytest.approx(p * (1 - p), abs=0.01)
    assert share[3] == pytest.approx(p * p * (1 - p), abs=0.005)
    assert sum(late) / n == pytest.approx(0.2 * p / (1 - 2 * p), rel=0.05)


def test_a_message_of_many_packets_is_late_by_its_slowest_packet():
    """n packets: the last DUPACK_THRESHOLD ones wait for a timeout when lost, the others for a round trip
    (first loss); P(no loss at all) = (1 - p)^n."""
    p, packets, delay = 0.05, 10, 0.01
    m = TcpLoss(100 * p, seed=2, delay_s=delay)
    nbytes = packets * loss_mod.MSS_BYTES
    assert loss_mod.packets(nbytes) == packets and loss_mod.packets(nbytes + 1) == packets + 1
    assert loss_mod.packets(0) == 1
    n = 20_000
    late = [m.late_s(nbytes) for _ in range(n)]
    assert sum(1 for x in late if x == 0) / n == pytest.approx((1 - p) ** packets, abs=0.01)
    # a tail packet is never lost and the others at most once (fast retransmit), with probability
    # (1 - p)^3 (1 - p^2)^7; otherwise the message waits for a timeout at least
    head = packets - loss_mod.DUPACK_THRESHOLD
    no_timeout = (1 - p) ** 3 * (1 - p * p) ** head
    rto = 0.2 + 2 * delay
    assert sum(1 for x in late if x >= rto - 1e-12) / n == pytest.approx(1 - no_timeout, abs=0.01)
    # one round trip late: no timeout, and at least one of the head packets lost once
    one_rtt = sum(1 for x in late if x == pytest.approx(2 * delay)) / n
    assert one_rtt == pytest.approx(no_timeout - (1 - p) ** packets, abs=0.01)


def test_loss_draws_are_deterministic_by_seed():
    def draws(seed):
        m = TcpLoss(30, seed=seed)
        return [m.late_s(100) for _ in range(200)]

    assert draws("7/0->1") == draws("7/0->1")
    assert draws("7/0->1") != draws("8/0->1")
    assert TcpLoss(0, seed=0).late_s(10**7) == 0.0
    assert TcpLoss(100, seed=0).late_s(1) == math.inf


# --------------------------------------------------------------------------- the sim link's faults


def sim_links(world=2, timeout_s=10.0, **kw):
    return [SimLinkTransport(t, **kw) for t in LoopbackHub(world).transports(timeout_s)]


def _send(links, src, dst, nbytes, tag, seed=0):
    payload = random_bytes(nbytes, seed)
    start = time.monotonic()
    links[src].exchange(payload, [dst], {}, tag)
    got = links[dst].exchange(EMPTY, [], {src: nbytes}, tag).wait()
    elapsed = time.monotonic() - start
    assert torch.equal(got[src], payload)
    return elapsed


def test_sim_delay_is_one_way_per_message():
    """A tiny message at 1 Gbps takes the delay; two messages to two ranks queue on the uplink, each then
    takes the delay once (it is propagation, not occupancy)."""
    delay = 0.1
    assert delay <= _send(sim_links(rate_mbps=1000.0, delay_ms=100.0), 0, 1, 1, "d") < delay + 0.15
    nbytes, mbps = 2000, 0.1
    tx = nbytes * 8 / (mbps * 1e6)  # 0.16 s
    links = sim_links(3, rate_mbps=mbps, delay_ms=100.0)
    payload = random_bytes(nbytes, 1)
    start = time.monotonic()
    links[0].exchange(payload, [1, 2], {}, "m")
    h1 = links[1].exchange(EMPTY, [], {0: nbytes}, "m")
    h2 = links[2].exchange(EMPTY, [], {0: nbytes}, "m")
    h1.wait()
    t1 = time.monotonic() - start
    h2.wait()
    t2 = time.monotonic() - start
    assert tx + delay <= t1 < tx + delay + 0.15, t1
    assert 2 * tx + delay <= t2 < 2 * tx + delay + 0.15, t2


def test_sim_loss_delays_messages_by_the_drawn_repairs_in_order():
    """30 % loss, one-packet messages: each message arrives once its link time plus the model's late_s
    (drawn from the same seeded generator the link uses for that connection) have passed, and a late
    message holds back the next."""
    pct, seed, n, nbytes = 30.0, 5, 8, 200
    oracle = TcpLoss(pct, seed=f"{seed}/0->1")
    late = [oracle.late_s(nbytes) for _ in range(n)]
    assert any(x > 0 for x in late) and any(x == 0 for x in late)  # the seed exercises both
    links = sim_links(rate_mbps=1000.0, loss_pct=pct, seed=seed)
    start = time.monotonic()
    for i in range(n):
        links[0].exchange(random_bytes(nbytes, i), [1], {}, f"m{i}")
    delivered = []
    for i in range(n):
        got = links[1].exchange(EMPTY, [], {0: nbytes}, f"m{i}").wait()
        delivered.append(time.monotonic() - start)
        assert torch.equal(got[0], random_bytes(nbytes, i))
    for i, t in enumerate(delivered):  # in order: no earlier than the latest repair so far
        due = max(late[: i + 1])
        assert due <= t < due + 0.15, (i, t, late)


def test_sim_loss_draws_follow_the_seed():
    def lateness(seed):
        links = sim_links(rate_mbps=1000.0, loss_pct=40.0, seed=seed)
        return [links[1].loss_late_s(0, 100) for _ in range(50)]

    assert lateness(3) == lateness(3) != lateness(4)
    links = sim_links(rate_mbps=1000.0, loss_pct=40.0, seed=3)
    assert [links[0].loss_late_s(1, 100) for _ in range(50)] != lateness(3)  # each direction draws its own


def test_sim_total_loss_is_a_peer_error_after_the_timeout():
    links = sim_links(timeout_s=0.3, rate_mbps=1000.0, loss_pct=100.0)
    links[0].exchange(random_bytes(10, 0), [1], {}, "lost")
    handle = links[1].exchange(EMPTY, [], {0: 10}, "lost")
    start = time.monotonic()
    with pytest.raises(PeerError, match=r"peer rank 0 failed in exchange 'lost': timed out after 0.3 s.*100 % loss"):
        handle.wait()
    assert 0.3 <= time.monotonic() - start < 0.6
    assert links[1].failure is not None  # the transport refuses further use


def test_sim_follows_a_rate_schedule_across_its_change():
    """20 kbit from the schedule's start: 10 kbit in 0.1 s at 0.1 Mbps, the rest at 1 Mbps in 0.01 s."""
    nbytes = 2500
    links = sim_links(rate_mbps=0.1)
    epoch = time.monotonic()
    for link in links:
        link.follow(RateSchedule.parse("0:0.1,0.1:1"), epoch)
    links[0].exchange(random_bytes(nbytes, 0), [1], {}, "m")
    links[1].exchange(EMPTY, [], {0: nbytes}, "m").wait()
    elapsed = time.monotonic() - epoch
    assert 0.11 <= elapsed < 0.19, elapsed  # a constant 0.1 Mbps would take 0.2 s
    for link in links:
        link.set_rate(0.1)  # the schedule ends: a constant rate again
    assert links[0].transmit_end(epoch + 5.0, nbytes) == pytest.approx(epoch + 5.2)


def test_sim_rejects_a_negative_delay():
    (inner,) = LoopbackHub(1).transports()
    with pytest.raises(ValueError, match="delay must be >= 0 ms"):
        SimLinkTransport(inner, 10.0, delay_ms=-1.0)
    with pytest.raises(ValueError, match="loss must be a percentage"):
        SimLinkTransport(inner, 10.0, loss_pct=120.0)


# --------------------------------------------------------------------------- percentiles


def test_nearest_rank_percentiles():
    values = [float(v) for v in range(1, 101)]
    random.Random(0).shuffle(values)
    assert nearest_rank(values, 50) == 50 and nearest_rank(values, 90) == 90 and nearest_rank(values, 99) == 99
    assert nearest_rank(values, 100) == 100 and nearest_rank(values, 0.5) == 1
    assert nearest_rank([3.0, 1.0, 2.0], 50) == 2.0 and nearest_rank([3.0, 1.0, 2.0], 99) == 3.0
    assert nearest_rank([4.0, 1.0, 3.0, 2.0], 50) == 2.0  # the lower middle run
    assert nearest_rank([7.0], 99) == 7.0
    rng = random.Random(1)
    for _ in range(50):  # against the definition: the smallest value with at least q % of the values <= it
        vals = [rng.uniform(0, 1) for _ in range(rng.randint(1, 60))]
        q = rng.choice([50, 90, 99, rng.uniform(1, 100)])
        want = min(v for v in vals if sum(1 for u in vals if u <= v) >= q / 100 * len(vals))
        assert nearest_rank(vals, q) == want
    with pytest.raises(ValueError, match="no values"):
        nearest_rank([], 50)
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 100\]"):
        nearest_rank([1.0], 0)


def test_row_fields_carry_the_percentiles_of_the_slowest_rank_per_run():
    rank0 = [{"latency": t, "wait": 0.0, "sent": 0, "l2": None} for t in (0.5, 0.9, 0.1, 0.7, 0.3)]
    rank1 = [dict(r, latency=r["latency"] + (1.0 if i == 2 else 0.0)) for i, r in enumerate(rank0)]
    row = row_fields(rank0, [rank0, rank1])
    assert row["latency_runs_s"] == [0.5, 0.9, 1.1, 0.7, 0.3]
    assert row["latency_s"] == 0.7  # the median run, as before
    assert row == {**row, **latency_percentiles(row["latency_runs_s"])}
    assert (row["latency_p50_s"], row["latency_p90_s"], row["latency_p99_s"], row["latency_max_s"]) == \
        (0.7, 1.1, 1.1, 1.1)


def test_markdown_shows_p50_and_p99_only_where_loss_or_a_schedule_spreads_the_runs():
    def row(**faults):
        return dict(make_row("astra", 10.0, 0.8, groups=1), speedup_vs_single=1.5, latency_p50_s=0.777,
                    latency_p99_s=1.234, transport="gloo", **faults)

    plain = report.markdown([row(loss_pct=0.0, delay_ms=0.0)])
    assert "p99" not in plain and "1.234" not in plain
    lossy = report.markdown([row(loss_pct=2.0, delay_ms=0.0)])
    assert "### gpt2-small, N = 2, link sim (star), 2 % loss" in lossy
    assert "| latency (s) | p50 (s) | p99 (s) | speedup" in lossy and "| 0.800 | 0.777 | 1.234 | 1.50x |" in lossy
    sched = report.markdown([row(loss_pct=0.0, delay_ms=5.0, rate_schedule="0:50,2:5")])
    assert "5 ms delay, rate schedule 0:50,2:5 (s:Mbps)" in sched and "| 0.777 | 1.234 |" in sched
    both = report.markdown([row(loss_pct=0.0), row(loss_pct=5.0)])  # different faults: separate tables
    assert both.count("### gpt2-small") == 2


# --------------------------------------------------------------------------- configuration and command line


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(loss_pct=120.0), r"loss must be a percentage in 0..100, got 120"),
        (dict(loss_pct=-1.0), r"loss must be a percentage in 0..100, got -1"),
        (dict(delay_ms=-3.0), r"delay must be >= 0 ms"),
        (dict(rate_schedule="0:50,2"), r"rate schedule '0:50,2': step '2' is not seconds:Mbps"),
        (dict(rate_schedule="2:50"), r"starts at offset 0"),
        (dict(transport="carrier"), r"transport must be one of gloo, udp, got 'carrier'"),
        (dict(transport="udp", links=["emulated"]), r"--transport udp: the rank emulation models TCP"),
        (dict(transport="udp", links=["sim"], loss_pct=2.0), r"--transport udp --loss: the sim link models TCP"),
        (dict(links=["netns"], delay_ms=20.0), r"--delay: netns links cannot delay packets.*netem.*--link sim"),
        (dict(links=["sim", "emulated"], loss_pct=2.0), r"--loss: the emulated link\(s\) model no faults"),
        (dict(links=["real"], rate_schedule="0:5"), r"--rate-schedule: the real link\(s\) model no faults"),
    ],
)
def test_bench_config_refuses_bad_faults(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BenchConfig(**kwargs).validate()


def test_bench_config_sweeps_the_schedules_first_rate_alone():
    assert BenchConfig(bandwidths=[10.0, 100.0]).bandwidths_swept == [100.0, 10.0]
    cfg = BenchConfig(rate_schedule="0:50,2:5", loss_pct=2.0, delay_ms=3.0)
    cfg.validate()
    assert cfg.bandwidths_swept == [50.0]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--loss", "120"], r"loss must be a percentage in 0..100, got 120"),
        (["--loss", "-1"], r"loss must be a percentage in 0..100, got -1"),
        (["--rate-schedule", "0:50,1:fast"], r"step '1:fast' is not two numbers"),
        (["--rate-schedule", "0:50,2:5,1:50"], r"offsets must increase: 1 s follows 2 s"),
        (["--rate-schedule", "0:50", "--bandwidth", "10"], r"--rate-schedule sets the rates; drop --bandwidth"),
        (["--link", "netns", "--delay", "20"], r"netns links cannot delay packets.*--link sim models"),
        (["--link", "emulated", "--loss", "2"], r"the emulated link\(s\) model no faults"),
    ],
)
def test_cli_bench_refuses_bad_faults_before_any_work(argv, match, tmp_path, capsys, monkeypatch):
    from astra_lab.bench import driver

    monkeypatch.setattr(driver, "run", lambda cfg: pytest.fail("the sweep started"))
    assert cli.main(["bench", *argv, "--json", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astra bench:") and re.search(match, err), err
    assert not (tmp_path / "b.json").exists()


def test_cli_bench_passes_the_faults_to_the_sweep(tmp_path, monkeypatch):
    from astra_lab.bench import driver

    seen = []
    monkeypatch.setattr(driver, "run", lambda cfg: seen.append(cfg) or [])
    monkeypatch.setattr(driver, "write_outputs", lambda cfg, rows: {})
    assert cli.main(["bench", "--link", "sim", "--loss", "2.5", "--delay", "4", "--rate-schedule", "0:50,2:5",
                     "--transport", "gloo", "--json", str(tmp_path / "b.json")]) == 0
    (cfg,) = seen
    assert (cfg.loss_pct, cfg.delay_ms, cfg.rate_schedule, cfg.transport) == (2.5, 4.0, "0:50,2:5", "gloo")
    assert cli.main(["bench", "--link", "sim", "--json", str(tmp_path / "b.json")]) == 0
    assert seen[1].bandwidths == BenchConfig().bandwidths and seen[1].loss_pct == 0.0
    assert seen[1].rate_schedule is None


@pytest.mark.parametrize(
    "argv,match",
    [
        (["up", "--loss", "120"], r"loss must be a percentage in 0..100, got 120"),
        (["up", "--loss", "-1"], r"loss must be a percentage in 0..100, got -1"),
        (["up", "--delay", "20"], r"netns links cannot delay packets.*no netem.*--link sim --delay"),
        (["up", "--rate-schedule", "0:10,x"], r"step 'x' is not seconds:Mbps"),
        (["up", "--rate-schedule", "0:10,1:5", "--rate", "10"], r"--rate-schedule sets the rates; drop --rate"),
        (["rate", "--loss", "2"], r"--loss: only `astra net up` takes faults"),
    ],
)
def test_cli_net_refuses_bad_faults_before_touching_anything(argv, match, capsys, monkeypatch):
    from astra_lab.links import netns as netns_mod

    monkeypatch.setattr(netns_mod, "_run", lambda *a, **k: pytest.fail(f"ran {a}"))
    assert cli.main(["net", *argv, "--name", "tz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astra net:") and re.search(match, err), err


def test_netns_loss_without_nft_names_the_package(monkeypatch):
    from astra_lab.links import NetnsError, NetnsLink
    from astra_lab.links import netns as netns_mod

    monkeypatch.setattr(netns_mod.shutil, "which", lambda tool: None if tool == "nft" else "/usr/sbin/" + tool)
    monkeypatch.setattr(netns_mod, "require_netns", lambda: None)
    monkeypatch.setattr(netns_mod, "_run", lambda *a, **k: pytest.fail(f"ran {a}"))
    with pytest.raises(NetnsError, match=r"needs `nft` \(Debian package nftables\)"):
        NetnsLink("tz").up(10.0, loss_pct=2.0)


def test_bench_link_runs_the_schedule_on_every_sim_rank_from_rank_0s_clock():
    """The bench's rank-side link: start_schedule hands rank 0's clock to every rank, whose sim links follow
    the schedule; end_schedule puts them back at the first rate."""
    from types import SimpleNamespace

    from astra_lab.bench import rank as bench_rank

    spec = SimpleNamespace(link="sim", rate_schedule="0:0.1,0.2:10", topology="star")
    links = sim_links(rate_mbps=0.1)
    out = {}

    def work(r):
        link = bench_rank._Link(spec, links[r])
        link.start_schedule()
        out[r] = (links[r].epoch, links[r].schedule.spec)
        link.end_schedule()
        out[r] += (links[r].schedule.spec,)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[0] == out[1] and out[0][1:] == ("0:0.1,0.2:10", "0:0.1")
    assert 0 < time.monotonic() - out[0][0] < 5.0
    none = bench_rank._Link(SimpleNamespace(link="sim", rate_schedule=None, topology="star"), links[0])
    none.start_schedule()  # nothing to follow: no exchange, no change
    assert links[0].schedule.spec == "0:0.1"


@pytest.mark.slow
def test_astra_bench_with_faults_on_sim_links_end_to_end(tmp_path):
    """``astra bench --link sim --loss --delay --rate-schedule``: one point at the schedule's first rate, rows
    with their faults, transport and percentiles, a Markdown table with p50/p99, runs no faster than the
    delay allows."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "b.json"
    cmd = [sys.executable, "-m", "astra", "bench", "--model", "gpt2", "--layers", "1", "--tokens", "64", "--ranks",
           "2", "--link", "sim", "--methods", "astra,single", "--groups", "1", "--codebook-size", "16",
           "--repeat", "4", "--loss", "5", "--delay", "30", "--rate-schedule", "0:100,0.3:10", "--json", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", ASTRA_CACHE=str(tmp_path / "cache"), TMPDIR=str(tmp_path))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["single", "astra"]
    for r in rows:
        assert (r["bandwidth_mbps"], r["loss_pct"], r["delay_ms"], r["rate_schedule"], r["transport"]) == \
            (100.0, 5.0, 30.0, "0:100,0.3:10", "gloo")
        runs = r["latency_runs_s"]
        assert len(runs) == 4
        assert r["latency_p50_s"] == sorted(runs)[1] and r["latency_s"] == sorted(runs)[2]
        assert r["latency_p90_s"] == r["latency_p99_s"] == r["latency_max_s"] == max(runs)
    # GPT-2 over 2 ranks: rank 0 sends its codes to rank 1 once per block, 30 ms one way at least
    assert min(rows[1]["latency_runs_s"]) >= 0.03
    md = (tmp_path / "b.md").read_text()
    assert "link sim (star), 5 % loss, 30 ms delay, rate schedule 0:100,0.3:10 (s:Mbps)" in md
    assert "| p50 (s) | p99 (s) |" in md
