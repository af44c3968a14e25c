"""``astra bench``: latency of ASTRA and the baselines vs link bandwidth.

For every model the driver calibrates ASTRA's codebooks (cached), then for
every (ranks, link) starts the ranks (inside network namespaces for
``netns``), which sweep bandwidths x methods and report rows; ``emulated``
runs in this process instead (:mod:`astra_lab.bench.emulated`: every rank timed
alone, the schedule replayed over modelled links), for any number of ranks.
The single-device baseline (the unmodified model on one pinned core) is
measured inside the same sweep, so each speed-up is a ratio of two
measurements taken minutes apart at most, under the same machine state. It
writes JSON, Markdown tables and PNG plots (latency vs bandwidth; speed-up vs
ranks when the sweep has several ranks values).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import torch

from astra import models
from astra._optional import MissingDependency, require
from astra.calibrate import cached_calibration
from astra.launch import SETUP_TIMEOUT_S, LaunchTimeout, free_port, wait_ranks

from .. import baselines
from ..baselines.pipeline_parallel import chunk_counts, stage_blocks
from ..links import NetnsLink, RateSchedule, loss_permille, require_netns, require_nft
from . import emulated, report
from .config import BenchConfig, RankSpec


def _sweep_deadline_s(spec: RankSpec) -> float:
    """A backstop for the whole sweep of one setting, far above a healthy one: the setup, then per bandwidth and
    method (the single device included) its point budget plus the exchange timeout."""
    runs = {"astra": len(spec.groups), "pp": len(chunk_counts(spec.tokens, causal=True))}
    methods = 1 + sum(runs.get(m, 1) for m in spec.methods)
    return SETUP_TIMEOUT_S + len(spec.bandwidths) * methods * (spec.point_budget_s + spec.timeout_s)


def _launch(spec: RankSpec, world: int, spec_path: str, link: NetnsLink | None) -> None:
    """Start the ranks, wait (a hung rank is terminated, see wait_ranks), and fail loudly if any rank failed."""
    port = 29500 if link is not None else free_port()
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_PORT=str(port), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(spec.threads))
        if link is not None:
            env.update(MASTER_ADDR=link.address(0), GLOO_SOCKET_IFNAME=link.host_if(r))
        else:
            env.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo")
        cmd = [sys.executable, "-m", "astra", "bench-rank", spec_path]
        procs.append(subprocess.Popen((link.exec_prefix(r) if link else []) + cmd, env=env))
    try:
        codes = wait_ranks(procs, timeout_s=_sweep_deadline_s(spec), linger_s=spec.timeout_s + 60.0)
    except LaunchTimeout as exc:
        raise RuntimeError(f"bench ranks hung: {exc} ({spec.model}-{spec.size}, {spec.link})") from None
    if any(codes):
        raise RuntimeError(f"bench ranks failed with exit codes {codes} ({spec.model}-{spec.size}, {spec.link})")


# What every sweep needs (the models, their codebooks, the progress bars): missing ones name the bench extra before
# any work starts. The plots are optional (a sweep without matplotlib writes its JSON and tables).
BENCH_PACKAGES = ("transformers", "faiss", "numpy", "tqdm")


def run(cfg: BenchConfig) -> list[dict]:
    cfg.validate()
    for package in BENCH_PACKAGES:
        require(package, extra="bench", purpose="the benchmark")
    if "netns" in cfg.links:
        require_netns()
        if cfg.loss_pct > 0:
            require_nft()
    torch.set_num_threads(cfg.threads)
    distributed = [m for m in cfg.methods if m != "single"]
    if not distributed or not any(n > 1 for n in cfg.ranks):
        raise ValueError("nothing to compare: give at least one distributed method and --ranks >= 2")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="astra-bench-") as work:  # specs, codebook copies, rows
        for family in cfg.models:
            for size in cfg.sizes:
                model = models.build(family, size, tokens=cfg.tokens, layers=cfg.layers, seed=cfg.seed)
                name = f"{family}-{size}"
                for n in (n for n in cfg.ranks if n > 1):  # before any rank starts
                    for tp in {"tp", "tp_int8"} & set(distributed):
                        baselines.build(tp, model).check_ranks(n)
                    if "pp" in distributed:
                        stage_blocks(len(models.adapt(model).blocks), 0, n)
                books, files = {}, {}
                if "astra" in cfg.methods:
                    for g in cfg.groups:
                        print(f"[bench] {name}: codebooks K={cfg.codebook_size} G={g}", flush=True)
                        books[str(g)] = cached_calibration(
                            model, tokens=cfg.tokens, batch=1, codebook_size=cfg.codebook_size, groups=g,
                            iters=cfg.calibration_iters, seed=cfg.seed, progress=True, quantize=cfg.quantize)
                        files[str(g)] = books[str(g)].save(os.path.join(work, f"{name}-G{g}.safetensors"))
                for link_mode in cfg.links:
                    bws = [None] if link_mode == "real" else cfg.bandwidths_swept
                    for n in cfg.ranks:
                        if n < 2:
                            continue
                        if link_mode == "emulated":
                            rows += emulated.run_setting(cfg, model, name, n, bws, distributed, books)
                        else:
                            rows += _run_setting(cfg, family, size, n, link_mode, bws, distributed, files, work)
                del model, books
    _speedups(rows)
    report.mark_best_pp(rows)
    if "single" not in cfg.methods:
        rows = [r for r in rows if r["method"] != "single"]
    return rows


def _speedups(rows: list[dict]) -> None:
    """speedup_vs_single of every row: against the single-device run of the same sweep and bandwidth."""
    single = {(r["model"], r["link"], r["setting_ranks"], r["bandwidth_mbps"]): r["latency_s"]
              for r in rows if r["method"] == "single"}
    for r in rows:
        r["speedup_vs_single"] = single[(r["model"], r["link"], r["setting_ranks"], r["bandwidth_mbps"])] / r["latency_s"]


def _run_setting(cfg, family, size, n, link_mode, bws, methods, books, work) -> list[dict]:
    link = NetnsLink(cfg.net_name, n, shared=cfg.topology == "shared") if link_mode == "netns" else None
    rows_path = os.path.join(work, f"rows-{family}-{size}-{n}-{link_mode}.json")
    spec = RankSpec(
        model=family, size=size, tokens=cfg.tokens, layers=cfg.layers, seed=cfg.seed, threads=cfg.threads,
        methods=methods, groups=cfg.groups, codebooks=books,
        table_budget_bytes=int(cfg.table_budget_mib * 2**20), encode=cfg.encode,
        exchange_parts=cfg.exchange_parts, partition=cfg.partition, bandwidths=bws, link=link_mode, topology=cfg.topology,
        latency_ms=cfg.latency_ms, transport=cfg.transport, loss_pct=loss_permille(cfg.loss_pct) / 10,
        delay_ms=cfg.delay_ms,
        rate_schedule=None if cfg.rate_schedule is None else RateSchedule.parse(cfg.rate_schedule).spec,
        net_name=cfg.net_name, net_ranks=n, repeat=cfg.repeat,
        point_budget_s=cfg.point_budget_s, timeout_s=max(600.0, 4 * cfg.point_budget_s),
        medium_path=os.path.join(work, f"medium-{n}") if cfg.topology == "shared" else None, rows_path=rows_path,
    )
    spec_path = os.path.join(work, f"spec-{family}-{size}-{n}-{link_mode}.json")
    spec.dump(spec_path)
    faults = "".join([f", {spec.loss_pct:g} % loss" if spec.loss_pct else "",
                      f", {spec.delay_ms:g} ms delay" if spec.delay_ms else "",
                      f", rate schedule {spec.rate_schedule}" if spec.rate_schedule else ""])
    print(f"[bench] {family}-{size}: {n} ranks on {link_mode} links ({cfg.topology}{faults}), "
          f"bandwidths {[b for b in bws]} Mbps, methods {methods}, transport {cfg.transport}", flush=True)
    try:
        if link is not None:
            link.up(bws[0], loss_pct=spec.loss_pct)
        _launch(spec, n, spec_path, link)
    finally:
        if link is not None:
            link.down()
    with open(rows_path) as f:
        return json.load(f)


def write_outputs(cfg: BenchConfig, rows: list[dict]) -> dict[str, str]:
    """JSON rows, Markdown tables and PNG plots next to each other; returns their paths.

    The plots come last and are optional: without matplotlib, or when plotting fails, a warning
    says why and the JSON and Markdown stand alone (no plot path is returned)."""
    base = os.path.splitext(cfg.json)[0]
    paths = {"json": cfg.json, "markdown": cfg.markdown or base + ".md", "plot": cfg.plot or base + ".png",
             "scaling_plot": cfg.scaling_plot or base + "_scaling.png"}
    os.makedirs(os.path.dirname(os.path.abspath(cfg.json)), exist_ok=True)
    with open(paths["json"], "w") as f:
        json.dump(rows, f, indent=1)
    text = report.markdown(rows)
    with open(paths["markdown"], "w") as f:
        f.write(text)
    shaped = any(r["bandwidth_mbps"] is not None and r["method"] != "single" for r in rows)
    if not (shaped and _plot(report.plot, rows, paths["plot"])):
        paths.pop("plot")
    if not (report.scaling_panels(rows) and _plot(report.scaling_plot, rows, paths["scaling_plot"])):
        paths.pop("scaling_plot")
    print(text)
    print("[bench] wrote " + ", ".join(f"{k}: {v}" for k, v in paths.items()), flush=True)
    return paths


def _plot(draw, rows: list[dict], path: str) -> bool:
    """Write a plot with ``draw(rows, path)``; on failure warn, remove what the failed attempt or an earlier
    run left at ``path`` (it would not show these rows), and return False."""
    try:
        draw(rows, path)
        return True
    except MissingDependency as exc:
        why = str(exc)
    except Exception as exc:  # whatever breaks the plot, the measurements are written already
        why = f"plotting failed: {type(exc).__name__}: {exc}"
    if os.path.exists(path):
        os.remove(path)
    print(f"[bench] warning: no plot ({why}); the JSON and Markdown are complete", file=sys.stderr, flush=True)
    return False
