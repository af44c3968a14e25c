"""Order statistics of a point's timed runs: its latency percentiles.

Percentiles are nearest-rank: the q-th percentile of n runs is the
ceil(q n / 100)-th smallest, always one of the measured runs (no
interpolation between runs). With an odd number of runs p50 is the median
run; with an even number it is the lower of the two middle runs, where a
row's ``latency_s`` is the upper one (:func:`astra_lab.bench.rank.row_fields`).
"""
from __future__ import annotations

import math

PERCENTILES = (50, 90, 99)


def nearest_rank(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) of ``values``, by nearest rank."""
    if not values:
        raise ValueError("no values to take a percentile of")
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {q:g}")
    return sorted(values)[math.ceil(q * len(values) / 100) - 1]


def latency_percentiles(latencies: list[float]) -> dict[str, float]:
    """``latency_p50_s``, ``latency_p90_s``, ``latency_p99_s`` and ``latency_max_s`` of a point's runs."""
    out = {f"latency_p{q}_s": nearest_rank(latencies, q) for q in PERCENTILES}
    out["latency_max_s"] = max(latencies)
    return out
