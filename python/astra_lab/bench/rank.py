"""One rank of an ``astra bench`` job: every method at every bandwidth, in one process.

Started by the driver (``python -m astra bench-rank SPEC``) inside the rank's
network namespace for ``netns`` links. All ranks walk the same sweep in
lockstep (barriers between runs); rank 0 changes the link rate, probes the
achieved rate, and writes the rows. With a rate schedule, the rate follows it
from the start of each point's timed runs (rank 0's clock) and returns to its
first rate after them. At each rate the methods' timed runs are
interleaved (single, astra, ..., single, astra, ...), so a slow spell of the
shared host hits every method's runs alike instead of one method's point.
For a decoder LLM, after the sweep, ASTRA decodes on the last rank after a
distributed prefill and the single device on rank 0, each timed once.
"""
from __future__ import annotations

import json
import time
from typing import Callable

import torch

from astra import models
from astra._optional import require
from astra.engine import PhaseTimer
from astra.launch import keep_freed_memory, local_rank, make_transport, pin_cores
from astra.transport import Transport

from ..links import NetnsLink, RateSchedule, ScheduleThread, SimLinkTransport
from . import methods as bench_methods
from .config import RankSpec
from .stats import latency_percentiles

PROBE_SECONDS = 0.5  # bulk transfer per netns rate probe, at the configured rate


class _Link:
    """Sets the rate of this job's link (sim: every rank; netns: rank 0 runs tc), runs its rate schedule and
    reads netns counters."""

    def __init__(self, spec: RankSpec, transport: Transport):
        self.spec, self.transport = spec, transport
        self.netns = None
        if spec.link == "netns":
            self.netns = NetnsLink(spec.net_name, spec.net_ranks, shared=spec.topology == "shared")
        self.schedule = None if spec.rate_schedule is None else RateSchedule.parse(spec.rate_schedule)
        self._thread: ScheduleThread | None = None

    def set_rate(self, mbps: float | None) -> None:
        if mbps is None:
            return
        if isinstance(self.transport, SimLinkTransport):
            self.transport.set_rate(mbps)
        elif self.netns is not None and self.transport.rank == 0:
            self.netns.set_rate(mbps)
        self.transport.barrier("rate")

    def start_schedule(self) -> None:
        """Start the rate schedule, if any, now: offset 0 is rank 0's clock, sent to every rank."""
        if self.schedule is None:
            return
        epoch = self.transport.gather_json(time.monotonic(), "schedule/start")[0]
        if isinstance(self.transport, SimLinkTransport):
            self.transport.follow(self.schedule, epoch)
        elif self.netns is not None and self.transport.rank == 0:
            self._thread = ScheduleThread(self.schedule, self.netns.set_rate, epoch)

    def end_schedule(self) -> None:
        """Stop the rate schedule, if any, back at its first rate."""
        if self.schedule is None:
            return
        if isinstance(self.transport, SimLinkTransport):
            self.transport.set_rate(self.schedule.first_mbps)
        elif self._thread is not None:
            self._thread, thread = None, self._thread
            thread.stop()
        self.transport.barrier("schedule/end")

    def l2_bytes(self, rank: int | None = None) -> int | None:
        """L2 bytes sent so far by ``rank`` (every rank if None), read on rank 0; None elsewhere."""
        if self.netns is None or self.transport.rank != 0:
            return None
        return self.netns.uplink_bytes(self.netns.sent_bytes(), rank)

    def probe(self, mbps: float) -> dict:
        """Bulk transfer rank 0 -> rank 1 and back 1 byte: rank 0's L2 rate from tc counters, and goodput."""
        t = self.transport
        nbytes = max(64 << 10, int(mbps * 1e6 / 8 * PROBE_SECONDS))
        t.barrier("probe")
        before = self.l2_bytes(rank=0)
        start = time.perf_counter()
        if t.rank == 0:
            t.exchange(torch.zeros(nbytes, dtype=torch.uint8), [1], {}, "probe/data").wait()
            t.exchange(torch.empty(0, dtype=torch.uint8), [], {1: 1}, "probe/ack").wait()
        elif t.rank == 1:
            t.exchange(torch.empty(0, dtype=torch.uint8), [], {0: nbytes}, "probe/data").wait()
            t.exchange(torch.zeros(1, dtype=torch.uint8), [0], {}, "probe/ack").wait()
        seconds = time.perf_counter() - start
        after = self.l2_bytes(rank=0)
        t.barrier("probe/done")
        if t.rank != 0:
            return {}
        return {"achieved_mbps": (after - before) * 8 / seconds / 1e6, "goodput_mbps": nbytes * 8 / seconds / 1e6}


