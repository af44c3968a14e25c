"""How much ASTRA's approximate fast paths move a model's outputs, next to the error of the
vector quantization itself.

    python benchmarks/studies/approximation_error.py --json benchmarks/results/approximation_error.json \
        --fmnist runs/accuracy/fmnist/astra-G16

For each model (random weights, the k-means codebooks that ``astra run`` calibrates and caches)
it runs the single-process simulation of N ranks with the exact choices (nearest codewords,
remote keys/values dequantized and projected in fp32) and then with one approximation at a
time: int8-estimated codes (``--encode int8``), fp16 tables (``gather``), 8-bit tables
(``gather_int8``). Each row gives the relative L2 distance of the outputs (class logits, or
all LM logits) to the exact run and to the original model: an approximation can move the
outputs (a changed code is another, about as near, codeword) without making them worse.
With ``--fmnist DIR`` (a checkpoint of ``python -m astra train fmnist``) it also classifies
the Fashion-MNIST test set with the exact choices and with each approximation (``--models ""``:
only that); with ``--kjv DIR`` (of ``python -m astra train kjv``) it computes the KJV test
perplexity the same ways.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

from astra import AstraEngine, adapt, models  # noqa: E402
from astra.calibrate import cached_calibration  # noqa: E402

EXACT = "exact (nearest codes, fp32 projection)"
VARIANTS = [  # (label, engine options): one approximation at a time
    ("int8 codes (--encode int8)", dict(encode="int8", formulation="dequantize")),
    ("fp16 tables (gather)", dict(encode="exact", formulation="gather")),
    ("8-bit tables (gather_int8)", dict(encode="exact", formulation="gather_int8")),
    ("int8 codes + 8-bit tables (as benchmarked)", dict(encode="int8", formulation="gather_int8")),
]


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@torch.no_grad()
def measure(family: str, size: str, tokens: int, groups: int, ranks: int, seed: int) -> list[dict]:
    model = models.build(family, size, tokens=tokens, seed=seed, positions=tokens)
    inputs = models.example_inputs(model, tokens, 1, seed=seed)
    books = cached_calibration(model, tokens=tokens, batch=1, codebook_size=1024, groups=groups, iters=10, seed=seed,
                               progress=True)
    original = adapt(model).reference_forward(inputs)
    exact = AstraEngine(model, books, encode="exact", formulation="dequantize").forward(inputs, ranks)
    row = dict(model=f"{family}-{size}", tokens=tokens, groups=groups, ranks=ranks)
    rows = [dict(row, variant=EXACT, vs_exact=0.0,
                 vs_original=relative_l2(exact, original))]
    for label, options in VARIANTS:
        got = AstraEngine(model, books, **options).forward(inputs, ranks)
        rows.append(dict(row, variant=label, vs_exact=relative_l2(got, exact), vs_original=relative_l2(got, original)))
        print(f"{row['model']} G={groups}: {label}: {rows[-1]['vs_exact']:.4%} from exact, "
              f"{rows[-1]['vs_original']:.4%} from the original", flush=True)
    return rows


@torch.no_grad()
def fmnist_accuracy(path: str, ranks: int) -> list[dict]:
    """Test accuracy of a fine-tuned ASTRA ViT with the exact choices and with each approximation."""
    import transformers

    from astra.codebooks import Codebooks
    from astra_lab.train import data

    model = transformers.ViTForImageClassification.from_pretrained(path).eval()
    books = Codebooks.load(path)
    x, y = data.fashion_mnist("test")
    preds = {}
    for label, options in [(EXACT, dict(encode="exact", formulation="dequantize")), *VARIANTS]:
        engine = AstraEngine(model, books, **options)
        preds[label] = torch.cat([engine.forward(x[i: i + 500], ranks).argmax(-1) for i in range(0, len(x), 500)])
        print(f"fmnist {label}: accuracy {(preds[label] == y).float().mean().item():.2%}", flush=True)
    row = dict(model="fmnist-vit (fine-tuned)", groups=books.groups, ranks=ranks)
    return [dict(row, variant=label, accuracy=(p == y).float().mean().item(),
                 agreement_with_exact=(p == preds[EXACT]).float().mean().item()) for label, p in preds.items()]


@torch.no_grad()
def kjv_perplexity(path: str, ranks: int) -> list[dict]:
    """KJV test perplexity of a fine-tuned ASTRA byte-level LM with the exact choices and with each approximation."""
    import transformers

    from astra.codebooks import Codebooks
    from astra_lab.train import data, kjv

    model = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    books = Codebooks.load(path)
    windows = kjv.test_windows(data.kjv_bytes()[1], model.config.n_positions, kjv.KjvConfig.test_windows)
    row = dict(model="kjv-gpt2 (fine-tuned)", groups=books.groups, ranks=ranks)
    rows = []
    for label, options in [(EXACT, dict(encode="exact", formulation="dequantize")), *VARIANTS]:
        engine = AstraEngine(model, books, **options)
        rows.append(dict(row, variant=label, perplexity=kjv.perplexity_of(lambda x, e=engine: e.forward(x, ranks),
                                                                           windows)))
        print(f"kjv {label}: perplexity {rows[-1]['perplexity']:.4f}", flush=True)
    return rows


def _table(rows: list[dict], columns: dict) -> None:
    """Print rows as a Markdown table: model, variant, then ``columns`` (header -> cell of a row)."""
    if not rows:
        return
    print("\n| model | variant | " + " | ".join(columns) + " |\n|---|---|" + "---:|" * len(columns))
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | " + " | ".join(cell(r) for cell in columns.values()) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vit-base,gpt2-small", help="family-size list")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--groups", type=int, default=32)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fmnist", default=None, metavar="DIR", help="also: Fashion-MNIST accuracy of this checkpoint")
    p.add_argument("--kjv", default=None, metavar="DIR", help="also: KJV test perplexity of this checkpoint")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = []
    for name in filter(None, args.models.split(",")):
        family, size = name.split("-")
        rows += measure(family, size, args.tokens, args.groups, args.ranks, args.seed)
    _table(rows, {"relative L2 to exact": lambda r: f"{r['vs_exact']:.3%}",
                  "relative L2 to original": lambda r: f"{r['vs_original']:.3%}"})
    if args.fmnist:
        accuracy = fmnist_accuracy(args.fmnist, args.ranks)
        _table(accuracy, {"accuracy": lambda r: f"{r['accuracy']:.2%}",
                          "agreement with exact": lambda r: f"{r['agreement_with_exact']:.2%}"})
        rows += accuracy
    if args.kjv:
        ppl = kjv_perplexity(args.kjv, args.ranks)
        _table(ppl, {"perplexity": lambda r: f"{r['perplexity']:.4f}"})
        rows += ppl
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
