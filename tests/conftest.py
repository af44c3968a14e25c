"""Test configuration: Triton's interpreter on GPU-less machines, and the
(backend, device) pairs every op test runs on."""
import os

import torch

# Must happen before any Triton kernel module is imported (the @triton.jit
# decorator reads it): on a machine without a GPU, Triton runs interpreted.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

import astra_kernels as ak  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKEND_DEVICES = [(b, d) for d in DEVICES for b in ak.available_backends(d)]


def pytest_report_header(config):
    return f"astra backends: {', '.join(f'{b}@{d}' for b, d in BACKEND_DEVICES)}"


@pytest.fixture(params=BACKEND_DEVICES, ids=[f"{b}-{d}" for b, d in BACKEND_DEVICES])
def backend_device(request):
    return request.param


def is_interpreted(backend: str, device: str) -> bool:
    """Triton on CPU runs in the interpreter (~1 ms per program): keep those cases small."""
    return backend == "triton" and device == "cpu"
