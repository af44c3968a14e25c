"""Command line: ``python -m astra <command>`` (also installed as ``astra``)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys

import astra_kernels as ak
from astra import models
from astra._optional import MissingDependency
from astra.codebooks import QUANTIZE
from astra.partition import PARTITIONS
from astra.engine import ENCODINGS
from astra.remote import FORMULATIONS

from .run import DTYPES, RunConfig

TABLE_BUDGET_HELP = ("MiB per layer for the projected K/V codebook tables (fp32 for the fused kernels, fp16 for "
                     "gather, 8-bit rows for gather_int8 on CPU; ViT-Base at G=32: 192/96/48.5 MiB); without room, "
                     "remote tokens are dequantized and projected instead")

QUANTIZE_HELP = ("what each token sends codes of: input (its attention input, D features) or kv (its keys before "
                 "rotation and its values, Hkv*d features each: 2G codes per token, decoded without a projection)")

EXCHANGE_PARTS_HELP = ("messages that carry a rank's codes of one block to each peer (default 1); with more, the block "
                       "before computes its output part by part and sends each part's codes at once")
PARTITION_HELP = ("how the sequence is cut over the ranks: balanced (causal models: later ranks, which attend to "
                  "more earlier tokens, get fewer) or even")
ENCODE_HELP = ("how tokens are quantized: exact (nearest codeword), int8 (int8-estimated scores: faster where "
               "its SIMD kernels beat the exact search, some codes near-nearest) or auto (int8 where it is faster)")

def _add_model_args(p: argparse.ArgumentParser) -> None:
    """The model, its inputs, codebooks and ranks: what ``run`` and ``generate`` share."""
    d = RunConfig()
    p.add_argument("--model", choices=models.FAMILIES, default=d.model)
    p.add_argument("--size", default=d.size, help="; ".join(f"{f}: {'|'.join(models.sizes(f))} (default "
                                                             f"{models.DEFAULT_SIZES[f]})" for f in models.FAMILIES))
    p.add_argument("--layers", type=int, default=d.layers, help="keep only the first L blocks")
    p.add_argument("--tokens", type=int, default=d.tokens, help="sequence length (ViT: patches, a square)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--ranks", type=int, default=d.ranks, help="number of ranks N")
    p.add_argument("--groups", type=int, default=d.groups, help="VQ groups G")
    p.add_argument("--codebook-size", type=int, default=d.codebook_size, help="codewords K")
    p.add_argument("--quantize", choices=QUANTIZE, default=d.quantize, help=QUANTIZE_HELP)
    p.add_argument("--transport", choices=["gloo", "nccl", "mpi", "udp"], default=d.transport,
                   help="how ranks exchange bytes: gloo or nccl (torch.distributed), mpi (mpi4py), or udp "
                        "(datagrams with forward error correction)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=d.device)
    p.add_argument("--dtype", choices=list(DTYPES), default=d.dtype, help="the model's weights and activations")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per rank (default 1: N ranks use N cores)")
    p.add_argument("--checkpoint", default=d.checkpoint, help="local Hugging Face checkpoint directory")
    p.add_argument("--prompt", default=d.prompt, help="input text, by the --checkpoint's tokenizer (sets --tokens)")
    p.add_argument("--codebooks", default=d.codebooks, help="codebook file (default: k-means calibration, cached)")
    p.add_argument("--formulation", choices=FORMULATIONS, default=d.formulation,
                   help="how remote tokens are attended (auto: cost model)")
    p.add_argument("--table-budget-mib", type=float, default=d.table_budget_mib, help=TABLE_BUDGET_HELP)
    p.add_argument("--encode", choices=ENCODINGS, default=d.encode, help=ENCODE_HELP)
    p.add_argument("--exchange-parts", type=int, default=d.exchange_parts, help=EXCHANGE_PARTS_HELP)
    p.add_argument("--partition", choices=PARTITIONS, default=d.partition, help=PARTITION_HELP)
    p.add_argument("--backend", choices=ak.BACKENDS, default=d.backend)
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds before a silent peer is an error")
    p.add_argument("--setup-timeout", type=float, default=d.setup_timeout,
                   help="seconds the ranks wait for each other to build the model and codebooks and shake hands")
    p.add_argument("--job-timeout", type=float, default=d.job_timeout,
                   help="seconds the whole job may take before its ranks are terminated")
    p.add_argument("--seed", type=int, default=d.seed, help="random weights and inputs (and sampling)")
    p.add_argument("--calibration-iters", type=int, default=d.calibration_iters)


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument("--temperature", type=float, default=d.temperature, help="0: greedy")
    p.add_argument("--top-k", type=int, default=d.top_k, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="sample within this much probability")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    _add_model_args(p)
    p.add_argument("--repeat", type=int, default=d.repeat, help="timed runs (the median is reported)")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--compare-single", action="store_true", help="also time the unmodified model on one rank")
    p.add_argument("--generate", type=int, default=d.generate, metavar="STEPS",
                   help="language models: then decode STEPS tokens on the last rank (time to first token, tokens/s)")
    _add_sampling_args(p)
    p.add_argument("--json", default=d.json, metavar="PATH", help="write the report as JSON")


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--steps", dest="generate", type=int, default=16, help="tokens to generate")
    _add_sampling_args(p)
    p.add_argument("--json", default=None, metavar="PATH", help="write the tokens and timings as JSON")


def _run(args: argparse.Namespace, argv: list[str], rank_main, command: str) -> int:
    """Start the ranks of ``astra run`` or ``astra generate`` (or be one of them, when a launcher started us)."""
    from astra.launch import LaunchTimeout, mpirun_command, rank_env, spawn_local, wait_ranks

    from .run import check_config, resolve

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        cfg = resolve(cfg)
        check_config(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"astra {command}: {exc}", file=sys.stderr)
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
        print(f"astra {command}: {exc}", file=sys.stderr)
        return 1
    failed = [(r, c) for r, c in enumerate(codes) if c != 0]
    for r, c in failed:
        print(f"astra {command}: rank {r} exited with code {c}", file=sys.stderr)
    return 1 if failed else 0


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None
    return parse


LOSS_HELP = ("random loss per packet and direction, in percent (steps of 0.1): netns drops packets with nftables "
             "(Debian package nftables), sim models TCP's retransmissions")
DELAY_HELP = ("one-way delay per message, in ms: sim only (the netns links cannot delay packets: this kernel has no "
              "netem qdisc)")
RATE_SCHEDULE_HELP = ("the rate over time, seconds:Mbps from 0, e.g. 0:50,2:5,4:50 (replaces --{rate}); {when}")


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    from astra_lab.baselines.pipeline_parallel import PP_CHUNKS
    from astra_lab.bench.config import METHODS, TRANSPORTS, BenchConfig

    d = BenchConfig()
    p.add_argument("--model", type=_csv(str), default=d.models, help=",".join(models.FAMILIES))
    p.add_argument("--size", type=_csv(str), default=None,
                   help="default: " + ", ".join(f"{s} for {f}" for f, s in models.DEFAULT_SIZES.items()))
    p.add_argument("--tokens", type=int, default=d.tokens)
    p.add_argument("--layers", type=int, default=d.layers, help="keep only the first L blocks (default: all)")
    p.add_argument("--ranks", type=_csv(int), default=d.ranks)
    p.add_argument("--bandwidth", type=_csv(float), default=None,
                   help=f"Mbps list (default {','.join(f'{b:g}' for b in d.bandwidths)})")
    p.add_argument("--link", type=_csv(str), default=d.links,
                   help="sim,netns,real,emulated (emulated: each rank timed alone, the schedule replayed over "
                        "modelled links; any --ranks)")
    p.add_argument("--methods", type=_csv(str), default=d.methods,
                   help=f"{','.join(METHODS)} (default {','.join(d.methods)}; pp runs every chunk count of "
                        f"{','.join(map(str, PP_CHUNKS))} up to --tokens)")
    p.add_argument("--groups", type=_csv(int), default=d.groups, help="ASTRA VQ groups G")
    p.add_argument("--codebook-size", type=int, default=d.codebook_size)
    p.add_argument("--quantize", choices=QUANTIZE, default=d.quantize, help=QUANTIZE_HELP)
    p.add_argument("--table-budget-mib", type=float, default=d.table_budget_mib, help=TABLE_BUDGET_HELP)
    p.add_argument("--encode", choices=ENCODINGS, default=d.encode, help=ENCODE_HELP)
    p.add_argument("--exchange-parts", type=int, default=d.exchange_parts, help=EXCHANGE_PARTS_HELP)
    p.add_argument("--partition", choices=PARTITIONS, default=d.partition, help=PARTITION_HELP)
    p.add_argument("--topology", choices=["star", "shared"], default=d.topology)
    p.add_argument("--latency-ms", type=float, default=d.latency_ms,
                   help="per-message latency: sim's, or added to emulated's modelled one")
    p.add_argument("--transport", choices=TRANSPORTS, default=d.transport, help="how the ranks exchange bytes")
    p.add_argument("--loss", type=float, default=d.loss_pct, metavar="PCT", help=LOSS_HELP)
    p.add_argument("--delay", type=float, default=d.delay_ms, metavar="MS", help=DELAY_HELP)
    p.add_argument("--rate-schedule", default=d.rate_schedule, metavar="SPEC",
                   help=RATE_SCHEDULE_HELP.format(rate="bandwidth", when="the rate follows it from the start of "
                                                  "the timed runs, sim and netns links"))
    p.add_argument("--repeat", type=int, default=d.repeat)
    p.add_argument("--point-budget", type=float, default=d.point_budget_s, help="seconds of runs per point at most")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--net-name", default=d.net_name)
    p.add_argument("--json", default=d.json)
    p.add_argument("--markdown", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--scaling-plot", default=None, help="speed-up vs ranks (default: JSON path with _scaling.png)")


def _bench(args: argparse.Namespace) -> int:
    from astra_lab.bench.config import BenchConfig
    from astra_lab.links import NetnsError

    try:
        from astra_lab.bench import driver
    except MissingDependency as exc:
        print(f"astra bench: {exc}", file=sys.stderr)
        return 2
    sizes = args.size
    if args.rate_schedule is not None and args.bandwidth is not None:
        print("astra bench: --rate-schedule sets the rates; drop --bandwidth", file=sys.stderr)
        return 2
    cfgs = []
    for model in args.model:
        if model not in models.FAMILIES:
            print(f"astra bench: unknown model {model!r}; choose one of {', '.join(models.FAMILIES)}", file=sys.stderr)
            return 2
        cfgs.append(BenchConfig(
            models=[model], sizes=sizes or [models.DEFAULT_SIZES[model]], tokens=args.tokens, layers=args.layers,
            ranks=args.ranks, bandwidths=BenchConfig().bandwidths if args.bandwidth is None else args.bandwidth,
            links=args.link, methods=args.methods, groups=args.groups,
            codebook_size=args.codebook_size, quantize=args.quantize, table_budget_mib=args.table_budget_mib,
            encode=args.encode, exchange_parts=args.exchange_parts, partition=args.partition,
            topology=args.topology, latency_ms=args.latency_ms, transport=args.transport, loss_pct=args.loss,
            delay_ms=args.delay, rate_schedule=args.rate_schedule, repeat=args.repeat,
            point_budget_s=args.point_budget, threads=args.threads, seed=args.seed, net_name=args.net_name,
            json=args.json, markdown=args.markdown, plot=args.plot, scaling_plot=args.scaling_plot,
        ))
    rows = []
    try:
        for cfg in cfgs:
            cfg.validate()
            rows += driver.run(cfg)
    except (ValueError, NetnsError, MissingDependency) as exc:
        print(f"astra bench: {exc}", file=sys.stderr)
        return 2
    driver.write_outputs(cfgs[0], rows)
    return 0


def _net(args: argparse.Namespace) -> int:
    from astra_lab.links import NetnsError, NetnsLink, RateSchedule, loss_permille

    faults = [f"--{name}" for name, value in (("loss", args.loss), ("delay", args.delay),
                                              ("rate-schedule", args.rate_schedule)) if value is not None]
    try:
        if faults and args.action != "up":
            raise ValueError(f"{' and '.join(faults)}: only `astra net up` takes faults")
        if args.delay:
            raise ValueError("--delay: netns links cannot delay packets on this kernel (no netem qdisc); "
                             "`astra bench --link sim --delay MS` models a one-way delay per message")
        if args.rate is not None and args.rate_schedule is not None:
            raise ValueError("--rate-schedule sets the rates; drop --rate")
        schedule = None if args.rate_schedule is None else RateSchedule.parse(args.rate_schedule)
        rate = schedule.first_mbps if schedule is not None else 10.0 if args.rate is None else args.rate
        link = NetnsLink(args.name, args.ranks, shared=args.shared)
        if args.action == "up":
            loss = args.loss or 0.0
            link.up(rate, loss_pct=loss)
            print(f"link {args.name!r} up: {args.ranks} namespaces {link.namespace(0)}..{link.namespace(args.ranks - 1)}, "
                  f"{'shared medium' if args.shared else 'star'}, {rate:g} Mbps"
                  f"{f', {loss_permille(loss) / 10:g} % loss' if loss else ''}, addresses "
                  f"{link.address(0)}..{link.address(args.ranks - 1)} (GLOO_SOCKET_IFNAME={link.host_if(0)}, ...)",
                  flush=True)
            if schedule is not None:
                _follow(schedule, link)
        elif args.action == "rate":
            link.set_rate(rate)
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


def _follow(schedule, link) -> None:
    """Run ``schedule`` on ``link`` in the foreground, each change printed, until its last step (or Ctrl-C);
    the link stays up at the schedule's first rate."""
    import time

    from astra_lab.links import ScheduleThread

    def change(mbps: float) -> None:
        link.set_rate(mbps)
        print(f"  {time.monotonic() - epoch:7.2f} s: {mbps:g} Mbps", flush=True)

    print(f"rate schedule {schedule.spec} (s:Mbps), then back to {schedule.first_mbps:g} Mbps", flush=True)
    epoch = time.monotonic()
    thread = ScheduleThread(schedule, change, epoch)
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    thread.stop()


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    import dataclasses as dc

    try:
        from astra_lab.train import fmnist, kjv, minilm, results
        from astra_lab.train.data import DataMissing
    except MissingDependency as exc:
        print(f"astra train: {exc}", file=sys.stderr)
        return 2
    module = {"fmnist": fmnist, "kjv": kjv, "kjv_llama": kjv, "minilm": minilm}[args.task]
    configs = {"fmnist": (fmnist.FmnistConfig(), fmnist.QUICK), "kjv": (kjv.KjvConfig(), kjv.QUICK),
               "kjv_llama": (kjv.LLAMA, kjv.QUICK_LLAMA), "minilm": (minilm.MinilmConfig(), minilm.QUICK)}
    cfg = configs[args.task][1 if args.quick else 0]
    if args.ranks is not None:
        cfg = dc.replace(cfg, ranks=args.ranks)
    if args.quantize is not None:
        cfg = dc.replace(cfg, quantize=args.quantize)
    if args.groups is not None:
        if not args.groups or any(g < 1 for g in args.groups):
            print(f"astra train: --groups must list counts >= 1, got {args.groups}", file=sys.stderr)
            return 2
        cfg = dc.replace(cfg, groups=args.groups)
    command = "python -m astra " + " ".join(argv)
    try:
        rows = module.run(cfg, command, progress=not args.no_progress)
    except (DataMissing, MissingDependency) as exc:
        print(f"astra train: {exc}", file=sys.stderr)
        return 2
    for r in rows:
        print(f"  {r['task']:<9} {r['variant']:<22} G={str(r['groups']):<4} N={r['ranks']}  {r['metric']} = {r['value']:.4f}")
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
    gen = sub.add_parser("generate", help="a distributed prefill over N ranks, then tokens printed as they come")
    _add_generate_args(gen)
    bench = sub.add_parser("bench", help="latency vs bandwidth of ASTRA and baselines (JSON, Markdown, plot)")
    _add_bench_args(bench)
    rank = sub.add_parser("bench-rank", help=argparse.SUPPRESS)
    rank.add_argument("spec")
    net = sub.add_parser("net", help="create/remove emulated links (network namespaces + token buckets; root)")
    net.add_argument("action", choices=["up", "down", "rate", "show"])
    net.add_argument("--name", default="astra")
    net.add_argument("--ranks", type=int, default=2)
    net.add_argument("--rate", type=float, default=None, help="Mbps (default 10)")
    net.add_argument("--shared", action="store_true", help="one shared medium instead of a star")
    net.add_argument("--loss", type=float, default=None, metavar="PCT", help="up: " + LOSS_HELP)
    net.add_argument("--delay", type=float, default=None, metavar="MS", help="refused: " + DELAY_HELP)
    net.add_argument("--rate-schedule", default=None, metavar="SPEC",
                     help="up: " + RATE_SCHEDULE_HELP.format(rate="rate", when="run in the foreground"))
    train = sub.add_parser("train", help="accuracy experiments: train, NAVQ-fine-tune and evaluate (records results)")
    train.add_argument("task", choices=["fmnist", "kjv", "kjv_llama", "minilm"])
    train.add_argument("--quick", action="store_true", help="a tiny version (seconds), for tests")
    train.add_argument("--ranks", type=int, default=None, help="simulated ranks N (default: the task's)")
    train.add_argument("--groups", type=_csv(int), default=None,
                       help="the VQ groups G to fine-tune for (default: the task's; Fashion-MNIST runs its ablations "
                            "only where their G is among them)")
    train.add_argument("--quantize", choices=QUANTIZE, default=None, help=QUANTIZE_HELP + " (default: the task's)")
    train.add_argument("--record", action="store_true", help="merge the rows into the accuracy record")
    train.add_argument("--record-json", default="benchmarks/results/accuracy.json")
    train.add_argument("--record-md", default="benchmarks/ACCURACY.md")
    train.add_argument("--no-progress", action="store_true")
    sub.add_parser("demo", help="the README's first command: a short benchmark on the embedded default setup")
    args = parser.parse_args(argv)
    if args.command == "run":
        from .run import rank_main

        return _run(args, argv, rank_main, "run")
    if args.command == "generate":
        from .generate import rank_main

        return _run(args, argv, rank_main, "generate")
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
