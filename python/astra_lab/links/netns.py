"""``netns`` links: real TCP between network namespaces, shaped by token buckets.

One namespace per rank (``<name>-r<i>``) joined by a veth pair to a bridge in a
switch namespace (``<name>-sw``). Star topology: a TBF on both ends of every
veth, so each rank has an up- and a downlink of the configured rate. Shared
medium: every frame entering the switch is redirected through one ifb device
with a single TBF, so all ranks share one bucket. Burst = max(1 frame,
rate x 0.3 ms), as measured accurate in the design notes (a large burst lets
small messages through unshaped). Random loss (:mod:`.loss`) drops packets in
nftables ``netdev`` ingress hooks, silently (a drop in an output hook of the
sender's namespace would fail its ``sendto`` instead): on the switch ports of
a star, on the ranks' interfaces of the shared medium. netem is not
assumed (kernels like the development one lack it), so these links cannot
delay packets: ``sim`` links model a delay. Needs root; every address lives
inside these namespaces only.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from .loss import loss_permille

SUBNET = "10.77.{net}.{host}"
TBF_QUEUE_MS = 50
LOSS_TABLE = "astra_loss"  # nftables table (family netdev) of the namespaces that drop


class NetnsError(RuntimeError):
    pass


def _run(*cmd: str, check: bool = True) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def require_netns() -> None:
    """Refuse clearly when namespaces cannot be created here: not root, no iproute2, or no CAP_NET_ADMIN
    (a root shell in a container often lacks it, so a throwaway namespace is really created and deleted)."""
    if os.geteuid() != 0:
        raise NetnsError("netns links need root (network namespaces, veth and tc); use --link sim or run as root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetnsError(f"netns links need `{tool}` (Debian package iproute2)")
    probe = f"astra-probe-{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe)
    except NetnsError as exc:
        raise NetnsError(f"netns links need the right to create network namespaces (CAP_NET_ADMIN): {exc}") from None
    _run("ip", "netns", "del", probe, check=False)


def require_nft() -> None:
    """Random loss on netns links needs the nftables command line."""
    if shutil.which("nft") is None:
        raise NetnsError("random loss on netns links needs `nft` (Debian package nftables); "
                         "install it, or use --link sim, which models loss")


def burst_bytes(rate_mbps: float) -> int:
    return max(1600, int(rate_mbps * 1e6 / 8 * 0.3e-3))


@dataclass(frozen=True)
class NetnsLink:
    """A named star (or shared medium) of ``ranks`` namespaces; ``net`` picks the 10.77.<net>.0/24 subnet."""

    name: str = "astra"
    ranks: int = 2
    shared: bool = False
    net: int = 1

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,8}", self.name):
            raise ValueError(f"link name {self.name!r}: 1-9 lowercase letters, digits or '-' (interface names are short)")
        if not 1 <= self.ranks <= 250:
            raise ValueError(f"ranks must be in 1..250, got {self.ranks}")

    # names -----------------------------------------------------------------
    @property
    def switch(self) -> str:
        return f"{self.name}-sw"

    def namespace(self, rank: int) -> str:
        return f"{self.name}-r{rank}"

    def host_if(self, rank: int) -> str:
        """The rank's interface (inside its namespace): set GLOO_SOCKET_IFNAME to it."""
        return f"{self.name}h{rank}"

    def port_if(self, rank: int) -> str:
        return f"{self.name}p{rank}"

    @property
    def ifb(self) -> str:
        return f"{self.name}ifb"

    def address(self, rank: int) -> str:
        return SUBNET.format(net=self.net, host=rank + 1)

    def exec_prefix(self, rank: int) -> list[str]:
        """Command prefix that runs a program inside the rank's namespace."""
        return ["ip", "netns", "exec", self.namespace(rank)]

    def exists(self) -> bool:
        return self.switch in _run("ip", "netns", "list", check=False).split()

    # lifecycle ---------------------------------------------------------------
    def up(self, rate_mbps: float, loss_pct: float = 0.0) -> None:
        """Create the namespaces, links, shaping and random loss (replacing a previous link of this name).

        A failure part-way removes what was created before it is raised."""
        if rate_mbps <= 0:
            raise ValueError(f"rate must be positive, got {rate_mbps} Mbps")
        loss_permille(loss_pct)  # a bad percentage is refused before anything is made
        require_netns()
        if loss_pct > 0:
            require_nft()
        self.down()
        try:
            self._create(rate_mbps)
            self.set_loss(loss_pct)
        except BaseException:
            self.down()
            raise

    def _create(self, rate_mbps: float) -> None:
        sw = self.switch
        _run("ip", "netns", "add", sw)
        _run("ip", "-n", sw, "link", "add", f"{self.name}br", "type", "bridge")
        _run("ip", "-n", sw, "link", "set", f"{self.name}br", "up")
        _run("ip", "-n", sw, "link", "set", "lo", "up")
        for r in range(self.ranks):
            ns = self.namespace(r)
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", self.host_if(r), "type", "veth", "peer", "name", self.port_if(r))
            _run("ip", "link", "set", self.host_if(r), "netns", ns)
            _run("ip", "link", "set", self.port_if(r), "netns", sw)
            _run("ip", "-n", ns, "addr", "add", f"{self.address(r)}/24", "dev", self.host_if(r))
            _run("ip", "-n", ns, "link", "set", self.host_if(r), "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", sw, "link", "set", self.port_if(r), "master", f"{self.name}br")
            _run("ip", "-n", sw, "link", "set", self.port_if(r), "up")
        if self.shared:
            _run("ip", "-n", sw, "link", "add", self.ifb, "type", "ifb")
            _run("ip", "-n", sw, "link", "set", self.ifb, "up")
            for r in range(self.ranks):
                _run("tc", "-n", sw, "qdisc", "add", "dev", self.port_if(r), "ingress")
                _run("tc", "-n", sw, "filter", "add", "dev", self.port_if(r), "parent", "ffff:", "protocol", "all",
                     "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", self.ifb)
        self.set_rate(rate_mbps, add=True)

    def _shaped(self) -> list[tuple[str, str]]:
        """(namespace, interface) of every token bucket."""
        if self.shared:
            return [(self.switch, self.ifb)]
        return [(self.namespace(r), self.host_if(r)) for r in range(self.ranks)] + [
            (self.switch, self.port_if(r)) for r in range(self.ranks)
        ]

    def set_rate(self, rate_mbps: float, add: bool = False) -> None:
        """(Re)shape every bucket to ``rate_mbps`` (an L2 rate: Ethernet/IP/TCP headers count); a change keeps
        the buckets and the packets queued in them."""
        if rate_mbps <= 0:
            raise ValueError(f"rate must be positive, got {rate_mbps} Mbps")
        rate = f"{rate_mbps * 1000:.0f}kbit"
        for ns, dev in self._shaped():
            _run("tc", "-n", ns, "qdisc", "add" if add else "change", "dev", dev, "root", "tbf", "rate", rate,
                 "burst", str(burst_bytes(rate_mbps)), "latency", f"{TBF_QUEUE_MS}ms")

    def set_loss(self, loss_pct: float) -> None:
        """Drop ``loss_pct`` percent (in steps of 0.1) of the IPv4 packets on every rank's link, at random, once
        per packet between two ranks; 0 removes the loss tables."""
        permille = loss_permille(loss_pct)
        if permille == 0:
            self._drop_loss_tables()
            return
        require_nft()
        hooks = self._lossy()
        for ns in dict.fromkeys(ns for ns, _ in hooks):
            _run("ip", "netns", "exec", ns, "nft", "add", "table", "netdev", LOSS_TABLE)
            _run("ip", "netns", "exec", ns, "nft", "flush", "table", "netdev", LOSS_TABLE)  # a former percentage's
        for ns, dev in hooks:
            nft = ["ip", "netns", "exec", ns, "nft"]
            _run(*nft, "add", "chain", "netdev", LOSS_TABLE, f"in_{dev}",
                 f"{{ type filter hook ingress device {dev} priority 0; }}")
            # IPv4 only: ARP passes, so that a lost neighbour resolution cannot stall a link for seconds;
            # nft's numgen compares values 0..999 only, so 100 % drops every IPv4 packet unconditionally
            match = ["numgen", "random", "mod", "1000", "<", str(permille)] if permille < 1000 else []
            _run(*nft, "add", "rule", "netdev", LOSS_TABLE, f"in_{dev}", "meta", "protocol", "ip", *match, "drop")

    def _lossy(self) -> list[tuple[str, str]]:
        """(namespace, interface) of every ingress hook that drops: a star's switch ports (the packets a rank
        sends); on the shared medium the ranks' own interfaces (the packets a rank receives), since the switch
        ports' tc ingress redirects every packet to the ifb, and its return skips the ingress hooks."""
        if self.shared:
            return [(self.namespace(r), self.host_if(r)) for r in range(self.ranks)]
        return [(self.switch, self.port_if(r)) for r in range(self.ranks)]

    def loss_rules(self) -> dict[str, str]:
        """The loss table of every namespace of this link that has one, as nft lists it, by namespace."""
        if shutil.which("nft") is None:
            return {}
        listed = _run("ip", "netns", "list", check=False).split()
        out = {}
        for ns, _ in self._lossy():
            if ns in listed:
                text = _run("ip", "netns", "exec", ns, "nft", "list", "table", "netdev", LOSS_TABLE, check=False)
                if text.strip():
                    out[ns] = text
        return out

    def _drop_loss_tables(self) -> None:
        for ns in self.loss_rules():
            _run("ip", "netns", "exec", ns, "nft", "delete", "table", "netdev", LOSS_TABLE)

    def down(self) -> None:
        """Delete the loss table and every namespace of this link (their veths and ifb go with them);
        idempotent."""
        self._drop_loss_tables()
        listed = _run("ip", "netns", "list", check=False).split()
        for ns in [self.switch] + [self.namespace(r) for r in range(self.ranks)]:
            if ns in listed:
                _run("ip", "netns", "del", ns)
        # namespaces of a former, larger link of the same name
        for ns in listed:
            if re.fullmatch(rf"{re.escape(self.name)}-r\d+", ns):
                _run("ip", "netns", "del", ns, check=False)
        # a veth pair still in the host namespace (a creation interrupted before it was moved)
        for r in range(self.ranks):
            _run("ip", "link", "del", self.host_if(r), check=False)

    # measurement -------------------------------------------------------------
    def sent_bytes(self) -> dict[str, int]:
        """L2 bytes each token bucket has sent so far (tc -s counters), by interface."""
        out = {}
        for ns, dev in self._shaped():
            text = _run("tc", "-n", ns, "-s", "qdisc", "show", "dev", dev)
            match = re.search(r"qdisc tbf .*?Sent (\d+) bytes", text, re.S)
            if match is None:
                raise NetnsError(f"no tbf counters on {ns}/{dev}: {text.strip()[:200]}")
            out[dev] = int(match.group(1))
        return out

    def uplink_bytes(self, counters: dict[str, int], rank: int | None = None) -> int:
        """Bytes sent into the network by ``rank`` (all ranks if None); the shared medium counts everything."""
        if self.shared:
            return counters[self.ifb]
        ranks = range(self.ranks) if rank is None else [rank]
        return sum(counters[self.host_if(r)] for r in ranks)
