"""``astra run``: one ASTRA inference over N ranks, measured and checked.

Every rank builds the same model (random weights from a seed, or a local
checkpoint) and the same codebooks (a file, or deterministic k-means
calibration, cached), checks with the others that they agree (the
handshake), runs warm-up and timed ASTRA forwards, checks its outputs
against the single-process simulation, and reports to rank 0, which prints a
summary and writes JSON. The inputs are random token ids (or pixels), or
``--prompt`` tokenized by the checkpoint's tokenizer. A rank that fails ends
with one line naming the error and an exit code saying why
(:func:`astra.launch.end_rank`).
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, replace

import torch

import astra_kernels as ak
from astra import models
from astra.calibrate import cached_calibration
from astra.codebooks import Codebooks
from astra.digest import tensors_digest
from astra.engine import AstraEngine, PhaseTimer
from astra.generate import Sampling, generate
from astra.handshake import handshake, setup_digest
from astra.launch import (
    SETUP_TIMEOUT_S,
    end_rank,
    keep_freed_memory,
    local_rank,
    make_transport,
    pin_cores,
    rank_env,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class RunConfig:
    model: str = "gpt2"
    size: str | None = None  # None: the family's default (astra.models.DEFAULT_SIZES)
    layers: int | None = None
    tokens: int = 1024
    batch: int = 1
    ranks: int = 2
    groups: int = 1
    codebook_size: int = 1024
    quantize: str = "input"
    transport: str = "gloo"
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    repeat: int = 3
    warmup: int = 1
    compare_single: bool = False
    generate: int = 0
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    checkpoint: str | None = None
    prompt: str | None = None
    codebooks: str | None = None
    formulation: str = "auto"
    encode: str = "auto"
    exchange_parts: int = 1
    partition: str = "balanced"
    table_budget_mib: float = ak.TABLE_BUDGET_BYTES / 2**20
    backend: str | None = None
    timeout: float = 60.0
    setup_timeout: float = SETUP_TIMEOUT_S
    job_timeout: float = 3600.0
    seed: int = 0
    calibration_iters: int = 10
    json: str | None = None

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_k, self.top_p, self.seed)


def load_tokenizer(checkpoint: str | None):
    """The tokenizer saved in a checkpoint directory, or None when there is none."""
    if checkpoint is None:
        return None
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError, TypeError):  # no tokenizer files there (nothing is downloaded)
        return None


def prompt_ids(cfg: RunConfig) -> torch.Tensor:
    """The token ids (batch, T) of ``cfg.prompt``, by the checkpoint's tokenizer."""
    tokenizer = load_tokenizer(cfg.checkpoint)
    if tokenizer is None:
        raise ValueError("--prompt needs a --checkpoint directory with a tokenizer")
    ids = torch.tensor([tokenizer(cfg.prompt)["input_ids"]])
    if ids.shape[1] == 0:
        raise ValueError("--prompt has no tokens")
    return ids.expand(cfg.batch, -1)


def resolve(cfg: RunConfig) -> RunConfig:
    """The configuration with its defaults filled in: the family's size, and the prompt's length as ``tokens``."""
    if cfg.size is None:
        cfg = replace(cfg, size=models.DEFAULT_SIZES.get(cfg.model, ""))
    if cfg.prompt is not None:
        cfg = replace(cfg, tokens=prompt_ids(cfg).shape[1])
    return cfg


def load_codebooks(model, cfg: RunConfig, verbose: bool) -> Codebooks:
    """From ``cfg.codebooks``, else calibrated (and cached) on random inputs of the run's shape."""
    if cfg.codebooks:
        return Codebooks.load(cfg.codebooks)
    return cached_calibration(model, tokens=cfg.tokens, batch=cfg.batch, codebook_size=cfg.codebook_size,
                              groups=cfg.groups, iters=cfg.calibration_iters, seed=cfg.seed, progress=verbose,
                              quantize=cfg.quantize)


def prepare(cfg: RunConfig, verbose: bool) -> tuple[AstraEngine, torch.Tensor]:
    """Every rank's same model, inputs (the prompt, or random ids / pixels) and codebooks: (engine, inputs)."""
    model = models.build(cfg.model, cfg.size, tokens=cfg.tokens, layers=cfg.layers, checkpoint=cfg.checkpoint,
                         seed=cfg.seed, positions=cfg.tokens + cfg.generate).to(cfg.device, DTYPES[cfg.dtype])
    if cfg.prompt is not None:
        inputs = prompt_ids(cfg).to(cfg.device)
    else:
        inputs = models.example_inputs(model, cfg.tokens, cfg.batch, seed=cfg.seed).to(cfg.device)
    if inputs.is_floating_point():
        inputs = inputs.to(DTYPES[cfg.dtype])
    books = load_codebooks(model, cfg, verbose)
    engine = AstraEngine(model, books, formulation=cfg.formulation, backend=cfg.backend,
                         table_budget_bytes=int(cfg.table_budget_mib * 2**20), encode=cfg.encode, quantize=cfg.quantize,
                         exchange_parts=cfg.exchange_parts, partition=cfg.partition)
    return engine, inputs


