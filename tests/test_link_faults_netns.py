"""Faults on real ``netns`` links (root, network namespaces and nftables): 100 % loss stops UDP and TCP between
two ranks, 0 % lets them through, tear-down leaves no loss table; a rate schedule reshapes the buckets and
ends at its first rate."""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from test_links_netns import _netns_unavailable

import astra_cli as cli
from astra_lab.links import NetnsLink, RateSchedule, ScheduleThread
from astra_lab.links import netns as netns_mod


def _unavailable(shared: bool) -> str | None:
    why = _netns_unavailable(shared)
    if why is None and shutil.which("nft") is None:
        why = "`nft` is not installed (Debian package nftables)"
    return why


UDP_RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0)); s.settimeout(1.0)
print(s.getsockname()[1], flush=True)
n = 0
try:
    while True:
        s.recv(64); n += 1
except socket.timeout:
    print(n, flush=True)
"""
UDP_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(b"x" * 32, (sys.argv[1], int(sys.argv[2]))); time.sleep(0.002)
"""
TCP_PROBE = """
import socket, sys, threading
srv = socket.socket(); srv.bind((sys.argv[1], 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
c, _ = srv.accept(); c.settimeout(2.0)
print(len(c.recv(16)), flush=True)
"""
TCP_CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5); c.sendall(b"hello"); print("sent")
except OSError as exc:
    print(type(exc).__name__)
