"""Real multi-process runs: gloo (spawned and torchrun), MPI (mpirun), failures, bad configs."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import astra_kernels as ak

pytestmark = pytest.mark.slow
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
HAS_MPI = shutil.which("mpirun") is not None


def astra_run(tmp_path, *args, launcher=(), timeout=600):
    out = tmp_path / "report.json"
    cmd = [*launcher, *([] if launcher else [sys.executable]), "-m", "astra", "run", *args, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(ENV, ASTRA_CACHE=str(tmp_path / "cache")),
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


def _check_bytes(report, causal):
    n, per_rank = report["ranks"], report["tokens_per_rank"]
    bits = ak.code_bits(report["codebook_size"])
    for r in range(n):
        payload = ak.packed_size(report["batch"] * per_rank[r] * report["groups"], bits)
        dests = (n - 1 - r) if causal else n - 1
        assert report["payload_bytes_per_rank_per_block"][r] == (payload if dests else 0)
        assert report["bytes_sent_per_rank_per_block"][r] == payload * dests


GPT2 = ["--model", "gpt2", "--layers", "2", "--tokens", "64", "--groups", "4", "--codebook-size", "32", "--repeat", "2"]
VIT = ["--model", "vit", "--size", "small", "--layers", "2", "--tokens", "16", "--groups", "8", "--codebook-size", "16",
       "--repeat", "2"]


def test_gpt2_two_ranks_gloo(tmp_path):
    report, stdout = astra_run(tmp_path, *GPT2, "--ranks", "2", "--compare-single", "--generate", "3")
    assert report["max_abs_diff_vs_simulation"] == 0.0
    assert report["transport"] == "gloo" and report["ranks"] == 2 and report["latency_s"] > 0
    assert report["single_device_latency_s"] > 0 and report["time_to_first_token_s"] > 0
    _check_bytes(report, causal=True)
    assert "max |diff| = 0" in stdout and "speedup" in stdout


def test_vit_four_ranks_gloo_distributed_class_tokens(tmp_path):
    report, _ = astra_run(tmp_path, *VIT, "--ranks", "4")
    assert report["max_abs_diff_vs_simulation"] == 0.0
    assert report["tokens_per_rank"] == [4, 4, 4, 4]
    _check_bytes(report, causal=False)


def test_torchrun_launch(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    report, _ = astra_run(tmp_path, *VIT, "--ranks", "2", launcher=torchrun)
    assert report["max_abs_diff_vs_simulation"] == 0.0 and report["ranks"] == 2


@pytest.mark.skipif(not HAS_MPI, reason="mpirun (openmpi-bin) is not installed")
def test_gpt2_two_ranks_mpi(tmp_path):
    pytest.importorskip("mpi4py")
    report, _ = astra_run(tmp_path, *GPT2, "--ranks", "2", "--transport", "mpi")
    assert report["transport"] == "mpi" and report["max_abs_diff_vs_simulation"] == 0.0
    _check_bytes(report, causal=True)


PARALLELIZE_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {tests!r})
import astra
from astra.launch import spawn_local
from runtime_helpers import hf_gpt2

def rank(out_dir):
    torch.set_num_threads(1)
    model = hf_gpt2(layers=2)
    x = torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(1))
    books = astra.calibrate(model, [x], 16, 4, progress=False)
    with astra.parallelize(model, books, transport="gloo", timeout_s=30.0) as par:
        torch.save(par(x), f"{{out_dir}}/rank{{par.rank}}.pt")

if __name__ == "__main__":
    print(spawn_local(3, rank, (sys.argv[1],)))
"""


