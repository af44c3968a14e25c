"""benchmarks/fold_repeats.py: repeated astra bench runs of the same points -> one file with min/median/max."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "fold_repeats.py")
_spec = importlib.util.spec_from_file_location("fold_repeats", _PATH)
fold_repeats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fold_repeats)


def _rows(single: float, astra: float, bandwidth: float = 10.0) -> list[dict]:
    base = dict(model="vit-base", link="netns", topology="star", setting_ranks=2, bandwidth_mbps=bandwidth)
    return [
        dict(base, method="single", ranks=1, groups=None, latency_s=single, speedup_vs_single=1.0),
        dict(base, method="astra", ranks=2, groups=32, latency_s=astra, speedup_vs_single=single / astra,
             remote_formulation=["gather_int8"], encoding="int8"),
        dict(base, method="astra", ranks=4, groups=32, latency_s=0.5, speedup_vs_single=3.0, projected=True),
    ]


def test_fold_takes_min_median_max_per_point_over_repeats(tmp_path):
    paths = []
    for i, (single, astra) in enumerate([(1.6, 1.0), (1.5, 1.2), (1.7, 0.9), (1.6, 1.1)]):
        paths.append(str(tmp_path / f"r{i}.json"))
        with open(paths[-1], "w") as f:
            json.dump(_rows(single, astra)[::-1] if i % 2 else _rows(single, astra), f)  # row order differs
    out = tmp_path / "folded.json"
    fold_repeats.main(paths + ["--json", str(out), "--command", "python -m astra bench ..."])
    folded = json.loads(out.read_text())
    assert folded["command"] == "python -m astra bench ..."
    assert len(folded["repeats"]) == 4 and all(len(rep) == 2 for rep in folded["repeats"])  # projected rows dropped
    astra = next(r for r in folded["summary"] if r["method"] == "astra")
    assert astra["repeats"] == 4 and astra["remote_formulation"] == ["gather_int8"] and astra["ranks"] == 2
    assert astra["latency_s"] == pytest.approx({"min": 0.9, "median": 1.05, "max": 1.2})
    speedups = sorted(s / a for s, a in [(1.6, 1.0), (1.5, 1.2), (1.7, 0.9), (1.6, 1.1)])
    assert astra["speedup_vs_single"] == pytest.approx(
        {"min": speedups[0], "median": (speedups[1] + speedups[2]) / 2, "max": speedups[-1]})
    single = next(r for r in folded["summary"] if r["method"] == "single")
    assert single["latency_s"] == pytest.approx({"min": 1.5, "median": 1.6, "max": 1.7})


def test_fold_rejects_repeats_of_other_points():
    with pytest.raises(ValueError, match="repeat 2 measures other points"):
        fold_repeats.fold([_rows(1.6, 1.0), _rows(1.6, 1.0, bandwidth=100.0)])
    with pytest.raises(ValueError, match="no repeats"):
        fold_repeats.fold([])
    with pytest.raises(ValueError, match="same point twice"):
        fold_repeats.fold([_rows(1.6, 1.0) + _rows(1.6, 1.0)])
