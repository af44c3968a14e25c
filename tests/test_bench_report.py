"""Benchmark reports: the Markdown table, the latency plot, and the fitted projection to more ranks
checked against its documented model."""
import pytest
from bench_rows import make_row, synthetic_rows

from astra_lab.bench import report


def test_markdown_has_every_method_and_its_numbers():
    rows = synthetic_rows()
    projected = {"model": "gpt2-small", "method": "tp", "groups": None, "ranks": 4, "bandwidth_mbps": 10.0,
                 "link": "sim", "topology": "star", "latency_s": 9.876, "speedup_vs_single": 0.1, "projected": True}
    text = report.markdown(rows + [projected])
    assert "### gpt2-small, N = 2, link sim (star)" in text
    lines = text.splitlines()
    labels = {"single": "single", "astra": "astra G=16 (codewords/tokens)", "sp_fp32": "sp_fp32"}
    positions = []
    for r in rows:
        prefix = f"| {r['bandwidth_mbps']:g} | {labels[r['method']]} |"
        match = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        assert len(match) == 1, (prefix, text)
        line = lines[match[0]]
        assert f"| {r['latency_s']:.3f} |" in line
        assert f"| {r['speedup_vs_single']:.2f}x |" in line
        assert f"| {r['bytes_on_wire']:,} |" in line
        assert f"| {r['comm_wait_s']:.3f} |" in line
        positions.append((r["bandwidth_mbps"], match[0]))
    # sorted by bandwidth: every 10 Mbps line before every 100 Mbps line
    assert max(i for bw, i in positions if bw == 10) < min(i for bw, i in positions if bw == 100)
    # projections are not measurements: they stay out of the table
    assert "9.876" not in text and "| tp" not in text


def test_markdown_netns_shows_the_achieved_rate():
    rows = [dict(make_row("single", 10.0, 1.0, ranks=1), link="netns", speedup_vs_single=1.0),
            dict(make_row("sp_fp32", 10.0, 2.0, sent=(1000, 0)), link="netns", speedup_vs_single=0.5, achieved_mbps=9.87)]
    text = report.markdown(rows)
    assert "achieved L2 (Mbps)" in text
    assert "| 9.87 |" in text


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "latency.png"
    assert report.plot(synthetic_rows(), str(path)) == str(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


def test_plot_refuses_rows_without_bandwidth(tmp_path):
    rows = [dict(r, bandwidth_mbps=None) for r in synthetic_rows()]
    with pytest.raises(ValueError, match="no shaped rows"):
        report.plot(rows, str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


# A known model: single-device latency S; per method compute(2) and
# wait(B) = bytes * 8 / (eta B) + c at every bandwidth B.
S_RUNS = [1.9, 2.0, 2.1]  # single latency at the three bandwidths: median 2.0
BWS = [10.0, 50.0, 1000.0]
MODEL = {  # method: (groups, compute2, bytes of the busiest rank, eta, c)
    "astra": (16, 1.1, 2048, 0.9, 0.004),
    "sp_fp32": (None, 1.3, 98304, 0.8, 0.02),
    "tp": (None, 1.25, 36864, 0.7, 0.015),
}


def _model_rows(bws=BWS, s_runs=S_RUNS):
    rows = []
    for bw, s in zip(bws, s_runs):
        rows.append(make_row("single", bw, s, ranks=1))
        for method, (groups, compute2, nbytes, eta, c) in MODEL.items():
            wait = nbytes * 8 / (eta * bw * 1e6) + c
            row = make_row(method, bw, compute2 + wait, groups=groups, wait=wait, sent=(nbytes, nbytes // 3))
            row["compute_s"] = compute2
            rows.append(row)
    return rows


def _expected_latency(method, n, bw, s=2.0):
    """project()'s docstring, computed here independently."""
    groups, compute2, nbytes, eta, c = MODEL[method]
    b = 2 * compute2 - s  # compute(2) = s/2 + b/2
    compute = s / n + b * (n - 1) / n
    ring_steps = (n - 1) if method == "tp" else 1
    comm = (nbytes * 2 * (n - 1) / n) * 8 / (eta * bw * 1e6) + c * ring_steps
    return compute + comm


def test_project_follows_its_documented_model():
    projected = report.project(_model_rows())
    assert len(projected) == len(MODEL) * 2 * len(BWS)
    seen = set()
    for p in projected:
        assert p["projected"] is True and p["link"] == "sim" and p["topology"] == "star"
        want = _expected_latency(p["method"], p["ranks"], p["bandwidth_mbps"])
        assert p["latency_s"] == pytest.approx(want, rel=1e-6), p
        assert p["speedup_vs_single"] == pytest.approx(2.0 / want, rel=1e-6)
        assert p["groups"] == MODEL[p["method"]][0]
        seen.add((p["method"], p["ranks"], p["bandwidth_mbps"]))
    assert seen == {(m, n, bw) for m in MODEL for n in (4, 8) for bw in BWS}
    # a concrete number, to be sure of the formula: sp_fp32 at N = 4, 10 Mbps
    sp4 = next(p for p in projected if p["method"] == "sp_fp32" and p["ranks"] == 4 and p["bandwidth_mbps"] == 10.0)
    b = 2 * 1.3 - 2.0
    assert sp4["latency_s"] == pytest.approx(2.0 / 4 + b * 3 / 4 + 98304 * 1.5 * 8 / (0.8 * 10e6) + 0.02, rel=1e-9)


def test_project_to_two_devices_reproduces_the_measurements():
    """Fitted on N = 2, projected to N = 2: the measured latencies come back."""
    rows = _model_rows()
    projected = report.project(rows, ranks=(2,))
    for p in projected:
        measured = next(r for r in rows if r["method"] == p["method"] and r["bandwidth_mbps"] == p["bandwidth_mbps"])
        assert p["latency_s"] == pytest.approx(measured["latency_s"], rel=1e-6)


def test_project_with_one_bandwidth_reproduces_the_measurement():
    rows = _model_rows(bws=[10.0], s_runs=[2.0])
    for p in report.project(rows, ranks=(2,)):
        measured = next(r for r in rows if r["method"] == p["method"])
        assert p["latency_s"] == pytest.approx(measured["latency_s"], rel=1e-6)


def test_project_skips_models_without_a_single_device_measurement():
    rows = [r for r in _model_rows() if r["method"] != "single"]
    assert report.project(rows) == []


def test_projection_text_is_labelled_a_projection():
    projected = report.project(_model_rows())
    text = report.projection_text(projected)
    assert text.startswith("PROJECTION")
    assert "not measured" in text
    assert "gpt2-small, N = 4, sim:" in text and "gpt2-small, N = 8, sim:" in text
    for label in ("astra G=16", "sp_fp32", "tp"):
        assert label in text
    tp8 = _expected_latency("tp", 8, 1000.0)
    assert f"{tp8:.2f} ({2.0 / tp8:.2f}x)" in text
    assert report.projection_text([]) == ""
