"""``astra bench``: its configuration and command line refuse bad input, the ranks interleave the methods
of a point, the outputs survive a failed plot, and an end-to-end run on sim links."""
import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from bench_rows import synthetic_rows

import astra_cli as cli
import astra_kernels as ak
from astra.transport import LoopbackHub
from astra_lab.baselines.collectives import q80_bytes
from astra_lab.bench import driver, report
from astra_lab.bench.config import METHODS, BenchConfig

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """``astra bench`` sets torch's thread count in-process: restore it for the tests that follow."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("methods", ["astra", "foo"], r"unknown method\(s\) foo; choose from astra"),
        ("links", ["sim", "carrier-pigeon"], r"unknown link\(s\) carrier-pigeon"),
        ("bandwidths", [10.0, 0.0], "bandwidths must be positive"),
        ("bandwidths", [-1.0], "bandwidths must be positive"),
        ("ranks", [2, 0], "ranks must be >= 1"),
        ("topology", "ring", "topology must be star or shared, got 'ring'"),
        ("repeat", 0, "repeat must be >= 1, got 0"),
        ("table_budget_mib", -1.0, "table budget must be >= 0 MiB"),
        ("latency_ms", -0.5, "latency must be >= 0 ms"),
    ],
)
def test_bench_config_rejects(field, value, match):
    cfg = BenchConfig(**{field: value})
    with pytest.raises(ValueError, match=match):
        cfg.validate()


def test_bench_config_defaults_are_valid():
    BenchConfig().validate()
    BenchConfig(methods=list(METHODS), links=["sim", "netns", "real", "emulated"], topology="shared",
                table_budget_mib=0, ranks=[2, 4, 8, 16]).validate()


def test_cli_bench_unknown_method_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "astra", "bench", "--methods", "foo", "--json", str(tmp_path / "b.json")],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown method(s) foo" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--link", "carrier-pigeon"], r"unknown link\(s\) carrier-pigeon; choose sim, netns, real, emulated"),
        (["--bandwidth", "0"], "bandwidths must be positive"),
        (["--ranks", "0"], "ranks must be >= 1"),
        (["--repeat", "0"], "repeat must be >= 1"),
        (["--table-budget-mib", "-2"], "table budget must be >= 0 MiB"),
        (["--model", "bert"], "unknown model 'bert'"),
        (["--ranks", "1"], "nothing to compare"),
        (["--methods", "single"], "nothing to compare"),
        (["--model", "llama", "--layers", "1", "--tokens", "16", "--methods", "pp"],
         "pipeline parallelism over 2 ranks needs at least 2 blocks, got 1"),
    ],
)
def test_cli_bench_bad_input_exits_2_in_process(argv, match, tmp_path, capsys):
    assert cli.main(["bench", *argv, "--json", str(tmp_path / "b.json")]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "b.json").exists()


def test_cli_bench_unparsable_list_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--bandwidth", "10,fast"])
    assert info.value.code == 2
    assert "comma-separated list of float" in capsys.readouterr().err


class _Timed:
    """A fake method: records when it runs and takes ``seconds`` on every rank."""

    def __init__(self, name, seconds, log):
        self.name, self.seconds, self.log = name, seconds, log

    def run_rank(self, inputs, transport, *, timer=None):
        if transport.rank == 0:
            self.log.append(self.name)
        time.sleep(self.seconds)


def test_bench_points_interleave_the_methods_and_repeat_within_the_budget():
    """Round r runs every method that still needs a run, so a drift of the machine hits all methods alike;
    a method slower than the point budget allows runs once."""
    import threading
    from types import SimpleNamespace

    from astra_lab.bench import rank as bench_rank

    log = []
    methods = [("single", None, _Timed("single", 0.01, log)), ("astra", 1, _Timed("astra", 0.01, log)),
               ("tp", None, _Timed("tp", 0.6, log))]
    spec = SimpleNamespace(repeat=3, point_budget_s=0.5)
    link = SimpleNamespace(l2_bytes=lambda: None)
    transports = LoopbackHub(2).transports(10.0)
    out, calls = {}, []

    def work(r):
        progress = (lambda what, done: calls.append((what, done))) if r == 0 else (lambda what, done: None)
        out[r] = bench_rank._measure_point(methods, None, transports[r], link, spec, "10", progress)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[1] is None
    assert log == ["single", "astra", "tp", "single", "astra", "single", "astra"]
    rows = out[0]
    assert [len(r["latency_runs_s"]) for r in rows] == [3, 3, 1]
    for row, seconds in zip(rows, (0.01, 0.01, 0.6)):
        assert seconds <= row["latency_s"] < seconds + 0.5
        assert row["bytes_on_wire"] == 0 and row["bytes_sent_per_rank"] == [0, 0]
        assert "l2_bytes_per_run" not in row
    # every method's first run advances the bar once; repeats only rename it
    assert sum(done for _, done in calls) == 3
    assert ("astra G=1, run 3/3", 0) in calls


def test_without_matplotlib_astra_bench_writes_json_and_markdown_and_exits_0(monkeypatch, tmp_path, capsys):
    rows = synthetic_rows()
    monkeypatch.setattr(driver, "run", lambda cfg: rows)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    (tmp_path / "b.png").write_bytes(b"a plot of an earlier run")
    assert cli.main(["bench", "--link", "sim", "--json", str(tmp_path / "b.json")]) == 0
    out, err = capsys.readouterr()
    assert "[bench] warning: no plot (the latency plot needs matplotlib: pip install 'astra-inference[bench]')" in err
    written = json.loads((tmp_path / "b.json").read_text())
    assert written == rows
    assert (tmp_path / "b.md").read_text() == report.markdown(rows)
    assert not (tmp_path / "b.png").exists()  # an earlier run's plot would not show these rows
    assert f"[bench] wrote json: {tmp_path / 'b.json'}, markdown: {tmp_path / 'b.md'}\n" in out


def test_a_failing_plot_warns_and_leaves_json_and_markdown(monkeypatch, tmp_path, capsys):
    def broken_plot(rows, path):
        open(path, "wb").write(b"\x89PNG half")
        raise RuntimeError("no room on the canvas")

    monkeypatch.setattr(report, "plot", broken_plot)
    rows = synthetic_rows()
    paths = driver.write_outputs(BenchConfig(json=str(tmp_path / "b.json")), rows)
    assert paths == {"json": str(tmp_path / "b.json"), "markdown": str(tmp_path / "b.md")}
    assert "no plot (plotting failed: RuntimeError: no room on the canvas)" in capsys.readouterr().err
    assert json.loads((tmp_path / "b.json").read_text()) == rows
    assert "| astra G=16 (codewords/tokens) |" in (tmp_path / "b.md").read_text()
    assert not (tmp_path / "b.png").exists()


def test_rows_that_plot_write_all_three_outputs(tmp_path):
    paths = driver.write_outputs(BenchConfig(json=str(tmp_path / "b.json")), synthetic_rows())
    assert set(paths) == {"json", "markdown", "plot"}
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_astra_bench_on_sim_links_end_to_end(tmp_path):
    tokens, layers, groups, k = 64, 1, 1, 16
    out = tmp_path / "b.json"
    cmd = [sys.executable, "-m", "astra", "bench", "--model", "gpt2", "--layers", str(layers), "--tokens", str(tokens),
           "--ranks", "2", "--bandwidth", "10,1000", "--link", "sim", "--methods", "astra,single,sp_fp32",
           "--groups", str(groups), "--codebook-size", str(k), "--repeat", "1", "--json", str(out)]
    env = dict(ENV, ASTRA_CACHE=str(tmp_path / "cache"), TMPDIR=str(tmp_path))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    measured = json.loads(out.read_text())
    keys = {"model", "method", "ranks", "groups", "bandwidth_mbps", "link", "latency_s", "bytes_on_wire",
            "speedup_vs_single"}
    for r in measured:
        assert keys <= set(r), sorted(keys - set(r))
        assert r["model"] == "gpt2-small" and r["link"] == "sim" and r["layers"] == layers
        assert r["ranks"] == (1 if r["method"] == "single" else 2)
        assert r["latency_s"] > 0
    assert {(r["method"], r["bandwidth_mbps"]) for r in measured} == {
        (m, bw) for m in ("single", "astra", "sp_fp32") for bw in (10.0, 1000.0)}
    assert len(measured) == 6
    by = {(r["method"], r["bandwidth_mbps"]): r for r in measured}

    # GPT-2 is causal: over 2 ranks only rank 0 sends, its 32 tokens per block
    mine = tokens // 2
    bits = math.ceil(math.log2(k))
    astra_bytes = layers * math.ceil(mine * groups * bits / 8)
    assert astra_bytes == layers * ak.packed_size(mine * groups, ak.code_bits(k))
    sp_bytes = layers * mine * 768 * 4  # fp32 block inputs of gpt2-small (D = 768)
    for bw in (10.0, 1000.0):
        a, sp, single = by[("astra", bw)], by[("sp_fp32", bw)], by[("single", bw)]
        assert a["groups"] == groups and sp["groups"] is None
        assert a["bytes_on_wire"] == astra_bytes and a["bytes_sent_per_rank"] == [astra_bytes, 0]
        assert sp["bytes_on_wire"] == sp_bytes and sp["bytes_sent_per_rank"] == [sp_bytes, 0]
        assert single["bytes_on_wire"] == 0
        assert a["bytes_on_wire"] < sp["bytes_on_wire"] / 50
        formulations = a["remote_formulation"]
        assert isinstance(formulations, list) and formulations
        assert set(formulations) <= {"tokens", "codewords", "dequantize"}
        for r in (a, sp, single):
            assert r["speedup_vs_single"] == pytest.approx(single["latency_s"] / r["latency_s"], rel=1e-9)
    # the slow link really costs the modelled wire time
    sp10 = by[("sp_fp32", 10.0)]
    assert sp10["latency_s"] >= sp10["bytes_on_wire"] * 8 / 10e6
    assert sp10["comm_wait_s"] > by[("sp_fp32", 1000.0)]["comm_wait_s"]

    md = (tmp_path / "b.md").read_text()
    a10 = by[("astra", 10.0)]
    assert a10["encoding"] == ("int8" if ak.int8_estimate_native("cpu") else "exact")
    for label in ("single", "sp_fp32", f"astra G={groups} ({'/'.join(a10['remote_formulation'])}, {a10['encoding']} encode)"):
        assert label in md
    png = (tmp_path / "b.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not (tmp_path / "b_scaling.png").exists()  # one ranks value: nothing to scale


@pytest.mark.slow
def test_astra_bench_llm_first_token_pp_and_tp_int8_on_sim_links(tmp_path):
    """``--model llama``: every method is timed to its first token, pp once per chunk count (the fastest marked),
    tp_int8 splits SmolLM2's 3 kv heads over 2 ranks, and ASTRA and the single device report decoding rates."""
    tokens, layers, d = 64, 2, 576  # smollm2-135m's width; one block per pipeline stage
    out = tmp_path / "b.json"
    cmd = [sys.executable, "-m", "astra", "bench", "--model", "llama", "--size", "smollm2-135m", "--layers",
           str(layers), "--tokens", str(tokens), "--ranks", "2", "--bandwidth", "10", "--link", "sim",
           "--methods", "astra,single,pp,tp_int8", "--groups", "1", "--codebook-size", "16", "--repeat", "1",
           "--json", str(out)]
    env = dict(ENV, ASTRA_CACHE=str(tmp_path / "cache"), TMPDIR=str(tmp_path))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = json.loads(out.read_text())
    assert [(r["method"], r.get("pp_chunks")) for r in rows] == [
        ("single", None), ("astra", None), *(("pp", c) for c in (1, 2, 4, 8, 16)), ("tp_int8", None)]
    for r in rows:
        assert r["model"] == "llama-smollm2-135m" and r["layers"] == layers and r["bandwidth_mbps"] == 10.0
        assert r["latency_of"] == "first_token" and r["latency_s"] > 0
        assert ("decode_tokens_per_s" in r) == (r["method"] in ("single", "astra"))
    assert all(r["decode_tokens_per_s"] > 0 for r in rows if "decode_tokens_per_s" in r)
    pp = [r for r in rows if r["method"] == "pp"]
    assert [r["pp_best"] for r in pp].count(True) == 1
    best = next(r for r in pp if r["pp_best"])
    assert best["latency_s"] == min(r["latency_s"] for r in pp)
    for r in pp:  # stage 0 sends the prompt's fp16 hidden states once, whatever the chunk count
        assert r["bytes_sent_per_rank"] == [tokens * d * 2, 0]
        assert r["latency_s"] >= tokens * d * 2 * 8 / 10e6  # the sim link's wire time of those bytes
    tp = next(r for r in rows if r["method"] == "tp_int8")
    # two all-reduces per block, each one reduce-scatter and one all-gather step of half the (T, D) partial sums
    assert tp["bytes_sent_per_rank"] == [layers * 2 * 2 * q80_bytes(tokens * d // 2)] * 2
    md = (tmp_path / "b.md").read_text()
    assert f"| pp c={best['pp_chunks']} (best) |" in md and "| tp_int8 |" in md
    decoding = {r["method"]: r["decode_tokens_per_s"] for r in rows if "decode_tokens_per_s" in r}
    assert (f"Latency: time to the first generated token. Decoding after the prefill: astra G=1 "
            f"{decoding['astra']:.1f} tokens/s, single {decoding['single']:.1f} tokens/s.") in md


def test_llm_methods_end_at_the_models_first_token():
    """Every bench method of a decoder LLM returns, on its last rank alone, the argmax of the model's last
    logits (ASTRA with lossless codebooks, pp at every chunk count, tp_int8 within its rounding)."""
    from runtime_helpers import exact_codebooks, hf_decoder, run_threads

    from astra_lab.bench import methods as bench_methods

    model = hf_decoder("llama", layers=4, dim=64, heads=4, kv_heads=2)
    x = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(3))
    want = model(x).logits[:, -1].argmax(-1, keepdim=True)
    built = bench_methods.build(model, ["astra", "sp_fp16", "tp", "tp_int8", "pp"], [1],
                                {"1": exact_codebooks(model, x)}, table_budget_bytes=0, encode="exact", tokens=24)
    assert [bench_methods.label(*m) for m in built] == [
        "single", "astra G=1", "sp_fp16", "tp", "tp_int8", "pp c=1", "pp c=2", "pp c=4", "pp c=8", "pp c=16"]
    single = built[0][2]
    assert torch.equal(single.forward(x), want) and single.decode_tokens_per_s(x, 3) > 0
    for name, groups, method in built[1:]:
        outs, _ = run_threads(method, x, 2)
        assert outs[0] is None and torch.equal(outs[1], want), bench_methods.label(name, groups, method)
        fields = bench_methods.method_fields(name, method, x, 2)
        assert fields["latency_of"] == "first_token" and fields.get("pp_chunks") == getattr(method, "pp_chunks", None)
    assert bench_methods.method_fields("single", single, x, 2) == {"latency_of": "first_token"}
