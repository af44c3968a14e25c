"""Per-block VQ codebooks: container, checks, and safetensors files.

Block l quantizes its attention input (D features) in G groups of D/G with
its own (G, K, D/G) codebook. Files hold one tensor per block
("block.<l>") plus metadata; ``save`` next to a model checkpoint makes the
pair loadable together (:data:`FILENAME`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

import astra_kernels as ak

FILENAME = "astra_codebooks.safetensors"


@dataclass
class Codebooks:
    """``tensors[l]`` is block l's (G, K, D/G) codebook."""

    tensors: list[torch.Tensor]

    def __post_init__(self):
        if not self.tensors:
            raise ValueError("codebooks: need one (G, K, D/G) tensor per block, got none")
        shape = tuple(self.tensors[0].shape)
        for i, t in enumerate(self.tensors):
            if not isinstance(t, torch.Tensor) or t.dim() != 3:
                raise ValueError(f"codebooks: block {i} must be a (G, K, D/G) tensor")
            if tuple(t.shape) != shape:
                raise ValueError(f"codebooks: block {i} has shape {tuple(t.shape)}, block 0 has {shape}")

    @property
    def groups(self) -> int:
        return self.tensors[0].shape[0]

    @property
    def codebook_size(self) -> int:
        return self.tensors[0].shape[1]

    @property
    def dim(self) -> int:
        return self.tensors[0].shape[0] * self.tensors[0].shape[2]

    @property
    def bits(self) -> int:
        """Bits per code on the wire."""
        return ak.code_bits(self.codebook_size)

    def __len__(self) -> int:
        return len(self.tensors)

    def check(self, num_blocks: int, dim: int) -> None:
        """Raise ValueError unless these codebooks fit a model of ``num_blocks`` blocks of width ``dim``."""
        if len(self) != num_blocks:
            raise ValueError(f"codebooks cover {len(self)} blocks but the model has {num_blocks}")
        if self.dim != dim:
            raise ValueError(
                f"codebooks quantize D={self.dim} features (G={self.groups} x {self.dim // self.groups}) "
                f"but the model has D={dim}"
            )

    def to(self, *args, **kwargs) -> "Codebooks":
        return Codebooks([t.to(*args, **kwargs) for t in self.tensors])

    def save(self, path: str) -> str:
        """Write a safetensors file (``path`` may be a directory: FILENAME inside it); returns the file path."""
        from safetensors.torch import save_file

        if os.path.isdir(path):
            path = os.path.join(path, FILENAME)
        tmp = f"{path}.tmp{os.getpid()}"
        meta = {"groups": str(self.groups), "codebook_size": str(self.codebook_size), "blocks": str(len(self))}
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
            return cls([f.get_tensor(n) for n in names])
