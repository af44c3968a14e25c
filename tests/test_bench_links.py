"""The benchmark/link layer: the sim link model, bad input, reports, an end-to-end
``astra bench`` on sim links, and ``astra net`` namespaces (root)."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

import astra_cli as cli
import astra_kernels as ak
from astra.transport import LoopbackHub
from astra_lab.bench import report
from astra_lab.bench.config import METHODS, BenchConfig
from astra_lab.links import NetnsError, NetnsLink, SimLinkTransport, require_netns
from astra_lab.links import netns as netns_mod

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """``astra bench`` sets torch's thread count in-process: restore it for the tests that follow."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- sim links


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


def test_sim_seconds_and_set_rate(tmp_path):
    (s,) = sim_links(1, rate_mbps=8.0)
    assert s.seconds(1000) == pytest.approx(1000 * 8 / 8e6, rel=1e-12)
    s.set_rate(80.0)
    assert s.seconds(1000) == pytest.approx(1000 * 8 / 80e6, rel=1e-12)
    (w,) = sim_links(1, rate_mbps=8.0, topology="shared", medium_factor=2.0, medium_path=str(tmp_path / "m"))
    assert w.seconds(1000) == pytest.approx(2 * 1000 * 8 / 8e6, rel=1e-12)
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


def test_netns_without_cap_net_admin_refuses_clearly(monkeypatch):
    """Root in a container without CAP_NET_ADMIN: the probe namespace fails, and the error says why."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns_mod.shutil, "which", lambda tool: "/usr/sbin/" + tool)
    calls = []

    def no_cap(*cmd, check=True):
        calls.append(cmd)
        if cmd[:3] == ("ip", "netns", "add"):
            raise NetnsError(f"`{' '.join(cmd)}` failed: mount --make-shared /run/netns failed: Operation not permitted")
        return ""

    monkeypatch.setattr(netns_mod, "_run", no_cap)
    with pytest.raises(NetnsError, match="CAP_NET_ADMIN.*Operation not permitted"):
        require_netns()
    assert len(calls) == 1  # nothing else attempted


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


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("methods", ["astra", "foo"], r"unknown method\(s\) foo; choose from astra"),
        ("links", ["sim", "carrier-pigeon"], r"unknown link\(s\) carrier-pigeon"),
        ("bandwidths", [10.0, 0.0], "bandwidths must be positive"),
        ("bandwidths", [-1.0], "bandwidths must be positive"),
        ("ranks", [2, 0], "ranks must be >= 1"),
        ("topology", "ring", "topology must be star or shared, got 'ring'"),
        ("repeat", 0, "repeat must be >= 1, got 0"),
        ("table_budget_mib", -1.0, "table budget must be >= 0 MiB"),
        ("latency_ms", -0.5, "latency must be >= 0 ms"),
    ],
)
def test_bench_config_rejects(field, value, match):
    cfg = BenchConfig(**{field: value})
    with pytest.raises(ValueError, match=match):
        cfg.validate()


def test_bench_config_defaults_are_valid():
    BenchConfig().validate()
    BenchConfig(methods=list(METHODS), links=["sim", "netns", "real", "emulated"], topology="shared",
                table_budget_mib=0, ranks=[2, 4, 8, 16]).validate()


def test_cli_bench_unknown_method_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "astra", "bench", "--methods", "foo", "--json", str(tmp_path / "b.json")],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown method(s) foo" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--link", "carrier-pigeon"], r"unknown link\(s\) carrier-pigeon; choose sim, netns, real, emulated"),
        (["--bandwidth", "0"], "bandwidths must be positive"),
        (["--ranks", "0"], "ranks must be >= 1"),
        (["--repeat", "0"], "repeat must be >= 1"),
        (["--table-budget-mib", "-2"], "table budget must be >= 0 MiB"),
        (["--model", "bert"], "unknown model 'bert'"),
        (["--ranks", "1"], "nothing to compare"),
        (["--methods", "single"], "nothing to compare"),
    ],
)
def test_cli_bench_bad_input_exits_2_in_process(argv, match, tmp_path, capsys):
    assert cli.main(["bench", *argv, "--json", str(tmp_path / "b.json")]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "b.json").exists()


def test_cli_bench_unparsable_list_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--bandwidth", "10,fast"])
    assert info.value.code == 2
    assert "comma-separated list of float" in capsys.readouterr().err


@pytest.fixture
def not_root(monkeypatch):
    """Pretend to be an ordinary user (netns.require_netns reads os.geteuid)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)


