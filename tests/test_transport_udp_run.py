"""Real runs over the UDP transport: 2 local ranks of `astra run --transport udp` equal the single-process
simulation exactly (the handshake, the block exchanges and the class tokens all travel as datagrams)."""
import json
import os
import re
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


LOSSY_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {tests!r})
import astra
from astra.launch import make_transport, spawn_local
from astra.transport.udp import random_drop
from runtime_helpers import hf_gpt2, tiny_classifier

def rank(out_dir):
    torch.set_num_threads(1)
    t = make_transport("udp", timeout_s=10.0)
    t.drop = random_drop(0.2, seed=t.rank)  # a fifth of every rank's outgoing pieces is lost
    for name, model, x in [
        ("gpt2", hf_gpt2(layers=2), torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(1))),
        ("tiny", tiny_classifier(), torch.randint(0, 50, (1, 40), generator=torch.Generator().manual_seed(0))),
    ]:
        books = astra.calibrate(model, [x], 16, 4, progress=False)
        par = astra.parallelize(model, books, transport=t, setup_timeout_s=60.0)
        for i in range(3):
            torch.save(par(x), f"{{out_dir}}/{{name}}.{{i}}.rank{{t.rank}}.pt")
    print(f"rank {{t.rank}} dropped {{t.pieces_dropped}} of {{t.pieces_sent}}", flush=True)
    t.close()

if __name__ == "__main__":
    print(spawn_local(3, rank, (sys.argv[1],)))
"""


def test_three_ranks_over_a_lossy_udp_wire_equal_the_simulation(tmp_path):
    """astra.parallelize over udp with 20 % of every rank's pieces dropped: every output equals the simulation."""
    import torch
    from runtime_helpers import hf_gpt2, tiny_classifier

    import astra

    script = tmp_path / "lossy.py"
    script.write_text(LOSSY_SCRIPT.format(tests=os.path.dirname(__file__)))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("[0, 0, 0]"), proc.stdout + proc.stderr
    # the ranks' lines may interleave on the shared stdout: read them by pattern, not by line
    dropped = {int(r): int(n) for r, n in re.findall(r"rank (\d) dropped (\d+) of", proc.stdout)}
    assert sorted(dropped) == [0, 1, 2] and min(dropped.values()) > 0, proc.stdout
    for name, model, x in [
        ("gpt2", hf_gpt2(layers=2), torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(1))),
        ("tiny", tiny_classifier(), torch.randint(0, 50, (1, 40), generator=torch.Generator().manual_seed(0))),
    ]:
        want = astra.AstraEngine(model, astra.calibrate(model, [x], 16, 4, progress=False)).simulate(x, 3)
        for i in range(3):
            for r in range(3):
                assert torch.equal(torch.load(tmp_path / f"{name}.{i}.rank{r}.pt"), want[r]), (name, i, r)
