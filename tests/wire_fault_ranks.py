"""Ranks for the multi-process wire fault tests (tests/test_wire_faults.py).

``python tests/wire_fault_ranks.py TRANSPORT OUT_DIR CASE...`` runs two ranks (spawned for gloo and NCCL; under
``mpirun -n 2`` for mpi). Both ranks run the cases in order, each on a fresh transport (a new process group,
or a duplicate of MPI's world communicator), through ``astra.parallelize`` and two forwards of a classifier
in which every rank needs every other rank's codes. Rank 1 misbehaves as the case says; each rank writes
``OUT_DIR/<case>.rank<r>.json``: each returned output's largest difference from the simulation, and the error
that ended the case on this rank, with the seconds it took to arrive.

TRANSPORT: gloo, gloo-grouped (gloo with the NCCL path's grouped exchanges), nccl, mpi, udp.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from runtime_helpers import tiny_classifier  # noqa: E402

import astra  # noqa: E402
from astra.launch import free_port, spawn_local  # noqa: E402

TIMEOUT_S = 3.0  # every exchange; the handshake waits up to SETUP_TIMEOUT_S
SETUP_TIMEOUT_S = 60.0
K = 25  # 5-bit codes: 25..31 are representable on the wire
BAD_CODE = 27
FAULTY, BLOCK = 1, "block1"


def _setup(device: str):
    """Model, inputs and codebooks (the same on every rank), and what rank 1 holds instead in the mismatch cases."""
    torch.set_num_threads(1)
    model = tiny_classifier()
    x = torch.randint(0, 50, (1, 40), generator=torch.Generator().manual_seed(0))
    books = astra.calibrate(model, [x], K, 4, progress=False)
    other_model = copy.deepcopy(model)
    with torch.no_grad():
        other_model.blocks[0].fc1.weight[3, 5] += 1e-3
    other_books = astra.Codebooks([t + (1e-3 if i == 1 else 0.0) for i, t in enumerate(books.tensors)])
    model, x, other_model = model.to(device), x.to(device), other_model.to(device)
    want = astra.AstraEngine(model, books, encode="exact").simulate(x, 2)
    return model, x, books, other_model, other_books, want


def _transport(kind: str, rank: int, port: int | None):
    if kind == "mpi":
        from mpi4py import MPI

        from astra.transport.mpi import MPITransport

        return MPITransport(timeout_s=TIMEOUT_S, comm=MPI.COMM_WORLD.Dup())
    if kind == "udp":
        from astra.transport.udp import rendezvous

        return rendezvous(rank, 2, "127.0.0.1", port, timeout_s=TIMEOUT_S, setup_timeout_s=SETUP_TIMEOUT_S)
    from astra.transport.torch_dist import TorchDistTransport

    t = TorchDistTransport("nccl" if kind == "nccl" else "gloo", timeout_s=TIMEOUT_S, setup_timeout_s=SETUP_TIMEOUT_S,
                           init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    t.grouped = kind in ("nccl", "gloo-grouped")
    return t


def _misbehave(case: str, transport, engine) -> None:
    """Make rank 1's transport or engine misbehave in ``BLOCK`` as ``case`` says."""
    if case == "codes":
        encode = engine._encoders[1]

        def bad_codes(z):
            codes, dist = encode(z)
            codes = codes.clone()
            codes[0, 3, 2] = BAD_CODE
            return codes, dist

        engine._encoders[1] = bad_codes
        return
    send, sent = transport._send_frames, []

    def faulty(frames, receives, tag):
        if tag == BLOCK:
            sent.append(frames)
            if case == "short":
                frames = {dst: f[: f.numel() // 2].clone() for dst, f in frames.items()}
            elif case == "long":
                frames = {dst: torch.cat([f, torch.arange(7, dtype=torch.uint8)]) for dst, f in frames.items()}
            elif case in ("corrupt", "reuse"):
                frames = {dst: f.clone() for dst, f in frames.items()}
                for f in frames.values():
                    f[-5] ^= 0x04
            elif case == "replay" and len(sent) == 2:  # the second forward sends the first one's frames
                frames = sent[0]
            elif case == "hang":
                time.sleep(3 * TIMEOUT_S)
            elif case == "die":
                os._exit(9)
        return send(frames, receives, tag)

    transport._send_frames = faulty


def _run_case(case: str, kind: str, rank: int, port: int | None, setup, out_dir: str) -> None:
    model, x, books, other_model, other_books, want = setup
    if rank == FAULTY and case == "weights":
        model = other_model
    if rank == FAULTY and case == "codebooks":
        books = other_books
    transport = _transport(kind, rank, port)
    result, par = {"max_abs_diff_vs_simulation": []}, None
    start = time.monotonic()
    try:
        par = astra.parallelize(model, books, transport=transport, setup_timeout_s=SETUP_TIMEOUT_S, encode="exact")
        if rank == FAULTY:
            _misbehave(case, transport, par.engine)
        for _ in range(2):
            start = time.monotonic()
            out = par(x)
            result["max_abs_diff_vs_simulation"].append((out.float() - want[rank].float()).abs().max().item())
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        result.update(error=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - start)
        if case == "reuse" and par is not None:
            try:
                par(x)
                result["reused"] = "ran"
            except Exception as again:  # noqa: BLE001
                result["reused"] = f"{type(again).__name__}: {again}"
    finally:
        transport.close()
    with open(os.path.join(out_dir, f"{case}.rank{rank}.json"), "w") as f:
        json.dump(result, f)


def rank_main(kind: str, out_dir: str, cases: list[str], ports: list[int] | None) -> None:
    if kind == "mpi":
        from mpi4py import MPI

        rank = MPI.COMM_WORLD.Get_rank()
    else:
        rank = int(os.environ["RANK"])
    setup = _setup("cuda" if kind == "nccl" else "cpu")
    for i, case in enumerate(cases):
        _run_case(case, kind, rank, ports[i] if ports else None, setup, out_dir)


if __name__ == "__main__":
    transport_kind, out, *names = sys.argv[1:]
    if transport_kind == "mpi":
        rank_main(transport_kind, out, names, None)
    else:
        free: list[int] = []
        while len(free) < len(names):  # a fresh rendezvous port per case
            port = free_port()
            free += [] if port in free else [port]
        print(spawn_local(2, rank_main, (transport_kind, out, names, free), timeout_s=600, linger_s=60))