"""


def _udp_through(link: NetnsLink, count: int = 50) -> int:
    """Datagrams rank 1 receives of ``count`` rank 0 sends."""
    rx = subprocess.Popen(link.exec_prefix(1) + [sys.executable, "-c", UDP_RECEIVER, link.address(1)],
                          stdout=subprocess.PIPE, text=True)
    try:
        port = rx.stdout.readline().strip()
        subprocess.run(link.exec_prefix(0) + [sys.executable, "-c", UDP_SENDER, link.address(1), port, str(count)],
                       check=True, timeout=30)
        return int(rx.stdout.readline())
    finally:
        rx.wait(timeout=30)


def _tcp_connects(link: NetnsLink) -> str:
    server = subprocess.Popen(link.exec_prefix(1) + [sys.executable, "-c", TCP_PROBE, link.address(1)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().strip()
        out = subprocess.run(link.exec_prefix(0) + [sys.executable, "-c", TCP_CLIENT, link.address(1), port],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    finally:
        server.kill()
        server.wait(timeout=30)
    return out


def _ns_list():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


@pytest.mark.parametrize("shared", [False, True], ids=["star", "shared"])
def test_netns_total_loss_stops_udp_and_tcp_and_no_loss_lets_them_through(shared, capsys):
    why = _unavailable(shared)
    if why:
        pytest.skip(f"netns loss unavailable here: {why}")
    name = f"l{os.getpid() % 100000}{'s' if shared else ''}"
    link = NetnsLink(name, 2, shared=shared)
    extra = ["--shared"] if shared else []
    try:
        assert cli.main(["net", "up", "--name", name, "--ranks", "2", "--rate", "10", "--loss", "100", *extra]) == 0
        assert "10 Mbps, 100 % loss" in capsys.readouterr().out
        rules = link.loss_rules()
        lossy = [f"{name}-r0", f"{name}-r1"] if shared else [f"{name}-sw"]
        assert sorted(rules) == lossy
        assert all("drop" in text and "numgen" not in text for text in rules.values())
        assert _udp_through(link) == 0
        assert _tcp_connects(link) in ("timeout", "TimeoutError")

        link.set_loss(0)
        assert link.loss_rules() == {}
        assert _udp_through(link) == 50
        assert _tcp_connects(link) == "sent"

        link.set_loss(2.04)  # rounded to 2 %, the rule compares out of 1000
        assert all(re.search(r"numgen random mod 1000 < 20 drop", t) for t in link.loss_rules().values())

        assert cli.main(["net", "down", "--name", name, "--ranks", "2"]) == 0
        assert link.loss_rules() == {}
        assert not [n for n in _ns_list() if n.startswith(name + "-")]
    finally:
        link.down()


def test_netns_down_deletes_the_loss_tables_first(monkeypatch):
    why = _unavailable(False)
    if why:
        pytest.skip(f"netns loss unavailable here: {why}")
    name = f"l{os.getpid() % 100000}d"
    link = NetnsLink(name, 2)
    ran = []
    real_run = netns_mod._run
    try:
        link.up(10.0, loss_pct=5.0)
        assert list(link.loss_rules()) == [f"{name}-sw"]
        monkeypatch.setattr(netns_mod, "_run", lambda *cmd, check=True: ran.append(cmd) or real_run(*cmd, check=check))
        link.down()
        deleted = [i for i, c in enumerate(ran) if c[-4:] == ("delete", "table", "netdev", netns_mod.LOSS_TABLE)]
        removed = [i for i, c in enumerate(ran) if c[:3] == ("ip", "netns", "del")]
        assert deleted and removed and deleted[0] < removed[0]
    finally:
        monkeypatch.undo()
        link.down()


def _tbf_rate(link: NetnsLink) -> str:
    text = subprocess.run(["tc", "-n", link.namespace(0), "qdisc", "show", "dev", link.host_if(0)],
                          capture_output=True, text=True).stdout
    return re.search(r"qdisc tbf .*? rate (\S+)", text).group(1)


def test_netns_rate_schedule_reshapes_the_buckets_and_ends_at_the_first_rate(capsys):
    why = _netns_unavailable(False)
    if why:
        pytest.skip(f"network namespaces unavailable here: {why}")
    name = f"l{os.getpid() % 100000}r"
    link = NetnsLink(name, 2)
    try:
        link.up(10.0)
        seen = []

        def change(mbps):
            link.set_rate(mbps)
            seen.append(_tbf_rate(link))

        thread = ScheduleThread(RateSchedule.parse("0:10,0.1:5,0.3:20"), change, time.monotonic())
        thread.join()
        assert seen == ["5Mbit", "20Mbit"]
        thread.stop()
        assert seen[-1] == "10Mbit" and _tbf_rate(link) == "10Mbit"

        assert cli.main(["net", "up", "--name", name, "--ranks", "2", "--rate-schedule", "0:8,0.2:4"]) == 0
        out = capsys.readouterr().out
        assert "8 Mbps" in out and re.search(r"\d+\.\d\d s: 4 Mbps", out) and re.search(r"s: 8 Mbps", out)
        assert _tbf_rate(link) == "8Mbit"
    finally:
        link.down()


@pytest.mark.slow
def test_astra_bench_on_lossy_scheduled_netns_links_end_to_end(tmp_path):
    """``astra bench --link netns --loss 2 --rate-schedule``: the ranks run over real lossy TCP, rank 0's thread
    follows the schedule, the rows carry the applied faults and percentiles, and nothing is left behind."""
    import json

    why = _unavailable(False)
    if why:
        pytest.skip(f"netns loss unavailable here: {why}")
    name = f"e{os.getpid() % 10000}"
    out = tmp_path / "b.json"
    cmd = [sys.executable, "-m", "astra", "bench", "--model", "gpt2", "--layers", "1", "--tokens", "64", "--ranks",
           "2", "--link", "netns", "--methods", "astra,single", "--groups", "1", "--codebook-size", "16",
           "--repeat", "3", "--loss", "2.04", "--rate-schedule", "0:50,0.2:10", "--net-name", name, "--json", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", ASTRA_CACHE=str(tmp_path / "cache"), TMPDIR=str(tmp_path))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        NetnsLink(name, 2).down()
    assert not [n for n in _ns_list() if n.startswith(name + "-")]
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["single", "astra"]
    for r in rows:
        assert (r["link"], r["bandwidth_mbps"], r["loss_pct"], r["rate_schedule"], r["transport"]) == \
            ("netns", 50.0, 2.0, "0:50,0.2:10", "gloo")
        assert r["latency_p50_s"] <= r["latency_p90_s"] <= r["latency_p99_s"] == r["latency_max_s"]
        assert r["latency_max_s"] == max(r["latency_runs_s"]) and "achieved_mbps" in r
    assert "2 % loss, rate schedule 0:50,0.2:10 (s:Mbps)" in (tmp_path / "b.md").read_text()
