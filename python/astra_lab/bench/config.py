"""What ``astra bench`` measures: the sweep, and the spec handed to every rank."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import astra_kernels as ak
from astra.codebooks import QUANTIZE
from astra.engine import ENCODINGS
from astra.partition import check_partition

from ..links.loss import loss_permille
from ..links.schedule import RateSchedule

METHODS = ("astra", "single", "sp_fp32", "sp_fp16", "kv_sp", "tp", "tp_int8", "pp")
DEFAULT_METHODS = ("astra", "single", "sp_fp32", "sp_fp16", "kv_sp", "tp")  # without --methods
BANDWIDTHS_MBPS = (10, 20, 50, 100, 500, 1000)
LINKS = ("sim", "netns", "real", "emulated")  # emulated: astra_lab.bench.emulated
FAULTY_LINKS = ("sim", "netns")  # the links that model --loss and --rate-schedule (--delay: sim only)
# the transports a bench rank can start: the driver launches the ranks with torch.distributed's env:// rendezvous
TRANSPORTS = ("gloo", "udp")


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: ["vit"])
    sizes: list[str] = field(default_factory=lambda: ["base"])
    tokens: int = 1024
    layers: int | None = None
    ranks: list[int] = field(default_factory=lambda: [2])
    bandwidths: list[float] = field(default_factory=lambda: list(BANDWIDTHS_MBPS))
    links: list[str] = field(default_factory=lambda: ["sim"])  # LINKS
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    groups: list[int] = field(default_factory=lambda: [1, 16, 32])
    codebook_size: int = 1024
    quantize: str = "input"  # astra.codebooks.QUANTIZE
    table_budget_mib: float = ak.TABLE_BUDGET_BYTES / 2**20  # per layer, K and V tables together
    encode: str = "auto"  # astra.engine.ENCODINGS
    exchange_parts: int = 1  # messages per block and peer
    partition: str = "balanced"  # how the sequence is cut over the ranks (astra.partition)
    transport: str = "gloo"  # TRANSPORTS
    topology: str = "star"  # sim, netns and emulated: star (full duplex) or shared (one medium)
    latency_ms: float = 0.0  # sim: per-message latency; emulated: added to the modelled one
    loss_pct: float = 0.0  # random loss per packet and direction (sim, netns), in steps of 0.1 %
    delay_ms: float = 0.0  # one-way delay per message (sim)
    rate_schedule: str | None = None  # "0:50,2:5,4:50" (seconds:Mbps) from the start of each point's runs
    repeat: int = 3
    point_budget_s: float = 60.0  # stop repeating a point once its runs took this long
    threads: int = 1
    seed: int = 0
    calibration_iters: int = 10
    net_name: str = "astra"
    json: str = "runs/bench.json"
    markdown: str | None = None  # default: json path with .md
    plot: str | None = None  # default: json path with .png
    scaling_plot: str | None = None  # default: json path with _scaling.png (sweeps of several ranks values)

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        bad_links = [link for link in self.links if link not in LINKS]
        if bad_links:
            raise ValueError(f"unknown link(s) {', '.join(bad_links)}; choose {', '.join(LINKS)}")
        if any(b <= 0 for b in self.bandwidths):
            raise ValueError(f"bandwidths must be positive Mbps, got {self.bandwidths}")
        if any(n < 1 for n in self.ranks):
            raise ValueError(f"ranks must be >= 1, got {self.ranks}")
        if self.topology not in ("star", "shared"):
            raise ValueError(f"topology must be star or shared, got {self.topology!r}")
        if self.table_budget_mib < 0:
            raise ValueError(f"table budget must be >= 0 MiB, got {self.table_budget_mib}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)}, got {self.quantize!r}")
        if self.encode not in ENCODINGS:
            raise ValueError(f"encode must be one of {', '.join(ENCODINGS)}, got {self.encode!r}")
        check_partition(self.partition)
        if self.exchange_parts < 1:
            raise ValueError(f"exchange parts must be >= 1, got {self.exchange_parts}")
        if self.latency_ms < 0:
            raise ValueError(f"latency must be >= 0 ms, got {self.latency_ms}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {self.repeat}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        loss_permille(self.loss_pct)
        if self.delay_ms < 0:
            raise ValueError(f"delay must be >= 0 ms, got {self.delay_ms:g}")
        if self.rate_schedule is not None:
            RateSchedule.parse(self.rate_schedule)
        faults = [f"--{name}" for name, on in (("loss", self.loss_pct > 0), ("delay", self.delay_ms > 0),
                                               ("rate-schedule", self.rate_schedule is not None)) if on]
        unfaulty = [link for link in self.links if link not in FAULTY_LINKS]
        if faults and unfaulty:
            raise ValueError(f"{' and '.join(faults)}: the {' and '.join(unfaulty)} link(s) model no faults; "
                             f"use --link {' or '.join(FAULTY_LINKS)}")
        if self.transport == "udp" and "emulated" in self.links:
            raise ValueError("--transport udp: the rank emulation models TCP connections (gloo); "
                             "measure the udp transport on --link netns")
        if self.transport == "udp" and self.loss_pct > 0 and "sim" in self.links:
            raise ValueError("--transport udp --loss: the sim link models TCP's retransmissions; "
                             "measure the udp transport's losses on --link netns")
        if self.delay_ms > 0 and "netns" in self.links:
            raise ValueError("--delay: netns links cannot delay packets on this kernel (no netem qdisc); "
                             "--link sim models a one-way delay per message")

    @property
    def bandwidths_swept(self) -> list[float]:
        """The shaped rates of the sweep, fastest first; with a rate schedule, its first rate alone."""
        if self.rate_schedule is not None:
            return [RateSchedule.parse(self.rate_schedule).first_mbps]
        return sorted(self.bandwidths, reverse=True)


@dataclass
class RankSpec:
    """Everything one rank process needs (written as JSON by the driver)."""

    model: str
    size: str
    tokens: int
    layers: int | None
    seed: int
    threads: int
    methods: list[str]  # distributed methods only; "astra" expanded by groups
    groups: list[int]
    codebooks: dict[str, str]  # str(G) -> codebook file
    table_budget_bytes: int
    encode: str
    exchange_parts: int
    partition: str
    bandwidths: list[float | None]  # None: unshaped (real link)
    link: str
    topology: str
    latency_ms: float
    transport: str
    loss_pct: float  # as applied: a multiple of 0.1
    delay_ms: float
    rate_schedule: str | None
    net_name: str
    net_ranks: int
    repeat: int
    point_budget_s: float
    timeout_s: float
    medium_path: str | None
    rows_path: str

    def dump(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=1)

    @classmethod
    def load(cls, path: str) -> "RankSpec":
        with open(path) as f:
            return cls(**json.load(f))