def _probe_name():
    return f"t{os.getpid() % 100000}"


def test_netns_without_root_refuses_clearly(not_root):
    with pytest.raises(NetnsError, match="need root"):
        require_netns()
    link = NetnsLink(_probe_name())
    try:
        with pytest.raises(NetnsError, match="need root.*--link sim"):
            link.up(10.0)
    finally:
        _assert_nothing_created(link)


def _assert_nothing_created(link):
    """Remove anything a (buggy) up() created despite the refusal; needs the real root."""
    if shutil.which("ip") and os.getuid() == 0:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        leaked = [ns for ns in listed if ns.startswith(link.name + "-")]
        for ns in leaked:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        assert not leaked, f"namespaces created although root was refused: {leaked}"


def test_cli_net_up_without_root_exits_2(not_root, capsys):
    name = _probe_name()
    try:
        assert cli.main(["net", "up", "--name", name, "--rate", "10"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("astra net:") and "root" in err
    finally:
        _assert_nothing_created(NetnsLink(name))


def test_cli_bench_netns_without_root_exits_2(not_root, tmp_path, capsys):
    assert cli.main(["bench", "--link", "netns", "--json", str(tmp_path / "b.json")]) == 2
    assert "need root" in capsys.readouterr().err


def test_netns_requires_tc(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns_mod.shutil, "which", lambda tool: None if tool == "tc" else "/usr/sbin/" + tool)
    with pytest.raises(NetnsError, match="need `tc`.*iproute2"):
        require_netns()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="Astra"), "link name 'Astra'"),
        (dict(name="much-too-long"), "1-9 lowercase"),
        (dict(name="a_b"), "link name"),
        (dict(ranks=0), r"ranks must be in 1\.\.250"),
        (dict(ranks=251), r"ranks must be in 1\.\.250"),
    ],
)
def test_netns_link_rejects_bad_names_and_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NetnsLink(**kwargs)


def test_netns_set_rate_rejects_non_positive_before_running_tc(monkeypatch):
    monkeypatch.setattr(netns_mod, "_run", lambda *a, **k: pytest.fail(f"ran {a}"))
    with pytest.raises(ValueError, match="rate must be positive"):
        NetnsLink("x").set_rate(0)


def test_netns_names_addresses_and_burst():
    link = NetnsLink("ab", ranks=3, net=7)
    assert [link.namespace(r) for r in range(3)] == ["ab-r0", "ab-r1", "ab-r2"]
    assert link.switch == "ab-sw" and link.host_if(2) == "abh2" and link.port_if(0) == "abp0"
    assert [link.address(r) for r in range(3)] == ["10.77.7.1", "10.77.7.2", "10.77.7.3"]
    assert link.exec_prefix(1) == ["ip", "netns", "exec", "ab-r1"]
    # max(one frame, rate x 0.3 ms)
    assert netns_mod.burst_bytes(10) == 1600
    assert netns_mod.burst_bytes(1000) == int(1000e6 / 8 * 0.3e-3) == 37500
    # the shared medium counts everything on its one bucket; a star sums the ranks' uplinks
    counters = {"abh0": 5, "abh1": 7, "abh2": 11, "abp0": 100, "abifb": 1000}
    assert link.uplink_bytes(counters) == 23 and link.uplink_bytes(counters, rank=1) == 7
    assert NetnsLink("ab", ranks=3, shared=True).uplink_bytes(counters) == 1000


# --------------------------------------------------------------------------- report


def _row(method, bw, latency, *, groups=None, ranks=2, wait=0.0, sent=(0, 0), formulation=None, **extra):
    row = {
        "model": "gpt2-small", "method": method, "ranks": ranks, "setting_ranks": 2, "groups": groups,
        "bandwidth_mbps": bw, "link": "sim", "topology": "star", "latency_s": latency, "comm_wait_s": wait,
        "compute_s": latency - wait, "bytes_on_wire": sum(sent), "bytes_sent_per_rank": list(sent), **extra,
    }
    if formulation:
        row["remote_formulation"] = formulation
    return row


