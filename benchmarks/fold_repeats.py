"""Fold repeated ``astra bench`` runs of the same points into one results file.

    python benchmarks/fold_repeats.py runs/r1.json runs/r2.json ... --json benchmarks/results/NAME.json \
        [--command "python -m astra bench ..."]

Every input is the JSON that one ``astra bench`` call wrote (its rows; projected rows are dropped). The inputs must
measure the same points: the same (model, link, topology, ranks of the sweep, bandwidth, method, G). The output keeps
each repeat's rows and, per point, the min / median / max over the repeats of ``latency_s`` and
``speedup_vs_single``; the Markdown table of that summary is printed.
"""
from __future__ import annotations

import argparse
import json
import statistics

POINT = ("model", "link", "topology", "setting_ranks", "bandwidth_mbps", "method", "groups")
SPREAD = ("latency_s", "speedup_vs_single")


def point(row: dict) -> tuple:
    return tuple(row.get(k) for k in POINT)


def fold(repeats: list[list[dict]]) -> list[dict]:
    """One summary row per point: its settings, the number of repeats and {min, median, max} of SPREAD."""
    if not repeats:
        raise ValueError("no repeats to fold")
    measured = [[r for r in rows if not r.get("projected")] for rows in repeats]
    points = [sorted(map(point, rows), key=str) for rows in measured]
    for i, got in enumerate(points[1:], start=2):
        if got != points[0]:
            differ = sorted(set(got) ^ set(points[0]), key=str)
            raise ValueError(f"repeat {i} measures other points than repeat 1: {differ}")
    if len(set(points[0])) != len(points[0]):
        raise ValueError("a repeat measures the same point twice")
    summary = []
    for key in points[0]:
        rows = [next(r for r in rep if point(r) == key) for rep in measured]
        row = dict(zip(POINT, key))
        row["ranks"] = rows[0]["ranks"]
        for extra in ("remote_formulation", "encoding"):
            if extra in rows[0]:
                row[extra] = rows[0][extra]
        row["repeats"] = len(rows)
        for name in SPREAD:
            values = [r[name] for r in rows]
            row[name] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
        summary.append(row)
    return summary


def markdown(summary: list[dict]) -> str:
    out = ["| model | link | Mbps | method | repeats | latency (s) min / median / max | speedup min / median / max |",
           "|---|---|---:|---|---:|---:|---:|"]
    for r in summary:
        method = r["method"] if r["groups"] is None else f"{r['method']} G={r['groups']}"
        lat, sp = r["latency_s"], r["speedup_vs_single"]
        out.append(f"| {r['model']} | {r['link']} | {r['bandwidth_mbps']:g} | {method} | {r['repeats']} | "
                   f"{lat['min']:.3f} / {lat['median']:.3f} / {lat['max']:.3f} | "
                   f"{sp['min']:.2f}x / {sp['median']:.2f}x / {sp['max']:.2f}x |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="astra bench JSON files, one per repeat")
    p.add_argument("--json", required=True, help="where to write the folded file")
    p.add_argument("--command", default=None, help="the astra bench command each repeat ran (recorded)")
    args = p.parse_args(argv)
    repeats = []
    for path in args.inputs:
        with open(path) as f:
            repeats.append(json.load(f))
    summary = fold(repeats)
    folded = {"command": args.command} if args.command else {}
    folded.update(summary=summary, repeats=[[r for r in rows if not r.get("projected")] for rows in repeats])
    with open(args.json, "w") as f:
        json.dump(folded, f, indent=1)
    print(markdown(summary))


if __name__ == "__main__":
    main()
