"""Command line: ``python -m astra <command>`` (also installed as ``astra``)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys

from .run import RunConfig


def _add_run_args(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument("--model", choices=["gpt2", "vit"], default=d.model)
    p.add_argument("--size", default=d.size, help="gpt2: small|medium|large, vit: small|base|large")
    p.add_argument("--layers", type=int, default=d.layers, help="keep only the first L blocks")
    p.add_argument("--tokens", type=int, default=d.tokens, help="sequence length (ViT: patches, a square)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--devices", type=int, default=d.devices, help="number of ranks N")
    p.add_argument("--groups", type=int, default=d.groups, help="VQ groups G")
    p.add_argument("--codebook-size", type=int, default=d.codebook_size, help="codewords K")
    p.add_argument("--engine", choices=["gloo", "nccl", "mpi"], default=d.engine)
    p.add_argument("--device", choices=["cpu", "cuda"], default=d.device)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per rank (default 1: N ranks use N cores)")
    p.add_argument("--repeat", type=int, default=d.repeat, help="timed runs (the median is reported)")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--compare-single", action="store_true", help="also time the unmodified model on one rank")
    p.add_argument("--generate", type=int, default=d.generate, metavar="STEPS",
                   help="GPT-2: then decode STEPS tokens on the last rank (time to first token, tokens/s)")
    p.add_argument("--checkpoint", default=d.checkpoint, help="local Hugging Face checkpoint directory")
    p.add_argument("--codebooks", default=d.codebooks, help="codebook file (default: k-means calibration, cached)")
    p.add_argument("--remote", choices=["auto", "tokens", "codewords", "dequantize"], default=d.remote,
                   help="how remote tokens are attended (auto: cost model)")
    p.add_argument("--backend", choices=["reference", "cpu", "triton", "cuda"], default=d.backend)
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds before a silent peer is an error")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--calibration-iters", type=int, default=d.calibration_iters)
    p.add_argument("--json", default=d.json, metavar="PATH", help="write the report as JSON")


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from .launch import mpirun_command, rank_env, spawn_local
    from .run import check_config, rank_main

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        check_config(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"astra run: {exc}", file=sys.stderr)
        return 2
    if rank_env() is not None:  # torchrun / mpirun / srun started this process as one rank
        rank_main(cfg)
        return 0
    if cfg.engine == "mpi":
        return subprocess.call(mpirun_command(cfg.devices, argv))
    codes = spawn_local(cfg.devices, rank_main, (cfg,))
    failed = [(r, c) for r, c in enumerate(codes) if c != 0]
    for r, c in failed:
        print(f"astra run: rank {r} exited with code {c}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="astra", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one ASTRA inference over N ranks: latency, bytes, check against the simulation")
    _add_run_args(run)
    sub.add_parser("demo", help="the README's first command: a short ASTRA run next to a single device")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args, argv)
    if args.command == "demo":
        demo = ["run", "--model", "gpt2", "--size", "small", "--tokens", "1024", "--devices", "2", "--groups", "1",
                "--codebook-size", "1024", "--compare-single", "--repeat", "3"]
        print("astra demo: " + " ".join(["python -m astra", *demo]), flush=True)
        return main(demo)
    return 2
