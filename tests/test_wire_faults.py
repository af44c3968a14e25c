"""Faults on real wires (gloo, gloo with grouped exchanges, MPI; NCCL where two GPUs exist): a peer sends short,
long, corrupt or replayed messages or codes >= K, holds other codebooks or weights, hangs or dies mid-forward,
and a transport is reused after a failure. Every rank ends within the timeout with the right peer named, and no
wrong output is returned.

One job runs every case in order (tests/wire_fault_ranks.py), each on a fresh transport, so that the processes
start once per wire."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.slow
HERE = os.path.dirname(os.path.abspath(__file__))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
HAS_MPI = shutil.which("mpirun") is not None
TIMEOUT_S = 3.0  # wire_fault_ranks.TIMEOUT_S
SLACK_S = 2.0  # scheduling on a busy machine

# case -> what rank 0 (the victim of rank 1) reports, per wire kind where it differs
FRAME = "rank 0: peer rank 1 failed in exchange 'block1': "
VICTIM = {
    "short": {"mpi": FRAME + "sent a short message: 41 bytes where a 82-byte frame was expected",
              "gloo": FRAME + "sent a corrupted or truncated frame (checksum mismatch)"},
    "long": FRAME + "sent a long message: more bytes where a 82-byte frame was expected",
    "corrupt": FRAME + "sent a corrupted or truncated frame (checksum mismatch)",
    "replay": FRAME + "sent a frame with sequence number 0 where 1 was expected (a message of another forward)",
    "codes": FRAME + "sent code 27 outside [0, 25) (1 of 80 codes)",
    "hang": FRAME + "timed out after 3 s",
    "reuse": FRAME + "sent a corrupted or truncated frame (checksum mismatch)",
}
MISMATCH = {"codebooks": "codebooks: rank 0 has '", "weights": "weights: rank 0 has '"}
CASES = ["clean", *VICTIM, *MISMATCH]


def _results(out, cases):
    got = {}
    for case in cases:
        for r in (0, 1):
            path = out / f"{case}.rank{r}.json"
            got[case, r] = json.loads(path.read_text()) if path.exists() else None
    return got


def _check(results, wire, cases):
    kind = "mpi" if wire == "mpi" else "gloo"
    for case in cases:
        r0, r1 = results[case, 0], results[case, 1]
        assert r0 is not None and r1 is not None, f"{case}: a rank wrote no result"
        if case == "clean":  # exact on CPU; CUDA kernels may round otherwise than the simulation's
            for res in (r0, r1):
                assert set(res) == {"max_abs_diff_vs_simulation"} and len(res["max_abs_diff_vs_simulation"]) == 2
                assert max(res["max_abs_diff_vs_simulation"]) <= (1e-3 if wire == "nccl" else 0.0), res
            continue
        if case in MISMATCH:
            for r, res in enumerate((r0, r1)):
                assert res["error"].startswith(f"HandshakeError: rank {r}: the ranks' setups differ, refusing to "
                                               f"start: {MISMATCH[case]}"), res
                assert res["error"].count("; ") == 0 and "rank 1 has '" in res["error"]  # that field only
            continue
        want = VICTIM[case][kind] if isinstance(VICTIM[case], dict) else VICTIM[case]
        assert r0["error"] == f"PeerError: {want}", (case, r0)
        assert r0["seconds"] < (TIMEOUT_S if case == "hang" else 0) + SLACK_S, (case, r0)
        # no wrong output: the faulty forward returned nothing (replay: the first forward was clean)
        assert len(r0["max_abs_diff_vs_simulation"]) == (1 if case == "replay" else 0)
        # the faulty rank ends too, within the timeout of its own wait
        assert r1["error"].startswith("PeerError: rank 1: peer rank 0 failed in exchange"), (case, r1)
        assert r1["seconds"] < (3 * TIMEOUT_S if case == "hang" else 0) + TIMEOUT_S + SLACK_S, (case, r1)
        if case == "reuse":
            for r, res in enumerate((r0, r1)):
                assert res["reused"].startswith(f"TransportFailed: rank {r}: this {wire.split('-')[0]} transport "
                                                f"failed earlier (PeerError: rank {r}: "), res
                assert res["reused"].endswith("and cannot be used again; create a new one")


def _spawned(tmp_path, wire, cases):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, os.path.join(HERE, "wire_fault_ranks.py"), wire, str(tmp_path), *cases],
                          capture_output=True, text=True, env=ENV, timeout=600)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("wire", ["gloo", "gloo-grouped"])
def test_faults_on_gloo(tmp_path, wire):
    cases = CASES + ["die"]
    proc, _ = _spawned(tmp_path, wire, cases)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0, 9]  # rank 1 died in the last case
    results = _results(tmp_path, cases)
    _check(results, wire, CASES)
    died = results["die", 0]
    assert died["error"].startswith(f"PeerError: {FRAME}") and "Connection" in died["error"], died  # closed/reset
    assert died["seconds"] < SLACK_S and results["die", 1] is None


@pytest.mark.skipif(not HAS_MPI, reason="mpirun (openmpi-bin) is not installed")
def test_faults_on_mpi(tmp_path):
    pytest.importorskip("mpi4py")
    from astra.launch import mpirun_command

    cases = CASES + ["die"]
    mpirun = mpirun_command(2, [])[:-2]  # without "-m astra"
    start = time.monotonic()
    proc = subprocess.run([*mpirun, os.path.join(HERE, "wire_fault_ranks.py"), "mpi", str(tmp_path), *cases],
                          capture_output=True, text=True, env=ENV, timeout=600)
    results = _results(tmp_path, cases)
    _check(results, "mpi", CASES)
    # rank 1 dies in the last case: mpirun ends the job at once and names the process
    assert proc.returncode == 9, proc.stdout + proc.stderr
    assert "Process name: [[" in proc.stderr and "],1]\n  Exit code:    9" in proc.stderr
    assert results["die", 1] is None
    assert time.monotonic() - start < 300


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="NCCL needs two GPUs (it refuses two ranks on one)")
def test_faults_on_nccl(tmp_path):
    """NCCL needs a send and its receive to have one size, so short and long messages are not NCCL cases."""
    cases = [c for c in CASES if c not in ("short", "long")] + ["die"]
    proc, _ = _spawned(tmp_path, "nccl", cases)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = _results(tmp_path, cases)
    _check(results, "nccl", [c for c in cases if c != "die"])
    assert results["die", 0]["error"].startswith(f"PeerError: {FRAME}")


ASTRA_RUN = ["run", "--model", "vit", "--size", "small", "--layers", "2", "--tokens", "16", "--groups", "8",
             "--codebook-size", "16", "--repeat", "1", "--warmup", "0", "--ranks", "2", "--timeout", "2"]


def _astra_run(tmp_path, fault, launcher=(), extra=()):
    env = dict(ENV, WIRE_FAULT=fault, ASTRA_CACHE=str(tmp_path / "cache"))
    start = time.monotonic()
    proc = subprocess.run([*launcher, *([] if launcher else [sys.executable]), os.path.join(HERE, "wire_fault_run.py"),
                           *ASTRA_RUN, *extra, "--json", str(tmp_path / "report.json")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert not (tmp_path / "report.json").exists()  # no rank reported outputs
    assert "Traceback" not in proc.stderr, proc.stderr  # one line per failed rank (ASTRA_DEBUG is unset)
    return proc, time.monotonic() - start


def test_astra_run_ends_every_rank_with_one_line_when_a_peer_sends_corrupt_frames(tmp_path):
    proc, _ = _astra_run(tmp_path, "corrupt")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert ("astra run: rank 0: PeerError: peer rank 1 failed in exchange 'block1': sent a corrupted or truncated "
            "frame (checksum mismatch)") in lines
    assert any(line.startswith("astra run: rank 1: PeerError: peer rank 0 failed in exchange") for line in lines)
    assert "astra run: rank 0 exited with code 3" in lines and "astra run: rank 1 exited with code 3" in lines


def test_astra_run_refuses_to_start_when_a_rank_holds_other_codebooks(tmp_path):
    proc, _ = _astra_run(tmp_path, "codebooks")
    assert proc.returncode == 1, proc.stderr
    for r in (0, 1):
        assert any(line.startswith(f"astra run: rank {r}: HandshakeError: the ranks' setups differ, refusing to "
                                   f"start: codebooks: rank 0 has '") for line in proc.stderr.splitlines()), proc.stderr
        assert f"astra run: rank {r} exited with code 4" in proc.stderr


@pytest.mark.skipif(not HAS_MPI, reason="mpirun (openmpi-bin) is not installed")
def test_astra_run_under_mpi_aborts_the_job_when_a_peer_hangs(tmp_path):
    pytest.importorskip("mpi4py")
    from astra.launch import mpirun_command

    proc, seconds = _astra_run(tmp_path, "hang", launcher=mpirun_command(2, [])[:-2], extra=["--transport", "mpi"])
    assert proc.returncode == 3, proc.stdout + proc.stderr  # MPI_Abort's code: the peer failed
    assert ("astra run: rank 0: PeerError: peer rank 1 failed in exchange 'block1': timed out after 2 s"
            in proc.stderr.splitlines())
    assert seconds < 300  # rank 1 sleeps an hour: MPI_Abort ended it
