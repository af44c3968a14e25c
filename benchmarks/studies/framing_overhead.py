"""What the checked frames cost: the time a rank spends framing and checking its messages, against its forward.

    python benchmarks/studies/framing_overhead.py --json benchmarks/results/framing_overhead.json

Two ranks of ViT-Base (1024 tokens, random weights, the cached k-means codebooks that ``astra bench``
calibrates) run as threads over the loopback transport, which frames every message as gloo and MPI
do (:class:`astra.transport.FramedTransport`). The frame functions (the checksum, the header, the check
of a received frame: ``FRAME_FUNCTIONS`` of :mod:`astra.transport.framing`) are timed on each rank's
thread (its CPU time) inside the same runs whose forwards are timed (wall time), so the ratio needs no
second measurement.
The two ranks share the machine's cores as two devices would not; both terms of the ratio see that alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

from astra import AstraEngine, models  # noqa: E402
from astra.calibrate import cached_calibration  # noqa: E402
from astra.transport import LoopbackHub, framing  # noqa: E402

FRAME_FUNCTIONS = ("payload_checksum", "exchange_id", "encode", "open_frame")  # what FramedTransport calls
_spent: dict[int, float] = defaultdict(float)  # thread id -> seconds in the frame functions


def _timed(fn):
    # this thread's CPU time: the other rank's thread holding the GIL meanwhile is not the frame's cost
    def wrapper(*args, **kwargs):
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _spent[threading.get_ident()] += time.thread_time() - start
    return wrapper


def measure(engine: AstraEngine, inputs: torch.Tensor, repeat: int) -> list[dict]:
    """Per run and rank: (forward seconds, seconds in the frame functions), two ranks over loopback."""
    transports = LoopbackHub(2).transports(600.0)
    runs: list[list[tuple[float, float]]] = []

    def rank(r: int, out: list) -> None:
        torch.set_num_threads(1)
        me = threading.get_ident()
        for _ in range(repeat + 1):  # the first run warms up
            transports[r].barrier()
            _spent[me] = 0.0
            start = time.perf_counter()
            engine.run_rank(inputs, transports[r])
            out.append((time.perf_counter() - start, _spent[me]))

    per_rank = [[], []]
    threads = [threading.Thread(target=rank, args=(r, per_rank[r])) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(1, repeat + 1):
        runs.append([per_rank[r][i] for r in range(2)])
    return [{"forward_s": [f for f, _ in run], "framing_s": [s for _, s in run]} for run in runs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", default="1,32")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    for name in FRAME_FUNCTIONS:
        setattr(framing, name, _timed(getattr(framing, name)))
    model = models.build("vit", "base", tokens=args.tokens, seed=0)
    inputs = models.example_inputs(model, args.tokens, 1, seed=0)
    rows = []
    for g in map(int, args.groups.split(",")):
        books = cached_calibration(model, tokens=args.tokens, batch=1, codebook_size=1024, groups=g, iters=10, seed=0,
                                   progress=True)
        engine = AstraEngine(model, books)
        runs = measure(engine, inputs, args.repeat)
        layout = engine.layout(inputs, 2)
        ratios = [s / f for run in runs for f, s in zip(run["forward_s"], run["framing_s"])]
        rows.append({
            "model": "vit-base", "tokens": args.tokens, "ranks": 2, "groups": g,
            "exchange_parts": engine.exchange_parts,
            "messages_per_rank": 2 * len(engine.adapter.blocks) * engine.exchange_parts,
            "payload_bytes_per_block": engine.payload_bytes(1, layout.size(0)),
            "forward_s": statistics.median(f for run in runs for f in run["forward_s"]),
            "framing_s": statistics.median(s for run in runs for s in run["framing_s"]),
            "framing_share": statistics.median(ratios), "framing_share_max": max(ratios), "runs": runs,
        })
        r = rows[-1]
        print(f"G={g}: {r['messages_per_rank']} frames per rank per forward, framing {r['framing_s'] * 1e3:.3f} ms "
              f"of a {r['forward_s']:.3f} s forward: {r['framing_share']:.4%} (max {r['framing_share_max']:.4%})",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