def _synthetic_rows():
    rows = []
    for bw, single, astra, sp in [(10.0, 1.234, 0.611, 2.875), (100.0, 1.201, 0.598, 0.777)]:
        rows.append(_row("single", bw, single, ranks=1))
        rows.append(_row("astra", bw, astra, groups=16, wait=0.011, sent=(4096, 0), formulation=["codewords", "tokens"]))
        rows.append(_row("sp_fp32", bw, sp, wait=sp - 0.5, sent=(98304, 0)))
    for r in rows:
        single = next(s for s in rows if s["method"] == "single" and s["bandwidth_mbps"] == r["bandwidth_mbps"])
        r["speedup_vs_single"] = single["latency_s"] / r["latency_s"]
    return rows


def test_markdown_has_every_method_and_its_numbers():
    rows = _synthetic_rows()
    text = report.markdown(rows)
    assert "### gpt2-small, N = 2, link sim (star)" in text
    lines = text.splitlines()
    labels = {"single": "single", "astra": "astra G=16 (codewords/tokens)", "sp_fp32": "sp_fp32"}
    positions = []
    for r in rows:
        prefix = f"| {r['bandwidth_mbps']:g} | {labels[r['method']]} |"
        match = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        assert len(match) == 1, (prefix, text)
        line = lines[match[0]]
        assert f"| {r['latency_s']:.3f} |" in line
        assert f"| {r['speedup_vs_single']:.2f}x |" in line
        assert f"| {r['bytes_on_wire']:,} |" in line
        assert f"| {r['comm_wait_s']:.3f} |" in line
        positions.append((r["bandwidth_mbps"], match[0]))
    # sorted by bandwidth: every 10 Mbps line before every 100 Mbps line
    assert max(i for bw, i in positions if bw == 10) < min(i for bw, i in positions if bw == 100)
    assert "emulated vs measured" not in text  # no netns and emulated points to compare


