"""Content digests (SHA-256, hex) of what the ranks of a job must share: weights, model configuration, codebooks,
inputs. They key the calibration cache and make the cross-rank handshake (:mod:`astra.handshake`).

The weights digest hashes the tensors a process holds in memory, not the files they came from: it is what
the ranks compute with that must agree, and a key such as a checkpoint's (path, size, mtime), or the seed of
a random initialization, can vouch for weights the process does not hold (a file replaced in place, an
initialization that differs between library versions). Hashing costs about one read of the weights; the
result is cached per model object and recomputed when a tensor is replaced or modified in place (torch bumps
a tensor's version counter on every in-place write).
"""
from __future__ import annotations

import hashlib
import json
import weakref
from typing import Iterable

import torch

from .codebooks import Codebooks

_WEIGHTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _update(h, name: str, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
    h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def tensors_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Digest of named tensors: names, dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for name, t in named:
        _update(h, name, t)
    return h.hexdigest()


def _named_state(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    # tied tensors (GPT-2's embedding and LM head) once
    return list(model.named_parameters(remove_duplicate=True)) + list(model.named_buffers(remove_duplicate=True))


def weights_digest(model: torch.nn.Module) -> str:
    """Digest of a model's parameters and buffers as held in memory (cached; see the module docstring)."""
    state = _named_state(model)
    key = tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape), t.device) for name, t in state)
    cached = _WEIGHTS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = tensors_digest(state)
    _WEIGHTS[model] = (key, digest)
    return digest


def config_digest(model: torch.nn.Module) -> str:
    """Digest of a model's architecture: its class, its Hugging Face config (without names of local paths and
    library versions) and the names, dtypes and shapes of its tensors."""
    desc: dict = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        desc["config"] = {k: v for k, v in config.to_dict().items()
                          if not k.startswith("_") and k not in ("transformers_version", "name_or_path")}
    desc["tensors"] = [[name, str(t.dtype), list(t.shape)] for name, t in _named_state(model)]
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()


def codebooks_digest(codebooks: Codebooks) -> str:
    """Digest of per-block codebooks (values, dtype and shape)."""
    return tensors_digest((f"block.{i}", t) for i, t in enumerate(codebooks.tensors))
