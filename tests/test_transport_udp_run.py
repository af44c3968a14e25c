"""Real runs over the UDP transport: 2 local ranks of `astra run --transport udp` equal the single-process
simulation exactly (the handshake, the block exchanges and the class tokens all travel as datagrams)."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def astra_run(tmp_path, *args):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "astra", "run", *args, "--transport", "udp", "--json", str(out)],
                          capture_output=True, text=True, env=dict(ENV, ASTRA_CACHE=str(tmp_path / "cache")),
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_gpt2_two_ranks_udp_equals_the_simulation_and_generates(tmp_path):
    report = astra_run(tmp_path, "--model", "gpt2", "--layers", "2", "--tokens", "64", "--groups", "4",
                       "--codebook-size", "32", "--repeat", "2", "--ranks", "2", "--generate", "3")
    assert report["transport"] == "udp" and report["ranks"] == 2
    assert report["max_abs_diff_vs_simulation"] == 0.0


def test_vit_two_ranks_udp_class_tokens_equal_the_simulation(tmp_path):
    report = astra_run(tmp_path, "--model", "vit", "--size", "small", "--layers", "2", "--tokens", "16", "--groups",
                       "8", "--codebook-size", "16", "--repeat", "2", "--ranks", "2")
    assert report["transport"] == "udp" and report["tokens_per_rank"] == [8, 8]
    assert report["max_abs_diff_vs_simulation"] == 0.0