def test_markdown_netns_shows_the_achieved_rate():
    rows = [dict(_row("single", 10.0, 1.0, ranks=1), link="netns", speedup_vs_single=1.0),
            dict(_row("sp_fp32", 10.0, 2.0, sent=(1000, 0)), link="netns", speedup_vs_single=0.5, achieved_mbps=9.87)]
    text = report.markdown(rows)
    assert "achieved L2 (Mbps)" in text
    assert "| 9.87 |" in text


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "latency.png"
    assert report.plot(_synthetic_rows(), str(path)) == str(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


def test_plot_refuses_rows_without_bandwidth(tmp_path):
    rows = [dict(r, bandwidth_mbps=None) for r in _synthetic_rows()]
    with pytest.raises(ValueError, match="no shaped rows"):
        report.plot(rows, str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_astra_bench_on_sim_links_end_to_end(tmp_path):
    tokens, layers, groups, k = 64, 1, 1, 16
    out = tmp_path / "b.json"
    cmd = [sys.executable, "-m", "astra", "bench", "--model", "gpt2", "--layers", str(layers), "--tokens", str(tokens),
           "--ranks", "2", "--bandwidth", "10,1000", "--link", "sim", "--methods", "astra,single,sp_fp32",
           "--groups", str(groups), "--codebook-size", str(k), "--repeat", "1", "--json", str(out)]
    env = dict(ENV, ASTRA_CACHE=str(tmp_path / "cache"), TMPDIR=str(tmp_path))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    measured = json.loads(out.read_text())
    keys = {"model", "method", "ranks", "groups", "bandwidth_mbps", "link", "latency_s", "bytes_on_wire",
            "speedup_vs_single"}
    for r in measured:
        assert keys <= set(r), sorted(keys - set(r))
        assert r["model"] == "gpt2-small" and r["link"] == "sim" and r["layers"] == layers
        assert r["ranks"] == (1 if r["method"] == "single" else 2)
        assert r["latency_s"] > 0
    assert {(r["method"], r["bandwidth_mbps"]) for r in measured} == {
        (m, bw) for m in ("single", "astra", "sp_fp32") for bw in (10.0, 1000.0)}
    assert len(measured) == 6
    by = {(r["method"], r["bandwidth_mbps"]): r for r in measured}

    # GPT-2 is causal: over 2 ranks only rank 0 sends, its 32 tokens per block
    mine = tokens // 2
    bits = math.ceil(math.log2(k))
    astra_bytes = layers * math.ceil(mine * groups * bits / 8)
    assert astra_bytes == layers * ak.packed_size(mine * groups, ak.code_bits(k))
    sp_bytes = layers * mine * 768 * 4  # fp32 block inputs of gpt2-small (D = 768)
    for bw in (10.0, 1000.0):
        a, sp, single = by[("astra", bw)], by[("sp_fp32", bw)], by[("single", bw)]
        assert a["groups"] == groups and sp["groups"] is None
        assert a["bytes_on_wire"] == astra_bytes and a["bytes_sent_per_rank"] == [astra_bytes, 0]
        assert sp["bytes_on_wire"] == sp_bytes and sp["bytes_sent_per_rank"] == [sp_bytes, 0]
        assert single["bytes_on_wire"] == 0
        assert a["bytes_on_wire"] < sp["bytes_on_wire"] / 50
        formulations = a["remote_formulation"]
        assert isinstance(formulations, list) and formulations
        assert set(formulations) <= {"tokens", "codewords", "dequantize"}
        for r in (a, sp, single):
            assert r["speedup_vs_single"] == pytest.approx(single["latency_s"] / r["latency_s"], rel=1e-9)
    # the slow link really costs the modelled wire time
    sp10 = by[("sp_fp32", 10.0)]
    assert sp10["latency_s"] >= sp10["bytes_on_wire"] * 8 / 10e6
    assert sp10["comm_wait_s"] > by[("sp_fp32", 1000.0)]["comm_wait_s"]

    md = (tmp_path / "b.md").read_text()
    a10 = by[("astra", 10.0)]
    assert a10["encoding"] == ("int8" if ak.int8_estimate_native("cpu") else "exact")
    for label in ("single", "sp_fp32", f"astra G={groups} ({'/'.join(a10['remote_formulation'])}, {a10['encoding']} encode)"):
        assert label in md
    png = (tmp_path / "b.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not (tmp_path / "b_scaling.png").exists()  # one ranks value: nothing to scale


# --------------------------------------------------------------------------- netns (root + CAP_NET_ADMIN)


def _netns_unavailable(shared: bool) -> str | None:
    """Why namespaces with veths and token buckets (and an ifb) cannot be made here, found by trying; None if they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    ns = f"astra-probe-{os.getpid()}"
    steps = [["ip", "netns", "add", ns],
             ["ip", "-n", ns, "link", "add", "prb0", "type", "veth", "peer", "name", "prb1"],
             ["tc", "-n", ns, "qdisc", "add", "dev", "prb0", "root", "tbf", "rate", "1mbit", "burst", "1600",
              "latency", "50ms"]]
    if shared:
        steps.append(["ip", "-n", ns, "link", "add", "prbifb", "type", "ifb"])
    try:
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                return f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return None


def _ns_list():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


TCP_SERVER = """
import socket, sys, time
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); n = 0; first = None
while True:
    d = c.recv(65536)
    if not d: break
    first = first or time.monotonic(); n += len(d)
print(n, time.monotonic() - first, flush=True)
"""
TCP_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"x" * int(sys.argv[3])); c.close()
"""


@pytest.mark.parametrize("shared", [False, True], ids=["star", "shared"])
def test_astra_net_up_rate_show_down(shared, capsys):
    why = _netns_unavailable(shared)
    if why:
        pytest.skip(f"network namespaces unavailable here: {why}")
    name = f"t{os.getpid() % 100000}{'s' if shared else ''}"
    link = NetnsLink(name, 2, shared=shared)
    extra = ["--shared"] if shared else []
    try:
        assert cli.main(["net", "up", "--name", name, "--ranks", "2", "--rate", "10", *extra]) == 0
        assert f"link {name!r} up" in capsys.readouterr().out
        listed = _ns_list()
        assert {f"{name}-sw", f"{name}-r0", f"{name}-r1"} <= set(listed)
        ns, dev = (f"{name}-sw", f"{name}ifb") if shared else (f"{name}-r0", f"{name}h0")
        qdisc = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev], capture_output=True, text=True).stdout
        assert re.search(r"qdisc tbf .*rate 10Mbit", qdisc), qdisc

        # real TCP from rank 0 to rank 1, no faster than the shaped rate
        server = subprocess.Popen(link.exec_prefix(1) + [sys.executable, "-c", TCP_SERVER, link.address(1)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            port = server.stdout.readline().strip()
            nbytes = 250_000  # 0.2 s at 10 Mbps
            subprocess.run(link.exec_prefix(0) + [sys.executable, "-c", TCP_CLIENT, link.address(1), port, str(nbytes)],
                           check=True, timeout=30)
            got, seconds = server.stdout.readline().split()
        finally:
            server.wait(timeout=30)
        assert int(got) == nbytes
        goodput = nbytes * 8 / float(seconds) / 1e6
        assert 1.0 < goodput < 10.5, f"{goodput:.2f} Mbps through a 10 Mbps bucket"

        assert cli.main(["net", "rate", "--name", name, "--ranks", "2", "--rate", "5", *extra]) == 0
        qdisc = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev], capture_output=True, text=True).stdout
        assert re.search(r"qdisc tbf .*rate 5Mbit", qdisc), qdisc

        assert cli.main(["net", "show", "--name", name, "--ranks", "2", *extra]) == 0
        shown = dict(re.findall(r"(\S+): ([\d,]+) bytes sent", capsys.readouterr().out))
        assert set(shown) == ({f"{name}ifb"} if shared else {f"{name}h0", f"{name}h1", f"{name}p0", f"{name}p1"})
        sender = f"{name}ifb" if shared else f"{name}h0"
        assert int(shown[sender].replace(",", "")) >= nbytes  # the TCP payload crossed that bucket

        assert cli.main(["net", "down", "--name", name, "--ranks", "2"]) == 0
        assert not [n for n in _ns_list() if n.startswith(name + "-")]
        assert cli.main(["net", "show", "--name", name]) == 1
        assert cli.main(["net", "down", "--name", name]) == 0  # idempotent
    finally:
        link.down()


