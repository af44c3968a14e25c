"""``--link emulated``: N ranks emulated one at a time on one core, their schedule replayed over modelled links.

One (model, N) setting runs in the driver's process (no namespaces, no
spawned ranks), in four steps:

1. capture: each method's N ranks run once in threads over the loopback
   transport, keeping every payload (:func:`astra_lab.emulation.capture`; untimed);
2. warm-up: the single device and every rank of every method run once alone;
3. timed rounds, interleaved as on the other links (single, astra G=1, ...,
   single, astra G=1, ...): the single device, then each method's N ranks one
   after the other, each alone on this pinned core with ``--threads`` threads,
   recording its program (:class:`astra_lab.emulation.ReplayTransport`). How
   many rounds a method gets follows ``--repeat`` and ``--point-budget`` as on
   the other links, from the first run's time (for a method: its N ranks together);
4. at every bandwidth, each timed run's programs are replayed
   (:func:`astra_lab.emulation.replay`); a method's row is its median run, as
   on the other links.

A decoder LLM's runs end at the first generated token
(:mod:`astra_lab.bench.methods`); ASTRA's and the single device's decoding
rates are timed once, on the pinned core after the rounds: ASTRA's from the
last rank's cache after the simulated prefill.

A program does not depend on the link, so each run is timed once and replayed
at every bandwidth, and the single device's runs serve every bandwidth. The
memory held beyond the model is the captured payloads: one run's
``bytes_on_wire`` per method.
"""
from __future__ import annotations

import os
import time

from astra import models
from astra._optional import require
from astra.launch import keep_freed_memory, pin_cores

from ..emulation import Program, ReplayTransport, WireModel, capture, replay
from . import methods as bench_methods
from .config import BenchConfig
from .rank import fault_fields, row_fields


def _time_single(single: bench_methods.SingleDevice, inputs) -> float:
    start = time.perf_counter()
    single.forward(inputs)
    return time.perf_counter() - start


def _time_ranks(method, inputs, n: int, payloads) -> tuple[list[Program], float]:
    """Every rank of one run, one after the other on this thread: their programs, and the seconds it took."""
    programs = []
    start = time.perf_counter()
    for r in range(n):
        transport = ReplayTransport(r, n, payloads)
        transport.begin()
        method.run_rank(inputs, transport)
        programs.append(transport.end())
    return programs, time.perf_counter() - start


def wire_model(cfg: BenchConfig) -> WireModel:
    """The link model of ``cfg``: netns-like TCP over Ethernet, plus ``--latency-ms`` per message."""
    return WireModel(latency_s=WireModel().latency_s + cfg.latency_ms * 1e-3)


def run_setting(cfg: BenchConfig, model, name: str, n: int, bandwidths: list[float], methods: list[str],
                books: dict) -> list[dict]:
    """Rows of every method (and the single device) at every bandwidth, for ``n`` emulated ranks."""
    inputs = models.example_inputs(model, cfg.tokens, 1, seed=cfg.seed)
    compared = bench_methods.build(model, methods, cfg.groups, books,
                                   table_budget_bytes=int(cfg.table_budget_mib * 2**20), encode=cfg.encode,
                                   tokens=cfg.tokens, exchange_parts=cfg.exchange_parts,
                                   partition=cfg.partition)
    wire = wire_model(cfg)
    keep_freed_memory()
    print(f"[bench] {name}: {n} emulated ranks ({cfg.topology}), bandwidths {bandwidths} Mbps, methods {methods}",
          flush=True)
    timeout_s = max(600.0, 4 * cfg.point_budget_s)
    payloads = {i: capture(m, inputs, n, timeout_s=timeout_s) for i, (_, _, m) in enumerate(compared) if i > 0}
    print(f"[bench] {name}: captured {sum(p.nbytes for p in payloads.values()) / 2**20:.1f} MiB of payloads",
          flush=True)

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    pin_cores(0, cfg.threads)
    decoding = [None] * len(compared)
    try:
        runs = _timed_rounds(cfg, compared, inputs, n, payloads, f"{name} N={n} emulated")
        if bench_methods.first_token(model):  # decoding runs on one device: timed once per method, not replayed
            decoding = [m.decode_tokens_per_s(inputs) if method == "single" else
                        bench_methods.astra_decode_tokens_per_s_simulated(m, inputs, n) if method == "astra" else None
                        for method, _, m in compared]
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
    del payloads

    layers = len(models.adapt(model).blocks)
    rows = []
    for bw in bandwidths:
        for i, (method, groups, m) in enumerate(compared):
            if method == "single":
                idle = [{"latency": 0.0, "wait": 0.0, "sent": 0, "l2": None}] * len(runs[i])
                mine = [{"latency": seconds, "wait": 0.0, "sent": 0, "l2": None} for seconds in runs[i]]
                fields = row_fields(mine, [mine] + [idle] * (n - 1))
            else:
                replays = [(replay(programs, bw, topology=cfg.topology, wire=wire), programs) for programs in runs[i]]
                everyone = [[{"latency": rep.ranks[r].finish_s, "wait": rep.ranks[r].wait_s,
                              "sent": programs[r].bytes_sent, "l2": rep.wire_bytes} for rep, programs in replays]
                            for r in range(n)]
                fields = row_fields(everyone[0], everyone)
                mid = fields["latency_runs_s"].index(fields["latency_s"])
                fields["rank_compute_s"] = [t.compute_s for t in replays[mid][0].ranks]
            rows.append({
                "model": name, "method": method, "ranks": 1 if method == "single" else n, "setting_ranks": n,
                "groups": groups, "bandwidth_mbps": bw, "link": "emulated", "topology": cfg.topology,
                "tokens": cfg.tokens, "layers": layers, **fault_fields(cfg), **fields,
                **bench_methods.method_fields(method, m, inputs, n),
                **({} if decoding[i] is None else {"decode_tokens_per_s": decoding[i]}),
            })
    return rows


def _timed_rounds(cfg: BenchConfig, compared, inputs, n: int, payloads, desc: str) -> list[list]:
    """Per method, its timed runs: seconds (the single device) or the N ranks' programs (the others)."""
    tqdm = require("tqdm.auto", extra="bench", purpose="the benchmark progress bar").tqdm

    def once(i: int):
        _, _, m = compared[i]
        if i == 0:
            seconds = _time_single(m, inputs)
            return seconds, seconds
        return _time_ranks(m, inputs, n, payloads[i])

    for i in range(len(compared)):  # warm-up: allocations, tables, first-call costs, malloc's arena growth
        once(i)
    bar = tqdm(total=len(compared), unit="method", desc=desc)
    runs, firsts = [], []
    labels = [bench_methods.label(method, groups, m) for method, groups, m in compared]
    for i in range(len(compared)):
        bar.set_postfix_str(labels[i], refresh=False)
        result, seconds = once(i)
        runs.append([result])
        firsts.append(seconds)
        bar.update(1)
    counts = [max(1, min(cfg.repeat, int(cfg.point_budget_s // max(f, 1e-9)))) for f in firsts]
    for k in range(1, max(counts)):
        for i in range(len(compared)):
            if k < counts[i]:
                bar.set_postfix_str(f"{labels[i]}, run {k + 1}/{counts[i]}")
                runs[i].append(once(i)[0])
    bar.close()
    return runs
