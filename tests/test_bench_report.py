"""Benchmark reports: the Markdown table and the latency plot."""
import pytest
from bench_rows import make_row, synthetic_rows

from astra_lab.bench import report


def test_markdown_has_every_method_and_its_numbers():
    rows = synthetic_rows()
    text = report.markdown(rows)
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
    assert "emulated vs measured" not in text  # no netns and emulated points to compare


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


def test_plot_draws_the_ideal_line_at_single_over_n(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = {}
    original = matplotlib.axes.Axes.plot

    def record(self, x, y, *args, **kwargs):
        drawn[kwargs.get("label")] = (list(x), list(y))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    rows = synthetic_rows()
    report.plot(rows, str(tmp_path / "latency.png"))
    single = sorted((r["bandwidth_mbps"], r["latency_s"]) for r in rows if r["method"] == "single")
    ranks = {r["setting_ranks"] if "setting_ranks" in r else r["ranks"] for r in rows if r["method"] != "single"}
    (n,) = ranks
    assert drawn[f"ideal (single/{n})"] == ([bw for bw, _ in single], [lat / n for _, lat in single])