def test_parallelize_wraps_an_unmodified_hf_model_for_each_rank(tmp_path):
    """The user-facing API in a launched job: every rank's logits equal its part of the simulation."""
    import torch
    from runtime_helpers import hf_gpt2

    import astra

    script = tmp_path / "par.py"
    script.write_text(PARALLELIZE_SCRIPT.format(tests=os.path.dirname(__file__)))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("[0, 0, 0]"), proc.stdout + proc.stderr
    model = hf_gpt2(layers=2)
    x = torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(1))
    want = astra.AstraEngine(model, astra.calibrate(model, [x], 16, 4, progress=False)).simulate(x, 3)
    for r in range(3):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert got.shape == (2, 7, 97)
        assert torch.equal(got, want[r])


KILL_SCRIPT = r"""
import os, sys, time, torch
sys.path.insert(0, {tests!r})
import astra
from astra.launch import make_transport, spawn_local
from runtime_helpers import tiny_classifier, tiny_lm

def rank(mode, model_name, out_dir):
    torch.set_num_threads(1)
    t = make_transport("gloo", timeout_s=3.0)
    model = tiny_lm() if model_name == "lm" else tiny_classifier()
    x = torch.randint(0, 50, (1, 24), generator=torch.Generator().manual_seed(0))
    engine = astra.AstraEngine(model, astra.calibrate(model, [x], 8, 4, progress=False))
    if t.rank == 1:
        post = t.exchange
        def dying(payload, send_to, recv_sizes, tag, timeout_s=None):
            if tag == "block1":
                if mode == "kill":
                    os._exit(9)
                time.sleep(10)  # hung: alive but silent (longer than the 3 s timeout)
            return post(payload, send_to, recv_sizes, tag, timeout_s)
        t.exchange = dying
    start = time.time()
    try:
        engine.run_rank(x, t)
    except astra.PeerError as exc:
        with open(os.path.join(out_dir, f"rank{{t.rank}}.txt"), "w") as f:
            f.write(f"{{time.time() - start:.2f}} {{exc}}")
        os._exit(3)

if __name__ == "__main__":
    print(spawn_local(3, rank, tuple(sys.argv[1:])))
"""


@pytest.mark.parametrize("mode,model", [("kill", "classifier"), ("hang", "classifier"), ("kill", "lm")])
def test_failed_peer_ends_the_others_with_a_named_error(tmp_path, mode, model):
    """Every rank that needs the failed peer's codes fails within the timeout, naming it and the block.

    In the non-causal classifier that is every rank. In the causal LM rank 0
    needs nobody (it only sends), so it may finish its own outputs; rank 2 fails.
    """
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(tests=os.path.dirname(__file__)))
    start = time.time()
    proc = subprocess.run([sys.executable, str(script), mode, model, str(tmp_path)], capture_output=True, text=True,
                          env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    dependent = (0, 2) if model == "classifier" else (2,)
    assert all(codes[r] == 3 for r in dependent), proc.stdout + proc.stderr
    assert codes[0] in (0, 3)
    if mode == "kill":
        assert codes[1] == 9
    for r in dependent:
        seconds, message = (tmp_path / f"rank{r}.txt").read_text().split(" ", 1)
        assert f"rank {r}: peer rank 1 failed in exchange 'block1'" in message
        assert float(seconds) < 3.0 + 10.0
    assert time.time() - start < 120


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tokens", "3", "--ranks", "4"], "cannot split 3 tokens over 4 ranks"),
        (["--groups", "5"], "--groups 5 must divide the model width D=768"),
        (["--model", "vit", "--tokens", "1000"], "square number of patch tokens"),
        (["--transport", "nccl"], "--transport nccl needs --device cuda"),
    ],
)
def test_bad_run_configs_fail_before_starting_ranks(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "astra", "run", "--layers", "2", *args], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr


def test_codebooks_for_the_wrong_model_are_rejected(tmp_path):
    import torch

    path = tmp_path / "books.safetensors"
    import astra

    astra.Codebooks([torch.randn(1, 4, 768)] * 3).save(str(path))
    proc = subprocess.run([sys.executable, "-m", "astra", "run", "--layers", "2", "--codebooks", str(path)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2 and "codebooks cover 3 blocks but the model has 2" in proc.stderr
