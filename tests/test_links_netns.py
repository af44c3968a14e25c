"""The ``netns`` link lab: refusals without root, CAP_NET_ADMIN or tc (nothing left behind), names and
addresses, and, as root, ``astra net up/rate/show/down`` shaping real TCP between namespaces."""
import os
import re
import shutil
import subprocess
import sys

import pytest

import astra_cli as cli
from astra_lab.links import NetnsError, NetnsLink, require_netns
from astra_lab.links import netns as netns_mod


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


# --------------------------------------------------------------------------- root + CAP_NET_ADMIN


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
