"""Benchmark rows -> Markdown tables (and emulated-vs-measured validation), latency and scaling plots."""
from __future__ import annotations

import math
from collections import defaultdict

from astra._optional import require


def method_label(method: str, groups: int | None, pp_chunks: int | None = None) -> str:
    """``astra G=32``, ``pp c=4``, ``single``."""
    if pp_chunks is not None:
        return f"{method} c={pp_chunks}"
    return method if groups is None else f"{method} G={groups}"


def _label(row: dict) -> str:
    label = method_label(row["method"], row.get("groups"), row.get("pp_chunks"))
    notes = ["/".join(row["remote_formulation"])] if row.get("remote_formulation") else []
    notes += [f"{row['encoding']} encode"] if row.get("encoding") else []
    notes += ["best"] if row.get("pp_best") else []
    return label + (f" ({', '.join(notes)})" if notes else "")


def _plot_label(row: dict) -> str | None:
    """A row's line in the latency plot: ``pp`` is drawn at its best chunk count of each bandwidth (None: the
    row is not drawn)."""
    if row.get("pp_chunks") is not None:
        return "pp (best chunk count)" if row.get("pp_best") else None
    return _label(row)


def mark_best_pp(rows: list[dict]) -> None:
    """``pp_best`` of every ``pp`` row: whether its chunk count is the fastest of its setting and bandwidth."""
    best: dict[tuple, float] = {}
    for r in rows:
        if r.get("pp_chunks") is not None:
            key = (*_setting(r), r["bandwidth_mbps"])
            best[key] = min(best.get(key, float("inf")), r["latency_s"])
    for r in rows:
        if r.get("pp_chunks") is not None:
            r["pp_best"] = r["latency_s"] == best[(*_setting(r), r["bandwidth_mbps"])]


def _setting(row: dict) -> tuple:
    """(model, ranks of the sweep, link, topology): single-device rows belong to the sweep that measured them."""
    return row["model"], row.get("setting_ranks", row["ranks"]), row["link"], row.get("topology", "star")


def _faults(row: dict) -> tuple:
    """(loss %, delay ms, rate schedule) of a row's link; zeros and None where it had none."""
    return row.get("loss_pct", 0.0), row.get("delay_ms", 0.0), row.get("rate_schedule")


def _faults_title(loss: float, delay: float, schedule: str | None) -> str:
    parts = [f"{loss:g} % loss"] if loss else []
    parts += [f"{delay:g} ms delay"] if delay else []
    parts += [f"rate schedule {schedule} (s:Mbps)"] if schedule else []
    return "".join(f", {p}" for p in parts)


def markdown(rows: list[dict]) -> str:
    """One table per (model, ranks, link, faults), rows sorted by bandwidth then method (for the decoder LLMs,
    timed to the first token, followed by the decoding rates); a link with loss or a rate schedule also shows
    each point's p50 and p99 latency. Then, where the sweep ran points on both netns and emulated links, a table
    of their latencies side by side."""
    out = []
    groups = defaultdict(list)
    for r in rows:
        groups[(*_setting(r), *_faults(r))].append(r)
    for (model, n, link, topo, *faults), items in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        out.append(f"### {model}, N = {n}, link {link} ({topo}){_faults_title(*faults)}\n")
        netns = link == "netns"
        spread = bool(faults[0] or faults[2])  # loss and rate changes make the runs differ
        head = "| bandwidth (Mbps) | method | latency (s) |"
        sep = "|---:|---|---:|"
        if spread:
            head += " p50 (s) | p99 (s) |"
            sep += "---:|---:|"
        head += " speedup vs single | bytes on wire | compute (s) | comm wait (s) |"
        sep += "---:|---:|---:|---:|"
        if netns:
            head += " achieved L2 (Mbps) |"
            sep += "---:|"
        out += [head, sep]
        items.sort(key=lambda r: (r["bandwidth_mbps"] or math.inf, r["method"], r.get("groups") or 0,
                                  r.get("pp_chunks") or 0, _label(r)))
        for r in items:
            bw = "unshaped" if r["bandwidth_mbps"] is None else f"{r['bandwidth_mbps']:g}"
            line = f"| {bw} | {_label(r)} | {r['latency_s']:.3f} |"
            if spread:
                line += "".join(f" {r[k]:.3f} |" if k in r else " |" for k in ("latency_p50_s", "latency_p99_s"))
            line += (f" {r.get('speedup_vs_single', float('nan')):.2f}x | {r.get('bytes_on_wire', 0):,.0f} | "
                     f"{r.get('compute_s', r['latency_s']):.3f} | {r.get('comm_wait_s', 0.0):.3f} |")
            if netns:
                line += f" {r['achieved_mbps']:.2f} |" if "achieved_mbps" in r else " |"
            out.append(line)
        out.append("")
        if any(r.get("latency_of") == "first_token" for r in items):
            out.append("Latency: time to the first generated token.")
            rates = {method_label(r["method"], r.get("groups")): r["decode_tokens_per_s"]
                     for r in items if "decode_tokens_per_s" in r}
            if rates:
                out[-1] += " Decoding after the prefill: " + ", ".join(
                    f"{label} {rate:.1f} tokens/s" for label, rate in sorted(rates.items())) + "."
            out.append("")
    out += _validation(rows)
    return "\n".join(out)


