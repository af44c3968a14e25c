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
(or re-executes itself under mpirun for ``--transport mpi``). Every wait for
ranks has a deadline (:func:`wait_ranks`), and a rank that fails ends with
one line and an exit code saying why (:func:`end_rank`).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable, NoReturn

from .handshake import HandshakeError
from .transport import PeerError, Transport, TransportFailed

#: seconds the ranks wait for each other while setting up (rendezvous, model build, calibration, handshake):
#: one rank calibrating cold must not time the others out
SETUP_TIMEOUT_S = 1800.0
#: exit codes of a rank that failed: a peer failed (or a transport refused after one); the handshake refused;
#: anything else
EXIT_PEER_FAILED, EXIT_HANDSHAKE_REFUSED, EXIT_FAILED = 3, 4, 1


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


def make_transport(name: str, timeout_s: float, setup_timeout_s: float = SETUP_TIMEOUT_S) -> Transport:
    """The transport of this rank: "gloo" / "nccl" (torch.distributed), "mpi" (mpi4py) or "udp" (datagrams with
    forward error correction, :mod:`astra.transport.udp`; it meets the other ranks as gloo does).

    ``timeout_s`` bounds every exchange, ``setup_timeout_s`` the rendezvous of the ranks."""
    if name == "mpi":
        from .transport.mpi import MPITransport

        return MPITransport(timeout_s=timeout_s)
    if name in ("gloo", "nccl", "udp"):
        place = rank_env()
        if place is not None and place.launcher != "torchrun":
            # torch.distributed's env:// rendezvous reads RANK/WORLD_SIZE; map the MPI/Slurm names.
            os.environ.setdefault("RANK", str(place.rank))
            os.environ.setdefault("WORLD_SIZE", str(place.world_size))
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"{name}: {var} is not set; launch with torchrun or `astra run --ranks N`")
        if name == "udp":
            from .transport.udp import rendezvous

            return rendezvous(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), os.environ["MASTER_ADDR"],
                              int(os.environ["MASTER_PORT"]), timeout_s=timeout_s, setup_timeout_s=setup_timeout_s)
        from .transport.torch_dist import TorchDistTransport

        return TorchDistTransport(name, timeout_s=timeout_s, setup_timeout_s=setup_timeout_s)
    raise ValueError(f"unknown transport {name!r}; choose gloo, nccl, mpi or udp")


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


def spawn_local(world_size: int, target: Callable, args: tuple = (), *, timeout_s: float = 3600.0,
                linger_s: float = 120.0) -> list[int]:
    """Run ``target(*args)`` in ``world_size`` fresh local processes (gloo/NCCL env set); returns exit codes.

    Waits as :func:`wait_ranks` does: at most ``timeout_s`` in all, at most ``linger_s`` after a rank failed."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_child, args=(r, world_size, port, target, args), name=f"astra-rank{r}")
             for r in range(world_size)]
    for p in procs:
        p.start()
    return wait_ranks(procs, timeout_s=timeout_s, linger_s=linger_s)


class LaunchTimeout(RuntimeError):
    """Ranks did not finish in time; they were terminated."""


def _exit_code(proc) -> int | None:
    return proc.poll() if isinstance(proc, subprocess.Popen) else proc.exitcode


def _stop(procs: list) -> None:
    """Terminate, then kill what is left after a few seconds."""
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + 5.0
    for p in procs:
        while _exit_code(p) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if _exit_code(p) is None:
            p.kill()
        if isinstance(p, subprocess.Popen):
            p.wait()
        else:
            p.join()


def wait_ranks(procs: list, *, timeout_s: float, linger_s: float, names: list[str] | None = None) -> list[int]:
    """Exit codes of ``procs`` (``multiprocessing.Process`` or ``subprocess.Popen``, one per rank) once all ended.

    Waits at most ``timeout_s`` in all, and at most ``linger_s`` after the first rank failed (exit code != 0):
    a failed rank's peers fail within their exchange timeout, so one still running after that is hung. On
    either deadline the processes still running are terminated and :class:`LaunchTimeout` names them
    (``names[i]``, default "rank i")."""
    names = names or [f"rank {r}" for r in range(len(procs))]
    deadline = time.monotonic() + timeout_s
    failed_at, first_failed = None, None
    while True:
        codes = [_exit_code(p) for p in procs]
        running = [i for i, c in enumerate(codes) if c is None]
        if not running:
            return codes
        if first_failed is None:
            first_failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
            if first_failed is not None:
                failed_at = time.monotonic()
        now = time.monotonic()
        lingered = failed_at is not None and now - failed_at > linger_s
        if now > deadline or lingered:
            _stop([procs[i] for i in running])
            why = (f"within {linger_s:g} s after {names[first_failed]} failed (exit code {codes[first_failed]})"
                   if lingered else f"within {timeout_s:g} s")
            raise LaunchTimeout(f"{', '.join(names[i] for i in running)} did not finish {why}; terminated")
        time.sleep(0.05)


def end_rank(exc: BaseException, transport: Transport | None, prog: str = "astra") -> NoReturn:
    """End this rank after ``exc``: one line on stderr (type, message, rank; the traceback too with ASTRA_DEBUG=1),
    ``MPI_Abort`` under MPI so that the other ranks end too, and an exit code by kind (EXIT_*).

    Exits with ``os._exit``: the peers may be gone, and a collective shutdown could hang."""
    place = rank_env()
    rank = transport.rank if transport is not None else (place.rank if place is not None else 0)
    message = str(exc).splitlines()[0] if str(exc) else ""
    prefix = f"rank {rank}: "
    message = message[len(prefix):] if message.startswith(prefix) else message
    if os.environ.get("ASTRA_DEBUG", "0") not in ("", "0"):
        traceback.print_exception(exc, file=sys.stderr)
    # one write: the lines of ranks that share a stderr do not interleave
    sys.stderr.write(f"{prog}: rank {rank}: {type(exc).__name__}: {message}\n")
    sys.stderr.flush()
    if isinstance(exc, (PeerError, TransportFailed)):
        code = EXIT_PEER_FAILED
    elif isinstance(exc, HandshakeError):
        code = EXIT_HANDSHAKE_REFUSED
    else:
        code = EXIT_FAILED
    if transport is not None:
        transport.abort(code)
    os._exit(code)


def mpirun_command(world_size: int, argv: list[str]) -> list[str]:
    """The mpirun command line that re-runs ``python -m astra <argv>`` on ``world_size`` local ranks."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise RuntimeError("--transport mpi needs mpirun (Debian: apt-get install openmpi-bin libopenmpi-dev)")
    cmd = [mpirun, "-n", str(world_size), "--oversubscribe", "--mca", "mpi_yield_when_idle", "1"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd + [sys.executable, "-m", "astra", *argv]
