"""Benchmark rows -> Markdown table, latency-vs-bandwidth plot, fitted projection to more ranks."""
from __future__ import annotations

import math
from collections import defaultdict

from astra._optional import require

np = require("numpy", extra="bench", purpose="the benchmark report")


def method_label(method: str, groups: int | None) -> str:
    """``astra G=32``, ``single``."""
    return method if groups is None else f"{method} G={groups}"


def _label(row: dict) -> str:
    label = method_label(row["method"], row.get("groups"))
    notes = ["/".join(row["remote_formulation"])] if row.get("remote_formulation") else []
    notes += [f"{row['encoding']} encode"] if row.get("encoding") else []
    return label + (f" ({', '.join(notes)})" if notes else "")


def _setting(row: dict) -> tuple:
    """(model, ranks of the sweep, link, topology): single-device rows belong to the sweep that measured them."""
    return row["model"], row.get("setting_ranks", row["ranks"]), row["link"], row.get("topology", "star")


def markdown(rows: list[dict]) -> str:
    """One table per (model, ranks, link); rows sorted by bandwidth then method."""
    out = []
    groups = defaultdict(list)
    for r in rows:
        if not r.get("projected"):
            groups[_setting(r)].append(r)
    for (model, n, link, topo), items in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        out.append(f"### {model}, N = {n}, link {link} ({topo})\n")
        netns = link == "netns"
        head = ("| bandwidth (Mbps) | method | latency (s) | speedup vs single | bytes on wire | compute (s) "
                "| comm wait (s) |")
        sep = "|---:|---|---:|---:|---:|---:|---:|"
        if netns:
            head += " achieved L2 (Mbps) |"
            sep += "---:|"
        out += [head, sep]
        items.sort(key=lambda r: (r["bandwidth_mbps"] or math.inf, _label(r)))
        for r in items:
            bw = "unshaped" if r["bandwidth_mbps"] is None else f"{r['bandwidth_mbps']:g}"
            line = (f"| {bw} | {_label(r)} | {r['latency_s']:.3f} | {r.get('speedup_vs_single', float('nan')):.2f}x | "
                    f"{r.get('bytes_on_wire', 0):,.0f} | {r.get('compute_s', r['latency_s']):.3f} | "
                    f"{r.get('comm_wait_s', 0.0):.3f} |")
            if netns:
                line += f" {r['achieved_mbps']:.2f} |" if "achieved_mbps" in r else " |"
            out.append(line)
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict], path: str) -> str:
    """Log-log latency vs bandwidth, one panel per (model, ranks, link), one line per method."""
    matplotlib = require("matplotlib", extra="bench", purpose="the latency plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if not r.get("projected") and r["bandwidth_mbps"] is not None]
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
            if _setting(r) == setting:
                lines[_label(r)].append((r["bandwidth_mbps"], r["latency_s"]))
        for label, pts in sorted(lines.items()):
            pts.sort()
            style = "-" if label.startswith("astra") else ("--" if label == "single" else ":")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("link bandwidth (Mbps)")
        ax.set_ylabel("latency per inference (s)")
        ax.set_title(f"{model}, {n} ranks, {link} link ({topo})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(settings):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ring_steps_factor(method: str, n: int) -> float:
    """How the per-exchange latency term grows from 2 to n ranks: ring collectives take N-1 steps."""
    return (n - 1) if method == "tp" else 1.0


def project(rows: list[dict], ranks=(4, 8)) -> list[dict]:
    """Fit compute and communication costs on the N = 2 measurements and project to more ranks.

    compute(N) = s / N + b (N - 1) / N, with s the single-device latency and b
    from compute(2) (work that does not shrink with N, e.g. projecting remote
    tokens in plain SP); wait(B) = bytes * 8 / (eta B) + c, fitted across
    bandwidths by least squares; bytes per rank scale as 2 (N - 1) / N from N = 2
    (every method here); c grows with the number of ring steps.
    """
    singles = defaultdict(list)
    for r in rows:
        if r["method"] == "single":
            singles[(r["model"], r["link"])].append(r["latency_s"])
    single = {key: float(np.median(v)) for key, v in singles.items()}
    fits = defaultdict(list)
    for r in rows:
        if r["method"] != "single" and r["ranks"] == 2 and r["bandwidth_mbps"] and not r.get("projected"):
            fits[(r["model"], r["link"], r.get("topology", "star"), r["method"], r.get("groups"))].append(r)
    out = []
    for (model, link, topo, method, groups), items in fits.items():
        s = single.get((model, link))
        if s is None:
            continue
        compute2 = float(np.median([r["compute_s"] for r in items]))
        b = max(0.0, 2 * compute2 - s)
        x = np.array([max(r["bytes_sent_per_rank"]) * 8 / (r["bandwidth_mbps"] * 1e6) for r in items])
        y = np.array([r["comm_wait_s"] for r in items])
        # one bandwidth: assume eta = 1 and read the fixed cost c off the measured wait minus the wire time
        slope, intercept = (np.polyfit(x, y, 1) if len(items) > 1 and np.ptp(x) > 0 else (1.0, float((y - x).mean())))
        slope, intercept = max(float(slope), 0.0), max(float(intercept), 0.0)
        bytes2 = float(np.median([max(r["bytes_sent_per_rank"]) for r in items]))
        for n in ranks:
            compute = s / n + b * (n - 1) / n
            for r in items:
                bw = r["bandwidth_mbps"]
                comm = slope * bytes2 * 2 * (n - 1) / n * 8 / (bw * 1e6) + intercept * _ring_steps_factor(method, n)
                out.append({
                    "model": model, "method": method, "groups": groups, "ranks": n, "bandwidth_mbps": bw,
                    "link": link, "topology": topo, "latency_s": compute + comm, "speedup_vs_single": s / (compute + comm),
                    "projected": True,
                })
    return out


def projection_text(projected: list[dict]) -> str:
    if not projected:
        return ""
    lines = ["PROJECTION (fitted on N = 2 measurements, not measured): latency in s (speedup vs single)"]
    keys = sorted({(r["model"], r["link"], r["ranks"]) for r in projected}, key=str)
    for model, link, n in keys:
        items = [r for r in projected if (r["model"], r["link"], r["ranks"]) == (model, link, n)]
        bws = sorted({r["bandwidth_mbps"] for r in items})
        lines.append(f"  {model}, N = {n}, {link}: " + "  ".join(f"{b:g} Mbps" for b in bws))
        for label in sorted({_label(r) for r in items}):
            cells = []
            for b in bws:
                match = [r for r in items if _label(r) == label and r["bandwidth_mbps"] == b]
                cells.append(f"{match[0]['latency_s']:.2f} ({match[0]['speedup_vs_single']:.2f}x)" if match else "-")
            lines.append(f"    {label:<14}" + "  ".join(cells))
    return "\n".join(lines)
