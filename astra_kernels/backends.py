"""Backend registry: which implementations exist, where they run, and why not.

A backend is a module exposing the same functions over validated, flattened
inputs (see :mod:`astra_kernels.reference` for the contract). Backends load
lazily, on first use, so that importing ``astra_kernels`` never compiles or
initialises anything.

    reference  pure torch, every device (ground truth and fallback)
    cpu        compiled C++ extension ``astra_kernels._C``
    triton     Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1
    cuda       compiled CUDA extension ``astra_kernels._C_cuda``
"""
from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch

NAMES = ("reference", "cpu", "triton", "cuda")

# Fastest first, per device type; the default backend is the first available.
PREFERENCE = {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}


class BackendUnavailable(RuntimeError):
    """Raised when an explicitly requested backend cannot run here."""


def _triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _load(name: str) -> tuple[ModuleType | None, str]:
    """Import a backend module once; returns (module, "") or (None, why not)."""
    module_name = {
        "reference": "astra_kernels.reference",
        "cpu": "astra_kernels.cpu",
        "triton": "astra_kernels.triton",
        "cuda": "astra_kernels.cuda",
    }[name]
    try:
        return importlib.import_module(module_name), ""
    except ImportError as exc:
        return None, f"{module_name} could not be imported ({exc})"


def _why_not(name: str, device_type: str, op: str | None = None) -> str:
    """Empty string when ``name`` can run ``op`` (any op if None) on ``device_type``, else the reason."""
    if name == "reference":
        return "" if _load(name)[0] else _load(name)[1]
    if name == "cpu" and device_type != "cpu":
        return "the C++ CPU backend runs on CPU tensors only"
    if name == "cuda" and device_type != "cuda":
        return "the CUDA backend runs on CUDA tensors only"
    if name == "triton":
        if device_type == "cpu" and not _triton_interpreter():
            return "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (set before import)"
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is available"
        if device_type not in ("cpu", "cuda"):
            return f"Triton does not support device type {device_type!r}"
    if name == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    module, why = _load(name)
    if module is None:
        return why
    if op is not None and not hasattr(module, op):
        return f"it does not implement {op}"
    return ""


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends that can run on ``device`` (default: any device of this machine), fastest first."""
    if device is None:
        types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        types = [torch.device(device).type]
    names: list[str] = []
    for t in types:
        for name in PREFERENCE.get(t, ("reference",)) + tuple(NAMES):
            if name not in names and not _why_not(name, t):
                names.append(name)
    return names


# Constant for a given (backend, device): torch.compile runs it once while
# tracing instead of tracing through the lazy imports.
@torch.compiler.assume_constant_result
def resolve(backend: str | None, device: torch.device | str, op: str) -> str:
    """The backend that runs ``op`` on ``device``: ``backend`` when it can (else BackendUnavailable, with the
    reason), or the fastest available when ``backend`` is None."""
    device = torch.device(device)
    if backend is None:
        for name in PREFERENCE.get(device.type, ("reference",)):
            if not _why_not(name, device.type, op):
                return name
        raise BackendUnavailable(f"no ASTRA backend can run {op} on device {device}")
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string or None, got {type(backend).__name__}")
    if backend not in NAMES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(NAMES)}")
    why = _why_not(backend, device.type, op)
    if why:
        raise BackendUnavailable(f"backend {backend!r} is not available for {device.type} tensors: {why}")
    return backend


def get(name: str) -> ModuleType:
    module, why = _load(name)
    if module is None:
        raise BackendUnavailable(f"backend {name!r} is not available: {why}")
    return module
