"""Command line: ``python -m astra <command>`` (also installed as ``astra``)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys

from astra.engine import ENCODINGS
from astra.remote import FORMULATIONS

from .run import RunConfig

TABLE_BUDGET_HELP = ("MiB per layer for the projected K/V codebook tables (fp32 for the fused kernels, fp16 for "
                     "gather, 8-bit rows for gather_int8 on CPU; ViT-Base at G=32: 192/96/48.5 MiB); without room, "
                     "remote tokens are dequantized and projected instead")

ENCODE_HELP = ("how tokens are quantized: exact (nearest codeword), int8 (int8-estimated scores: faster, about 3 %% "
               "of codes near-nearest) or auto (int8 where its AVX-512 VNNI kernels run)")

def _add_run_args(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument("--model", choices=["gpt2", "vit"], default=d.model)
    p.add_argument("--size", default=d.size, help="gpt2: small|medium|large, vit: small|base|large")
    p.add_argument("--layers", type=int, default=d.layers, help="keep only the first L blocks")
    p.add_argument("--tokens", type=int, default=d.tokens, help="sequence length (ViT: patches, a square)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--ranks", type=int, default=d.ranks, help="number of ranks N")
    p.add_argument("--groups", type=int, default=d.groups, help="VQ groups G")
    p.add_argument("--codebook-size", type=int, default=d.codebook_size, help="codewords K")
    p.add_argument("--transport", choices=["gloo", "nccl", "mpi"], default=d.transport,
                   help="how ranks exchange bytes: gloo or nccl (torch.distributed), or mpi (mpi4py)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=d.device)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per rank (default 1: N ranks use N cores)")
    p.add_argument("--repeat", type=int, default=d.repeat, help="timed runs (the median is reported)")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--compare-single", action="store_true", help="also time the unmodified model on one rank")
    p.add_argument("--generate", type=int, default=d.generate, metavar="STEPS",
                   help="GPT-2: then decode STEPS tokens on the last rank (time to first token, tokens/s)")
    p.add_argument("--checkpoint", default=d.checkpoint, help="local Hugging Face checkpoint directory")
    p.add_argument("--codebooks", default=d.codebooks, help="codebook file (default: k-means calibration, cached)")
    p.add_argument("--formulation", choices=FORMULATIONS, default=d.formulation,
                   help="how remote tokens are attended (auto: cost model)")
    p.add_argument("--table-budget-mib", type=float, default=d.table_budget_mib, help=TABLE_BUDGET_HELP)
    p.add_argument("--encode", choices=ENCODINGS, default=d.encode, help=ENCODE_HELP)
    p.add_argument("--backend", choices=["reference", "cpu", "triton", "cuda"], default=d.backend)
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds before a silent peer is an error")
    p.add_argument("--setup-timeout", type=float, default=d.setup_timeout,
                   help="seconds the ranks wait for each other to build the model and codebooks and shake hands")
    p.add_argument("--job-timeout", type=float, default=d.job_timeout,
                   help="seconds the whole job may take before its ranks are terminated")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--calibration-iters", type=int, default=d.calibration_iters)
    p.add_argument("--json", default=d.json, metavar="PATH", help="write the report as JSON")


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from astra.launch import LaunchTimeout, mpirun_command, rank_env, spawn_local, wait_ranks

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
    # a rank's peers fail within --timeout of it: one still running well after that is hung
    linger = cfg.timeout + 30.0
    try:
        if cfg.transport == "mpi":
            ranks = f"ranks 0-{cfg.ranks - 1}" if cfg.ranks > 1 else "rank 0"
            return wait_ranks([subprocess.Popen(mpirun_command(cfg.ranks, argv))], timeout_s=cfg.job_timeout,
                              linger_s=linger, names=[f"mpirun ({ranks})"])[0]
        codes = spawn_local(cfg.ranks, rank_main, (cfg,), timeout_s=cfg.job_timeout, linger_s=linger)
    except LaunchTimeout as exc:
        print(f"astra run: {exc}", file=sys.stderr)
        return 1
    failed = [(r, c) for r, c in enumerate(codes) if c != 0]
    for r, c in failed:
        print(f"astra run: rank {r} exited with code {c}", file=sys.stderr)
    return 1 if failed else 0


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None
    return parse


DEFAULT_SIZE = {"vit": "base", "gpt2": "small"}


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    from astra_lab.bench.config import BenchConfig

    d = BenchConfig()
    p.add_argument("--model", type=_csv(str), default=d.models, help="vit,gpt2")
    p.add_argument("--size", type=_csv(str), default=None, help="default: base for vit, small for gpt2")
    p.add_argument("--tokens", type=int, default=d.tokens)
    p.add_argument("--layers", type=int, default=d.layers, help="keep only the first L blocks (default: all)")
    p.add_argument("--ranks", type=_csv(int), default=d.ranks)
    p.add_argument("--bandwidth", type=_csv(float), default=d.bandwidths, help="Mbps list")
    p.add_argument("--link", type=_csv(str), default=d.links, help="sim,netns,real")
    p.add_argument("--methods", type=_csv(str), default=d.methods, help=",".join(d.methods))
    p.add_argument("--groups", type=_csv(int), default=d.groups, help="ASTRA VQ groups G")
    p.add_argument("--codebook-size", type=int, default=d.codebook_size)
    p.add_argument("--table-budget-mib", type=float, default=d.table_budget_mib, help=TABLE_BUDGET_HELP)
    p.add_argument("--encode", choices=ENCODINGS, default=d.encode, help=ENCODE_HELP)
    p.add_argument("--topology", choices=["star", "shared"], default=d.topology)
    p.add_argument("--latency-ms", type=float, default=d.latency_ms, help="sim: per-message latency")
    p.add_argument("--repeat", type=int, default=d.repeat)
    p.add_argument("--point-budget", type=float, default=d.point_budget_s, help="seconds of runs per point at most")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--net-name", default=d.net_name)
    p.add_argument("--json", default=d.json)
    p.add_argument("--markdown", default=None)
    p.add_argument("--plot", default=None)


def _bench(args: argparse.Namespace) -> int:
    from astra_lab.bench import driver
    from astra_lab.bench.config import BenchConfig
    from astra_lab.links import NetnsError

    sizes = args.size
    cfgs = []
    for model in args.model:
        if model not in DEFAULT_SIZE:
            print(f"astra bench: unknown model {model!r}; choose vit or gpt2", file=sys.stderr)
            return 2
        cfgs.append(BenchConfig(
            models=[model], sizes=sizes or [DEFAULT_SIZE[model]], tokens=args.tokens, layers=args.layers,
            ranks=args.ranks, bandwidths=args.bandwidth, links=args.link, methods=args.methods, groups=args.groups,
            codebook_size=args.codebook_size, table_budget_mib=args.table_budget_mib, encode=args.encode,
            topology=args.topology, latency_ms=args.latency_ms, repeat=args.repeat,
            point_budget_s=args.point_budget, threads=args.threads, seed=args.seed, net_name=args.net_name,
            json=args.json, markdown=args.markdown, plot=args.plot,
        ))
    rows = []
    try:
        for cfg in cfgs:
            cfg.validate()
            rows += driver.run(cfg)
    except (ValueError, NetnsError) as exc:
        print(f"astra bench: {exc}", file=sys.stderr)
        return 2
    driver.write_outputs(cfgs[0], rows)
    return 0


def _net(args: argparse.Namespace) -> int:
    from astra_lab.links import NetnsError, NetnsLink

    try:
        link = NetnsLink(args.name, args.ranks, shared=args.shared)
        if args.action == "up":
            link.up(args.rate)
            print(f"link {args.name!r} up: {args.ranks} namespaces {link.namespace(0)}..{link.namespace(args.ranks - 1)}, "
                  f"{'shared medium' if args.shared else 'star'}, {args.rate:g} Mbps, addresses "
                  f"{link.address(0)}..{link.address(args.ranks - 1)} (GLOO_SOCKET_IFNAME={link.host_if(0)}, ...)")
        elif args.action == "rate":
            link.set_rate(args.rate)
        elif args.action == "show":
            if not link.exists():
                print(f"no link named {args.name!r}")
                return 1
            for dev, sent in link.sent_bytes().items():
                print(f"{dev}: {sent:,} bytes sent")
        else:
            link.down()
    except (ValueError, NetnsError) as exc:
        print(f"astra net: {exc}", file=sys.stderr)
        return 2
    return 0


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    import dataclasses as dc

    from astra_lab.train import fmnist, kjv, minilm, results
    from astra_lab.train.data import DataMissing

    module = {"fmnist": fmnist, "kjv": kjv, "minilm": minilm}[args.task]
    cfg_cls = {"fmnist": fmnist.FmnistConfig, "kjv": kjv.KjvConfig, "minilm": minilm.MinilmConfig}[args.task]
    cfg = module.QUICK if args.quick else cfg_cls()
    if args.ranks is not None:
        cfg = dc.replace(cfg, ranks=args.ranks)
    command = "python -m astra " + " ".join(argv)
    try:
        rows = module.run(cfg, command, progress=not args.no_progress)
    except DataMissing as exc:
        print(f"astra train: {exc}", file=sys.stderr)
        return 2
    for r in rows:
        print(f"  {r['task']:<7} {r['variant']:<22} G={str(r['groups']):<4} N={r['ranks']}  {r['metric']} = {r['value']:.4f}")
    if args.record:
        results.record(rows, args.record_json, args.record_md)
        print(f"recorded in {args.record_json} and {args.record_md}")
    return 0


def _demo() -> int:
    from astra_lab.links import NetnsError, require_netns

    try:
        require_netns()
        link = "netns"
    except NetnsError as exc:
        print(f"astra demo: {exc}; using simulated links", flush=True)
        link = "sim"
    argv = ["bench", "--model", "vit,gpt2", "--tokens", "1024", "--layers", "4", "--ranks", "2",
            "--bandwidth", "10,100", "--link", link, "--methods", "astra,single,sp_fp32,tp", "--groups", "1,32",
            "--repeat", "2", "--point-budget", "20", "--json", "runs/demo/bench.json"]
    print("astra demo: a short benchmark (4 of the 12 blocks; the full sweep is `python -m astra bench`):\n"
          "  python -m astra " + " ".join(argv), flush=True)
    return main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="astra", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one ASTRA inference over N ranks: latency, bytes, check against the simulation")
    _add_run_args(run)
    bench = sub.add_parser("bench", help="latency vs bandwidth of ASTRA and baselines (JSON, Markdown, plot)")
    _add_bench_args(bench)
    rank = sub.add_parser("bench-rank", help=argparse.SUPPRESS)
    rank.add_argument("spec")
    net = sub.add_parser("net", help="create/remove emulated links (network namespaces + token buckets; root)")
    net.add_argument("action", choices=["up", "down", "rate", "show"])
    net.add_argument("--name", default="astra")
    net.add_argument("--ranks", type=int, default=2)
    net.add_argument("--rate", type=float, default=10.0, help="Mbps")
    net.add_argument("--shared", action="store_true", help="one shared medium instead of a star")
    train = sub.add_parser("train", help="accuracy experiments: train, NAVQ-fine-tune and evaluate (records results)")
    train.add_argument("task", choices=["fmnist", "kjv", "minilm"])
    train.add_argument("--quick", action="store_true", help="a tiny version (seconds), for tests")
    train.add_argument("--ranks", type=int, default=None, help="simulated ranks N (default: the task's)")
    train.add_argument("--record", action="store_true", help="merge the rows into the accuracy record")
    train.add_argument("--record-json", default="benchmarks/results/accuracy.json")
    train.add_argument("--record-md", default="benchmarks/ACCURACY.md")
    train.add_argument("--no-progress", action="store_true")
    sub.add_parser("demo", help="the README's first command: a short benchmark on the embedded default setup")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args, argv)
    if args.command == "bench":
        return _bench(args)
    if args.command == "bench-rank":
        from astra_lab.bench.rank import main as rank_main

        rank_main(args.spec)
        return 0
    if args.command == "net":
        return _net(args)
    if args.command == "train":
        return _train(args, argv)
    if args.command == "demo":
        return _demo()
    return 2