def test_a_failed_net_up_leaves_no_namespaces(monkeypatch):
    why = _netns_unavailable(shared=False)
    if why:
        pytest.skip(f"network namespaces unavailable here: {why}")
    name = f"t{os.getpid() % 100000}f"
    link = NetnsLink(name, 2, shared=True)
    real_run = netns_mod._run

    def failing_ifb(*cmd, check=True):
        if "ifb" in cmd:
            raise NetnsError("`ip link add ... type ifb` failed: Operation not supported (simulated)")
        return real_run(*cmd, check=check)

    monkeypatch.setattr(netns_mod, "_run", failing_ifb)
    try:
        with pytest.raises(NetnsError, match="simulated"):
            link.up(10.0)
        leaked = [n for n in _ns_list() if n.startswith(name + "-")]
        assert not leaked, f"left behind: {leaked}"
    finally:
        monkeypatch.undo()
        link.down()
        assert not [n for n in _ns_list() if n.startswith(name + "-")]


class _Timed:
    """A fake method: records when it runs and takes ``seconds`` on every rank."""

    def __init__(self, name, seconds, log):
        self.name, self.seconds, self.log = name, seconds, log

    def run_rank(self, inputs, transport, *, timer=None):
        if transport.rank == 0:
            self.log.append(self.name)
        time.sleep(self.seconds)


def test_bench_points_interleave_the_methods_and_repeat_within_the_budget():
    """Round r runs every method that still needs a run, so a drift of the machine hits all methods alike;
    a method slower than the point budget allows runs once."""
    import threading
    from types import SimpleNamespace

    from astra_lab.bench import rank as bench_rank

    log = []
    methods = [("single", None, _Timed("single", 0.01, log)), ("astra", 1, _Timed("astra", 0.01, log)),
               ("tp", None, _Timed("tp", 0.6, log))]
    spec = SimpleNamespace(repeat=3, point_budget_s=0.5)
    link = SimpleNamespace(l2_bytes=lambda: None)
    transports = LoopbackHub(2).transports(10.0)
    out, calls = {}, []

    def work(r):
        progress = (lambda what, done: calls.append((what, done))) if r == 0 else (lambda what, done: None)
        out[r] = bench_rank._measure_point(methods, None, transports[r], link, spec, "10", progress)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[1] is None
    assert log == ["single", "astra", "tp", "single", "astra", "single", "astra"]
    rows = out[0]
    assert [len(r["latency_runs_s"]) for r in rows] == [3, 3, 1]
    for row, seconds in zip(rows, (0.01, 0.01, 0.6)):
        assert seconds <= row["latency_s"] < seconds + 0.5
        assert row["bytes_on_wire"] == 0 and row["bytes_sent_per_rank"] == [0, 0]
        assert "l2_bytes_per_run" not in row
    # every method's first run advances the bar once; repeats only rename it
    assert sum(done for _, done in calls) == 3
    assert ("astra G=1, run 3/3", 0) in calls