def _run_once(method, inputs, transport: Transport, link: _Link, tag: str) -> dict:
    """One timed run on every rank: this rank's latency, comm wait and bytes sent (and, on rank 0, the L2 bytes
    every rank sent during it)."""
    transport.barrier(f"{tag}/go")
    transport.stats.clear()
    l2_before = link.l2_bytes()
    timer = PhaseTimer()
    start = time.perf_counter()
    method.run_rank(inputs, transport, timer=timer)
    seconds = time.perf_counter() - start
    sent = transport.stats.total_sent()
    transport.barrier(f"{tag}/done")  # every rank's bytes have left before rank 0 reads the counters
    l2 = None if l2_before is None else link.l2_bytes() - l2_before
    return {"latency": seconds, "wait": timer.seconds.get("wait", 0.0), "sent": sent, "l2": l2}


def row_fields(runs: list[dict], everyone: list[list[dict]]) -> dict:
    """Row fields of one method from every rank's runs (``everyone[rank][run]``: latency, wait, sent, l2;
    ``runs`` is rank 0's): the median run (the upper middle one of an even number), by the slowest rank's
    latency, and the percentiles of the runs' latencies (:mod:`.stats`)."""
    per_run = [max(e[i]["latency"] for e in everyone) for i in range(len(runs))]
    mid = sorted(range(len(runs)), key=lambda i: per_run[i])[len(runs) // 2]
    row = {
        "latency_s": per_run[mid],
        **latency_percentiles(per_run),
        "latency_runs_s": per_run,
        "comm_wait_s": max(e[mid]["wait"] for e in everyone),
        "bytes_on_wire": sum(e[mid]["sent"] for e in everyone),
        "bytes_sent_per_rank": [e[mid]["sent"] for e in everyone],
    }
    row["compute_s"] = row["latency_s"] - row["comm_wait_s"]
    if runs[0]["l2"] is not None:
        row["l2_bytes_per_run"] = sum(r["l2"] for r in runs) / len(runs)
    return row


def _measure_point(methods, inputs, transport: Transport, link: _Link, spec: RankSpec, tag: str,
                   progress: Callable[[str, int], None]) -> list[dict] | None:
    """Timed runs of every method at the current rate, interleaved: round r runs each method that still
    needs a run, so slow drifts of the machine hit all methods alike. Rank 0 returns one row per method.
    ``progress(what, done)`` names the run about to start (done 0), then counts each method's first run (1)."""
    labels = [bench_methods.label(name, groups, m) for name, groups, m in methods]
    names = [f"{tag}/{label}" for label in labels]
    runs = []
    for n, label, (_, _, m) in zip(names, labels, methods):
        progress(label, 0)
        runs.append([_run_once(m, inputs, transport, link, f"{n}/0")])
        progress(label, 1)
    # Every rank must agree on the number of runs: decide from the slowest rank's first runs.
    firsts = [max(col) for col in zip(*transport.gather_json([r[0]["latency"] for r in runs], f"{tag}/first"))]
    counts = [max(1, min(spec.repeat, int(spec.point_budget_s // max(f, 1e-9)))) for f in firsts]
    for i in range(1, max(counts)):
        for n, label, (_, _, m), mine, count in zip(names, labels, methods, runs, counts):
            if i < count:
                progress(f"{label}, run {i + 1}/{count}", 0)
                mine.append(_run_once(m, inputs, transport, link, f"{n}/{i}"))
    everyone = transport.gather_json(runs, f"{tag}/report")
    if transport.rank != 0:
        return None
    return [row_fields(mine, [e[j] for e in everyone]) for j, mine in enumerate(runs)]


def fault_fields(spec) -> dict:
    """The fields of a row that describe its link's transport and faults (a RankSpec or a BenchConfig)."""
    fields = {"transport": spec.transport, "loss_pct": spec.loss_pct, "delay_ms": spec.delay_ms}
    if spec.rate_schedule is not None:
        fields["rate_schedule"] = spec.rate_schedule
    return fields


def _decode_rates(methods, inputs, transport: Transport) -> list[float | None] | None:
    """Rank 0: per method, the decoding rate after its prefill (ASTRA on the last rank, the single device on
    rank 0), None for the other methods; None on the other ranks."""
    rates = []
    for name, groups, m in methods:
        rate = None
        if name == "astra":
            rate = bench_methods.astra_decode_tokens_per_s(m, inputs, transport)
        elif name == "single" and transport.rank == 0:
            rate = m.decode_tokens_per_s(inputs)
        rates.append(rate)
        transport.barrier(f"decode/{bench_methods.label(name, groups, m)}")
    everyone = transport.gather_json(rates, "decode/report")
    if transport.rank != 0:
        return None
    return [next((e[i] for e in everyone if e[i] is not None), None) for i in range(len(methods))]


def main(spec_path: str) -> None:
    spec = RankSpec.load(spec_path)
    torch.set_num_threads(spec.threads)
    keep_freed_memory()
    transport = make_transport(spec.transport, spec.timeout_s)
    pin_cores(local_rank(), spec.threads)  # after the transport: its I/O threads stay free to run anywhere
    if spec.link == "sim":
        transport = SimLinkTransport(transport, spec.bandwidths[0], latency_ms=spec.latency_ms, topology=spec.topology,
                                     medium_path=spec.medium_path, delay_ms=spec.delay_ms, loss_pct=spec.loss_pct,
                                     seed=spec.seed)
    link = _Link(spec, transport)
    model = models.build(spec.model, spec.size, tokens=spec.tokens, layers=spec.layers, seed=spec.seed)
    inputs = models.example_inputs(model, spec.tokens, 1, seed=spec.seed)
    methods = bench_methods.build(model, spec.methods, spec.groups, spec.codebooks,
                                  table_budget_bytes=spec.table_budget_bytes, encode=spec.encode, tokens=spec.tokens,
                                  exchange_parts=spec.exchange_parts, partition=spec.partition)
    rank0 = transport.rank == 0

    fastest = max((b for b in spec.bandwidths if b is not None), default=None)
    link.set_rate(fastest)
    for _ in range(2):  # warm-up: allocations, tables, first-call costs, malloc's arena growth
        for _, _, method in methods:
            method.run_rank(inputs, transport)

    bar = None
    if rank0:
        tqdm = require("tqdm.auto", extra="bench", purpose="the benchmark progress bar").tqdm
        bar = tqdm(total=len(spec.bandwidths) * len(methods), unit="point",
                   desc=f"{spec.model}-{spec.size} N={transport.world_size} {spec.link}")
    rows = []
    for bw in spec.bandwidths:
        link.set_rate(bw)
        probe = link.probe(bw) if link.netns is not None and bw is not None else {}

        def progress(what: str, done: int) -> None:
            if bar is not None:
                bar.set_postfix_str(f"{what} @ {bw} Mbps", refresh=False)
                bar.update(done)
        link.start_schedule()
        measured = _measure_point(methods, inputs, transport, link, spec, str(bw), progress)
        link.end_schedule()
        if rank0:
            for (name, groups, method), row in zip(methods, measured):
                rows.append({
                    "model": f"{spec.model}-{spec.size}", "method": name,
                    "ranks": 1 if name == "single" else transport.world_size, "setting_ranks": transport.world_size,
                    "groups": groups, "bandwidth_mbps": bw, "link": spec.link, "topology": spec.topology,
                    "tokens": spec.tokens, "layers": len(models.adapt(model).blocks), **fault_fields(spec), **row,
                    **probe,
                    **bench_methods.method_fields(name, method, inputs, transport.world_size),
                })
    decoding = _decode_rates(methods, inputs, transport) if bench_methods.first_token(model) else None
    if rank0:
        bar.close()
        if decoding is not None:
            for row, rate in zip(rows, decoding * len(spec.bandwidths)):
                if rate is not None:
                    row["decode_tokens_per_s"] = rate
        with open(spec.rows_path, "w") as f:
            json.dump(rows, f, indent=1)
    transport.close()
