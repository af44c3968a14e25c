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


def test_faults_on_udp(tmp_path, monkeypatch):
    """The wire fault cases of tests/test_wire_faults.py on 2 processes over udp: every rank ends within the
    timeout naming the right peer, and no wrong output is returned. A short or long message is told by its
    size (the datagrams carry it); a dead peer, which UDP cannot see, is a timeout."""
    import test_wire_faults as faults

    frame = faults.FRAME
    for case, text in [("short", "sent a short message: 41 bytes where a 82-byte frame was expected"),
                       ("long", "sent a long message: 89 bytes where a 82-byte frame was expected"),
                       ("hang", "timed out after 3 s (no piece arrived)")]:
        monkeypatch.setitem(faults.VICTIM, case, frame + text)
    cases = faults.CASES + ["die"]
    proc, _ = faults._spawned(tmp_path, "udp", cases)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0, 9]  # rank 1 died in the last case
    results = faults._results(tmp_path, cases)
    faults._check(results, "udp", faults.CASES)
    died = results["die", 0]
    assert died["error"] == f"PeerError: {frame}timed out after 3 s (no piece arrived)", died
    assert died["seconds"] < faults.TIMEOUT_S + faults.SLACK_S and results["die", 1] is None