def agree(transport, engine: AstraEngine, inputs: torch.Tensor, cfg: RunConfig) -> None:
    """The handshake: every rank's engine and inputs are the same, or every rank refuses to start."""
    handshake(transport, setup_digest(engine, transport.world_size, inputs=tensors_digest([("inputs", inputs)])[:16]),
              timeout_s=cfg.setup_timeout)


def _block_bytes(transport) -> tuple[int, int, int]:
    """(blocks, bytes sent, bytes received) of the block exchanges of the last run (a block's codes may travel
    in parts: exchanges "block3/0", "block3/1", ...)."""
    blocks = [r for r in transport.stats.records if r.tag.startswith("block")]
    return (len({r.tag.split("/")[0] for r in blocks}), sum(r.bytes_sent for r in blocks),
            sum(r.bytes_received for r in blocks))


def measure(cfg: RunConfig, transport) -> dict | None:
    """Run the job on this rank; rank 0 returns the report, the others None."""
    rank, world = transport.rank, transport.world_size
    engine, inputs = prepare(cfg, rank == 0)
    agree(transport, engine, inputs, cfg)
    books = engine.codebooks
    layout = engine.layout(inputs, world)

    for _ in range(cfg.warmup):
        engine.run_rank(inputs, transport)
    latencies, timer = [], PhaseTimer()
    for _ in range(cfg.repeat):
        transport.barrier()
        transport.stats.clear()
        timer = PhaseTimer()
        start = time.perf_counter()
        outputs = engine.run_rank(inputs, transport, timer=timer)
        latencies.append(time.perf_counter() - start)
    blocks, sent, received = _block_bytes(transport)
    simulated = engine.simulate(inputs, world)[rank]
    mine = {
        "latency_s": latencies,
        "tokens": layout.size(rank),
        "bytes_sent_per_block": sent / max(blocks, 1),
        "bytes_received_per_block": received / max(blocks, 1),
        "payload_bytes_per_block": engine.payload_bytes(cfg.batch, layout.size(rank)) if layout.destinations(rank) else 0,
        "phases_s": dict(timer.seconds),
        "max_abs_diff_vs_simulation": (outputs.float() - simulated.float()).abs().max().item(),
    }
    if cfg.generate:
        transport.barrier()
        gen = generate(engine, inputs, transport, cfg.generate, cfg.sampling)
        if gen is not None:
            mine.update(time_to_first_token_s=gen.first_token_s, decode_tokens_per_s=gen.decode_tokens_per_s)
    single = None
    if cfg.compare_single:
        transport.barrier()
        if rank == 0:
            single = single_device_latency(engine, inputs, cfg)
        transport.barrier("single-done", timeout_s=max(cfg.timeout, 3600.0))
    everyone = transport.gather_json(mine, "report")
    if rank != 0:
        return None
    per_run = [max(r["latency_s"][i] for r in everyone) for i in range(cfg.repeat)]
    report = {
        **{k: v for k, v in asdict(cfg).items() if k not in ("json",)},
        "model_dim": engine.adapter.dim,
        "blocks": len(engine.adapter.blocks),
        "bits_per_code": books.bits,
        "codes_per_token": books.codes_per_token,
        "remote_formulation": engine.remote_formulations(inputs, world),
        "encoding": engine.encode,
        "latency_s": statistics.median(per_run),
        "latency_runs_s": per_run,
        "tokens_per_rank": [r["tokens"] for r in everyone],
        "bytes_sent_per_rank_per_block": [r["bytes_sent_per_block"] for r in everyone],
        "bytes_received_per_rank_per_block": [r["bytes_received_per_block"] for r in everyone],
        "payload_bytes_per_rank_per_block": [r["payload_bytes_per_block"] for r in everyone],
        "wait_s_per_rank": [r["phases_s"].get("wait", 0.0) for r in everyone],
        "phases_s_per_rank": [r["phases_s"] for r in everyone],
        "max_abs_diff_vs_simulation": max(r["max_abs_diff_vs_simulation"] for r in everyone),
    }
    if single is not None:
        report["single_device_latency_s"] = single
        report["speedup_vs_single"] = single / report["latency_s"]
    if cfg.generate:
        last = everyone[-1]
        report["time_to_first_token_s"] = last["time_to_first_token_s"]
        report["decode_tokens_per_s"] = last["decode_tokens_per_s"]
    return report


