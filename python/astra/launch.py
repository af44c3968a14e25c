"""Starting the ranks of a job, whatever launched it.

Conventions read from the environment (first match wins):
    torchrun        RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    Open MPI        OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_SIZE
    MPICH / PMI     PMI_RANK, PMI_SIZE
    Slurm (srun)    SLURM_PROCID, SLURM_NTASKS, SLURM_NTASKS_PER_NODE
Multi-node: ``torchrun --nnodes=M --nproc-per-node=P --node-rank=k
--master-addr=HOST --master-port=29500 -m astra run ...`` on every node, or
``mpirun -H h1,h2 -n N python -m astra run --transport mpi ...``; set
GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME to the interface that links the nodes.

``astra run --ranks N`` without a launcher starts N local processes itself
(or re-executes itself under mpirun for ``--transport mpi``).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from typing import Callable

from .transport import Transport


@dataclass(frozen=True)
class RankEnv:
    rank: int
    world_size: int
    local_world_size: int
    launcher: str


def rank_env() -> RankEnv | None:
    """This process's place in a launched job, or None when started alone."""
    env = os.environ
    for launcher, rank, size, local in (
        ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"),
        ("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"),
        ("pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"),
        ("srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE"),
    ):
        if rank in env and size in env:
            world = int(env[size])
            local_size = env.get(local, "").split("(")[0]  # Slurm may say "2(x3)"
            return RankEnv(int(env[rank]), world, int(local_size) if local_size.isdigit() else world, launcher)
    return None


def local_rank() -> int:
    """This process's index among the ranks of its machine (0 when started alone)."""
    for var in ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def pin_cores(index: int, threads: int) -> list[int] | None:
    """Pin the calling thread (and the threads it starts later) to its own ``threads`` cores:
    co-located rank ``index`` gets cores [index * threads, (index + 1) * threads) of those it
    may use, so ranks neither share nor migrate between cores. Threads started before (e.g. a
    transport's I/O threads) keep their affinity. Does nothing (returns None) when there are
    not enough cores or ASTRA_PIN=0."""
    if os.environ.get("ASTRA_PIN", "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    mine = cores[index * threads: (index + 1) * threads]
    if len(mine) < threads:
        return None
    os.sched_setaffinity(0, mine)
    return mine


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed blocks (up to 32 MB each) instead of returning them to the OS.

    Every forward allocates large activation buffers; by default glibc maps and unmaps
    them each time, and touching the fresh pages costs page faults on every inference,
    which add to the latency and to its run-to-run noise.
    Applied to every measured process alike (ranks and the single-device baseline).
    Returns False where mallopt is not available (non-glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def make_transport(name: str, timeout_s: float) -> Transport:
    """The transport of this rank: "gloo" / "nccl" (torch.distributed) or "mpi" (mpi4py)."""
    if name == "mpi":
        from .transport.mpi import MPITransport

        return MPITransport(timeout_s=timeout_s)
    if name in ("gloo", "nccl"):
        from .transport.torch_dist import TorchDistTransport

        place = rank_env()
        if place is not None and place.launcher != "torchrun":
            # torch.distributed's env:// rendezvous reads RANK/WORLD_SIZE; map the MPI/Slurm names.
            os.environ.setdefault("RANK", str(place.rank))
            os.environ.setdefault("WORLD_SIZE", str(place.world_size))
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"{name}: {var} is not set; launch with torchrun or `astra run --ranks N`")
        return TorchDistTransport(name, timeout_s=timeout_s)
    raise ValueError(f"unknown transport {name!r}; choose gloo, nccl or mpi")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world_size: int, port: int, target: Callable, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
    )
    target(*args)


def spawn_local(world_size: int, target: Callable, args: tuple = ()) -> list[int]:
    """Run ``target(*args)`` in ``world_size`` fresh local processes (gloo/NCCL env set); returns exit codes."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_child, args=(r, world_size, port, target, args), name=f"astra-rank{r}")
             for r in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return [p.exitcode for p in procs]


def mpirun_command(world_size: int, argv: list[str]) -> list[str]:
    """The mpirun command line that re-runs ``python -m astra <argv>`` on ``world_size`` local ranks."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise RuntimeError("--transport mpi needs mpirun (Debian: apt-get install openmpi-bin libopenmpi-dev)")
    cmd = [mpirun, "-n", str(world_size), "--oversubscribe", "--mca", "mpi_yield_when_idle", "1"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd + [sys.executable, "-m", "astra", *argv]