def plot(rows: list[dict], path: str) -> str:
    """Log-log latency vs bandwidth, one panel per (model, ranks, link), one line per method, and the ideal
    single-device latency / N."""
    matplotlib = require("matplotlib", extra="bench", purpose="the latency plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r["bandwidth_mbps"] is not None]
    settings = sorted({_setting(r) for r in measured}, key=lambda s: tuple(map(str, s)))
    if not settings:
        raise ValueError("no shaped rows to plot")
    cols = min(2, len(settings))
    fig, axes = plt.subplots(math.ceil(len(settings) / cols), cols, figsize=(6.5 * cols, 4.5 * math.ceil(len(settings) / cols)),
                             squeeze=False)
    for ax, setting in zip(axes.flat, settings):
        model, n, link, topo = setting
        lines = defaultdict(list)
        for r in measured:
            if _setting(r) == setting and _plot_label(r) is not None:
                lines[_plot_label(r)].append((r["bandwidth_mbps"], r["latency_s"]))
        for label, pts in sorted(lines.items()):
            pts.sort()
            style = "-" if label.startswith("astra") else ("--" if label == "single" else ":")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=label)
        if "single" in lines and n > 1:  # what N devices would give with free links and perfect splitting
            pts = sorted(lines["single"])
            ax.plot([p[0] for p in pts], [p[1] / n for p in pts], color="0.6", linestyle="--", label=f"ideal (single/{n})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("link bandwidth (Mbps)")
        first = all(r.get("latency_of") == "first_token" for r in measured if _setting(r) == setting)
        ax.set_ylabel("time to first token (s)" if first else "latency per inference (s)")
        ax.set_title(f"{model}, {n} ranks, {link} link ({topo})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(settings):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _validation(rows: list[dict]) -> list[str]:
    """Emulated vs measured (netns) latency of every point that both links of the sweep ran."""
    def key(r):
        return (r["model"], r.get("setting_ranks", r["ranks"]), r.get("topology", "star"),
                method_label(r["method"], r.get("groups"), r.get("pp_chunks")), r["bandwidth_mbps"])

    measured = {key(r): r for r in rows if r["link"] == "netns"}
    pairs = [(measured[key(r)], r) for r in rows if r["link"] == "emulated" and key(r) in measured]
    out = []
    for model, n, topo in sorted({key(e)[:3] for _, e in pairs}, key=str):
        out.append(f"### {model}, N = {n} ({topo}): emulated vs measured on netns links\n")
        out += ["| bandwidth (Mbps) | method | netns latency (s) | emulated latency (s) | difference "
                "| netns speedup | emulated speedup |",
                "|---:|---|---:|---:|---:|---:|---:|"]
        items = sorted((p for p in pairs if key(p[1])[:3] == (model, n, topo)),
                       key=lambda p: (p[0]["bandwidth_mbps"], _label(p[0])))
        for netns, emu in items:
            diff = emu["latency_s"] / netns["latency_s"] - 1
            out.append(f"| {netns['bandwidth_mbps']:g} | {_label(emu)} | {netns['latency_s']:.3f} | "
                       f"{emu['latency_s']:.3f} | {100 * diff:+.1f} % | "
                       f"{netns.get('speedup_vs_single', float('nan')):.2f}x | "
                       f"{emu.get('speedup_vs_single', float('nan')):.2f}x |")
        out.append("")
    return out


PAPER_SPEEDUP = (4, 2.64)  # the ASTRA paper's headline: 2.64x over one device with 4 devices (simulated links)


def scaling_panels(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The distributed rows of every (model, link, topology, bandwidth) that was run at several numbers of ranks."""
    panels = defaultdict(list)
    for r in rows:
        if r["bandwidth_mbps"] is not None and r["method"] != "single":
            panels[(r["model"], r["link"], r.get("topology", "star"), r["bandwidth_mbps"])].append(r)
    return {k: v for k, v in panels.items() if len({r["ranks"] for r in v}) > 1}


def scaling_plot(rows: list[dict], path: str) -> str:
    """Speed-up vs ranks N, one panel per (model, link, bandwidth), one line per method; the single device is
    N = 1 (speed-up 1), the ideal line y = N and the paper's 2.64x at N = 4 are marked."""
    matplotlib = require("matplotlib", extra="bench", purpose="the scaling plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    panels = scaling_panels(rows)
    if not panels:
        raise ValueError("no method was run at more than one number of ranks")
    keys = sorted(panels, key=lambda k: tuple(map(str, k[:3])) + (k[3],))
    cols = min(2, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4.5 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        model, link, topo, bw = k
        lines = defaultdict(dict)
        for r in panels[k]:
            if _plot_label(r) is not None:
                lines[_plot_label(r)][r["ranks"]] = r["speedup_vs_single"]
        ranks = sorted({1, *(n for pts in lines.values() for n in pts)})
        ax.plot(ranks, ranks, color="0.6", linestyle="--", label="ideal (N)")  # at every N: the x axis is log
        for label, pts in sorted(lines.items()):
            ns = [1] + sorted(pts)
            style = "-" if label.startswith("astra") else ":"
            ax.plot(ns, [1.0] + [pts[n] for n in ns[1:]], style, marker="o", label=label)
        ax.plot(*PAPER_SPEEDUP, marker="*", markersize=14, color="crimson", linestyle="none",
                label=f"paper: {PAPER_SPEEDUP[1]}x at N = {PAPER_SPEEDUP[0]}")
        ax.annotate(f"{PAPER_SPEEDUP[1]}x", PAPER_SPEEDUP, textcoords="offset points", xytext=(8, -4))
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks)
        ax.get_xaxis().set_major_formatter(ScalarFormatter())
        ax.set_xlabel("ranks N")
        ax.set_ylabel("speed-up vs single device")
        ax.set_title(f"{model}, {bw:g} Mbps, {link} link ({topo})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