@torch.no_grad()
def single_device_latency(engine: AstraEngine, inputs: torch.Tensor, cfg: RunConfig) -> float:
    """Median latency of the unmodified model's own forward on this one rank (same threads)."""
    for _ in range(cfg.warmup):
        engine.adapter.reference_forward(inputs)
    times = []
    for _ in range(cfg.repeat):
        start = time.perf_counter()
        engine.adapter.reference_forward(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def summary(report: dict) -> str:
    """Human-readable account of a run report."""
    kb = lambda b: f"{b:,.0f} B"  # noqa: E731
    lines = [
        f"ASTRA run: {report['model']}-{report['size']} ({report['blocks']} blocks, D={report['model_dim']}), "
        f"{report['tokens']} tokens x batch {report['batch']}, {report['ranks']} ranks "
        f"({report['transport']}, {report['threads']} thread(s) each), G={report['groups']}, K={report['codebook_size']} "
        f"({report['codes_per_token']} {report['bits_per_code']}-bit codes per token of its {report['quantize']}, "
        f"{report['encoding']} encode), "
        f"remote attention: {'/'.join(report['remote_formulation'])}",
        f"  latency (median of {report['repeat']}): {report['latency_s']:.4f} s",
    ]
    if "single_device_latency_s" in report:
        lines[-1] += f"   single device: {report['single_device_latency_s']:.4f} s   speedup {report['speedup_vs_single']:.2f}x"
    lines.append("  rank  tokens  sent/block   recv/block   wait")
    for r in range(report["ranks"]):
        lines.append(
            f"  {r:>4}  {report['tokens_per_rank'][r]:>6}  {kb(report['bytes_sent_per_rank_per_block'][r]):>11}  "
            f"{kb(report['bytes_received_per_rank_per_block'][r]):>11}  {report['wait_s_per_rank'][r]:.4f} s"
        )
    lines.append(f"  outputs vs single-process simulation: max |diff| = {report['max_abs_diff_vs_simulation']:.3g}")
    if "time_to_first_token_s" in report:
        lines.append(f"  generation on rank {report['ranks'] - 1}: time to first token {report['time_to_first_token_s']:.4f} s, "
                     f"decode {report['decode_tokens_per_s']:.1f} tokens/s")
    return "\n".join(lines)


def start_rank(cfg: RunConfig):
    """This process as one rank of the job: its threads, its allocator and its transport, pinned to its cores."""
    torch.set_num_threads(cfg.threads)
    keep_freed_memory()
    transport = make_transport(cfg.transport, cfg.timeout, cfg.setup_timeout)
    pin_cores(local_rank(), cfg.threads)  # after the transport: its I/O threads stay free to run anywhere
    return transport


def rank_main(cfg: RunConfig) -> None:
    """Entry point of one rank (spawned, torchrun or mpirun); any error ends it through :func:`end_rank`."""
    transport = None
    try:
        transport = start_rank(cfg)
        report = measure(cfg, transport)
        if report is not None:
            print(summary(report), flush=True)
            if cfg.json:
                with open(cfg.json, "w") as f:
                    json.dump(report, f, indent=2)
        transport.close()
    except (Exception, KeyboardInterrupt) as exc:  # every failure ends the rank the same way
        end_rank(exc, transport, "astra run")


def check_config(cfg: RunConfig) -> None:
    """Reject impossible jobs before any process starts (``cfg`` as :func:`resolve` returns it)."""
    if cfg.model not in models.FAMILIES:
        raise ValueError(f"--model must be one of {', '.join(models.FAMILIES)}, got {cfg.model!r}")
    if cfg.ranks < 1:
        raise ValueError(f"--ranks must be >= 1, got {cfg.ranks}")
    if cfg.tokens < cfg.ranks:
        raise ValueError(f"cannot split {cfg.tokens} tokens over {cfg.ranks} ranks: every rank needs at least one token")
    if cfg.transport == "nccl" and cfg.device != "cuda":
        raise ValueError("--transport nccl needs --device cuda")
    if cfg.repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {cfg.repeat}")
    if cfg.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {cfg.threads}")
    for flag, seconds in (("--timeout", cfg.timeout), ("--setup-timeout", cfg.setup_timeout),
                          ("--job-timeout", cfg.job_timeout)):
        if not seconds > 0:
            raise ValueError(f"{flag} must be positive, got {seconds}")
    if cfg.exchange_parts < 1:
        raise ValueError(f"--exchange-parts must be >= 1, got {cfg.exchange_parts}")
    if cfg.table_budget_mib < 0:
        raise ValueError(f"--table-budget-mib must be >= 0, got {cfg.table_budget_mib}")
    if cfg.generate < 0:
        raise ValueError(f"--generate must be >= 0, got {cfg.generate}")
    if cfg.generate and cfg.model == "vit":
        raise ValueError("generation needs a language model, not vit")
    cfg.sampling  # its construction raises ValueError on bad --temperature, --top-k or --top-p
    if cfg.model == "vit" and round(cfg.tokens**0.5) ** 2 != cfg.tokens:
        raise ValueError(f"ViT needs a square number of patch tokens (an image of side sqrt(T)*16), got {cfg.tokens}")
    shape = models.describe(cfg.model, cfg.size, layers=cfg.layers, checkpoint=cfg.checkpoint)
    width = shape.dim if cfg.quantize == "input" else shape.kv_dim
    if cfg.codebooks:
        Codebooks.load(cfg.codebooks).check(shape.blocks, width, cfg.quantize)
    elif cfg.groups < 1 or width % cfg.groups:
        what = "the model width D" if cfg.quantize == "input" else "the key/value width Hkv*d"
        raise ValueError(f"--groups {cfg.groups} must divide {what}={width}")
    place = rank_env()
    if place is not None and place.world_size != cfg.ranks:
        raise ValueError(f"launched with {place.world_size} ranks but --ranks {cfg.ranks}")
