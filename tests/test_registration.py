"""The ops are real torch.library ops: opcheck, torch.compile, backend discovery."""
import os

import pytest
import torch
from conftest import BACKEND_DEVICES

import astra_kernels as ak


def _samples(device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 12, generator=gen).to(device)
    cb = torch.randn(3, 10, 4, generator=gen).to(device)
    codes = torch.randint(0, 10, (9, 3), generator=gen, dtype=torch.int32).to(device)
    return x, cb, codes


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_opcheck(backend, device):
    x, cb, codes = _samples(device)
    ops = torch.ops.astra
    flat = codes.reshape(-1).contiguous()
    cases = [
        (ops.vq_encode.default, (x, cb, backend)),
        (ops.vq_decode.default, (codes, cb.clone().requires_grad_(), backend)),
        (ops.pack_codes.default, (flat, 4, backend)),
        (ops.unpack_codes.default, (ak.pack_codes(flat, 4), 4, flat.numel(), backend)),
    ]
    if hasattr(ak.backends.get(backend), "vq_encode_int8"):
        cases.append((ops.vq_encode_int8.default, (x, cb, backend)))
    if hasattr(ak.backends.get(backend), "attention_after"):
        qkv = [torch.randn(2, 2, 5, 4, device=device) for _ in range(3)]
        prior = (torch.randn(2, 2, 5, 4, device=device).requires_grad_(), torch.randn(2, 2, 5, device=device))
        cases.append((ops.attention_after.default, (*qkv, *prior, True, 0.5, backend)))
    if hasattr(ak.backends.get(backend), "merge_attention"):
        parts = torch.randn(2, 3, 5, 4, device=device), torch.randn(2, 3, 5, device=device)
        cases.append((ops.merge_attention.default, (*parts, parts[0].flip(0).requires_grad_(), parts[1], backend)))
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_torch_compile_traces_the_ops():
    x, cb, _ = _samples("cpu")

    def roundtrip(x, cb):
        codes, sqdist = ak.vq_encode(x, cb)
        return ak.vq_decode(codes, cb), sqdist

    compiled = torch.compile(roundtrip, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(x, cb), roundtrip(x, cb)):
        torch.testing.assert_close(a, b)


def test_available_backends_lists_what_runs_here():
    names = ak.available_backends("cpu")
    assert names[0] == ("cpu" if "cpu" in names else "reference")
    assert "reference" in names
    assert ("triton" in names) == (os.environ.get("TRITON_INTERPRET") == "1")
    if not torch.cuda.is_available():
        assert "cuda" not in ak.available_backends()
