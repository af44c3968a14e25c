"""Per-block VQ codebooks: container, checks, and safetensors files.

What a block quantizes (:data:`QUANTIZE`):

``input``
    its attention input (D features), in G groups of D/G, with a (G, K, D/G)
    codebook; the receiver projects the rebuilt inputs with its own W_K, W_V.
``kv``
    its keys before any rotation (after a per-head key norm, if any) and its
    values, Hkv*d features each: G groups of Hkv*d/G for the key, then G for
    the value, one (2G, K, Hkv*d/G) codebook. A token carries 2G codes; the
    receiver only decodes them (and rotates the keys).

Files hold one tensor per block ("block.<l>") plus metadata (groups, size,
what is quantized); ``save`` next to a model checkpoint makes the pair
loadable together (:data:`FILENAME`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

import astra_kernels as ak

FILENAME = "astra_codebooks.safetensors"
QUANTIZE = ("input", "kv")


def check_quantize(quantize: str) -> str:
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    return quantize


@dataclass
class Codebooks:
    """``tensors[l]`` is block l's codebook: (G, K, D/G) for ``quantize="input"``, (2G, K, Hkv*d/G) for
    ``quantize="kv"`` (the key's G groups, then the value's)."""

    tensors: list[torch.Tensor]
    quantize: str = "input"

    def __post_init__(self):
        check_quantize(self.quantize)
        if not self.tensors:
            raise ValueError("codebooks: need one (G, K, D/G) tensor per block, got none")
        shape = tuple(self.tensors[0].shape)
        for i, t in enumerate(self.tensors):
            if not isinstance(t, torch.Tensor) or t.dim() != 3:
                raise ValueError(f"codebooks: block {i} must be a (G, K, D/G) tensor")
            if tuple(t.shape) != shape:
                raise ValueError(f"codebooks: block {i} has shape {tuple(t.shape)}, block 0 has {shape}")
        if self.quantize == "kv" and shape[0] % 2:
            raise ValueError(f"kv codebooks hold the key's G groups then the value's: need 2G of them, got {shape[0]}")

    @property
    def codes_per_token(self) -> int:
        """Codes each token carries per block: G, or 2G for ``kv`` (G for its key, G for its value)."""
        return self.tensors[0].shape[0]

    @property
    def groups(self) -> int:
        """G: groups per quantized vector (the attention input, or the key and the value each)."""
        return self.codes_per_token // (2 if self.quantize == "kv" else 1)

    @property
    def codebook_size(self) -> int:
        return self.tensors[0].shape[1]

    @property
    def dim(self) -> int:
        """Width of one quantized vector: D (``input``) or Hkv*d (``kv``)."""
        return self.groups * self.tensors[0].shape[2]

    @property
    def bits(self) -> int:
        """Bits per code on the wire."""
        return ak.code_bits(self.codebook_size)

    def payload_bytes(self, tokens: int) -> int:
        """Bytes of the packed codes of ``tokens`` tokens (summed over the batch) for one block."""
        return ak.packed_size(tokens * self.codes_per_token, self.bits)

    def __len__(self) -> int:
        return len(self.tensors)

    def check(self, num_blocks: int, dim: int, quantize: str = "input") -> None:
        """Raise ValueError unless these codebooks quantize ``quantize`` of a model of ``num_blocks`` blocks whose
        quantized vectors are ``dim`` wide (D for ``input``, Hkv*d for ``kv``)."""
        check_quantize(quantize)
        if self.quantize != quantize:
            raise ValueError(f"these codebooks quantize {self.quantize!r} (what each token sends), but "
                             f"quantize={quantize!r} was asked for; calibrate codebooks with quantize={quantize!r}")
        if len(self) != num_blocks:
            raise ValueError(f"codebooks cover {len(self)} blocks but the model has {num_blocks}")
        if self.dim != dim:
            what = "D" if quantize == "input" else "Hkv*d"
            raise ValueError(
                f"codebooks quantize {what}={self.dim} features (G={self.groups} x {self.dim // self.groups}) "
                f"but the model has {what}={dim}"
            )

    def to(self, *args, **kwargs) -> "Codebooks":
        return Codebooks([t.to(*args, **kwargs) for t in self.tensors], self.quantize)

    def save(self, path: str) -> str:
        """Write a safetensors file (``path`` may be a directory: FILENAME inside it); returns the file path."""
        from safetensors.torch import save_file

        if os.path.isdir(path):
            path = os.path.join(path, FILENAME)
        tmp = f"{path}.tmp{os.getpid()}"
        meta = {"groups": str(self.groups), "codebook_size": str(self.codebook_size), "blocks": str(len(self)),
                "quantize": self.quantize}
        # clone: safetensors refuses tensors that share memory (e.g. one codebook reused for every block)
        save_file({f"block.{i}": t.detach().clone().contiguous() for i, t in enumerate(self.tensors)}, tmp, metadata=meta)
        os.replace(tmp, path)  # atomic: concurrent readers never see half a file
        return path

    @classmethod
    def load(cls, path: str) -> "Codebooks":
        from safetensors import safe_open

        if os.path.isdir(path):
            path = os.path.join(path, FILENAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no codebook file at {path!r}")
        with safe_open(path, framework="pt") as f:
            names = sorted(f.keys(), key=lambda n: int(n.split(".")[1]))
            if names != [f"block.{i}" for i in range(len(names))]:
                raise ValueError(f"{path!r} is not an ASTRA codebook file (tensors {names[:4]}...)")
            meta = f.metadata() or {}
            tensors = [f.get_tensor(n) for n in names]
        for i, t in enumerate(tensors):
            # a NaN/Inf codeword would decode and project to NaN/Inf on every receiver
            bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
            if bad:
                raise ValueError(f"{path!r}: the codebook of block {i} (layer {i}) has {bad} non-finite values "
                                 "(NaN or Inf); recalibrate or replace the file")
        return cls(tensors, meta.get("quantize", "input"))
