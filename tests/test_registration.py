"""The ops are real torch.library ops: opcheck, dispatch by device, torch.compile, backend discovery."""
import os

import pytest
import torch
from conftest import BACKEND_DEVICES, DEVICES

import astra_kernels as ak
from astra_kernels import backends

OPS = ("vq_encode", "vq_encode_int8", "vq_decode", "pack_codes", "unpack_codes", "mixed_precision_attention",
       "merge_attention", "attention_after")


def _samples(device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 12, generator=gen).to(device)
    cb = torch.randn(3, 10, 4, generator=gen).to(device)
    codes = torch.randint(0, 10, (9, 3), generator=gen, dtype=torch.int32).to(device)
    return x, cb, codes


def _cases(device) -> dict:
    """Arguments of every op, without the backend: small, random, with gradients wanted where they exist."""
    gen = torch.Generator().manual_seed(1)
    x, cb, codes = _samples(device)
    flat = codes.reshape(-1).contiguous()

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    q, k, v = rand(2, 4, 3, 8), rand(2, 2, 5, 8), rand(2, 2, 5, 8)
    remote = torch.randint(0, 6, (2, 7, 2), generator=gen, dtype=torch.int32).to(device)
    tables = rand(2, 6, 16).requires_grad_(), rand(2, 6, 16)
    parts = rand(2, 3, 5, 4), rand(2, 3, 5)
    prior = rand(2, 2, 5, 4).requires_grad_(), rand(2, 2, 5)
    return {
        "vq_encode": (x, cb),
        "vq_encode_int8": (x, cb),
        "vq_decode": (codes, cb.clone().requires_grad_()),
        "pack_codes": (flat, 4),
        "unpack_codes": (ak.pack_codes(flat, 4), 4, flat.numel()),
        "mixed_precision_attention": (q.requires_grad_(), k, v, remote, *tables, rand(16), None, True, 0.25, "tokens", None),
        "merge_attention": (*parts, parts[0].flip(0).requires_grad_(), parts[1]),
        "attention_after": (rand(2, 2, 5, 4), rand(2, 2, 6, 4), rand(2, 2, 6, 4), *prior, True, 0.5),
    }


def _outputs(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_opcheck_with_the_backend_named(backend, device):
    implemented = backends.get(backend)
    for name, args in _cases(device).items():
        if hasattr(implemented, name):
            torch.library.opcheck(getattr(torch.ops.astra, name).default, (*args, backend))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_without_a_backend(device):
    for name, args in _cases(device).items():
        torch.library.opcheck(getattr(torch.ops.astra, name).default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_without_a_backend_an_op_runs_the_fastest_backend_for_the_device(device):
    for name, args in _cases(device).items():
        op = getattr(torch.ops.astra, name)
        fastest = backends.resolve(None, torch.device(device), name)
        for got, want in zip(_outputs(op(*args)), _outputs(op(*args, backend=fastest))):
            assert torch.equal(got, want), name


def test_torch_ops_vq_encode_without_a_backend_equals_the_python_api():
    gen = torch.Generator().manual_seed(2)
    x, codebooks = torch.randn(37, 64, generator=gen), torch.randn(4, 100, 16, generator=gen)
    codes, sqdist = torch.ops.astra.vq_encode(x, codebooks)
    want_codes, want_sqdist = ak.vq_encode(x, codebooks)
    assert torch.equal(codes, want_codes) and torch.equal(sqdist, want_sqdist)
    assert not torch.equal(codes, torch.zeros_like(codes))


def test_a_named_backend_that_cannot_run_raises_with_the_reason():
    x, cb, _ = _samples("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ak.BackendUnavailable, match="'cuda' is not available for cpu tensors: the CUDA backend"):
            torch.ops.astra.vq_encode(x, cb, backend="cuda")
    if "triton" in ak.available_backends("cpu"):
        with pytest.raises(ak.BackendUnavailable, match="does not implement vq_encode_int8"):
            torch.ops.astra.vq_encode_int8(x, cb, backend="triton")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        torch.ops.astra.vq_encode(x, cb, backend="fast")


def test_devices_without_compiled_backends_run_the_reference():
    """The ops' default kernel (CompositeExplicitAutograd: every device but CPU and CUDA) is the reference."""
    default = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    for name in OPS:
        for key in ("CPU", "CUDA", "CompositeExplicitAutograd"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"astra::{name}", key), (name, key)
    for name, args in _cases("cpu").items():
        op = getattr(torch.ops.astra, name).default
        for got, want in zip(_outputs(op.redispatch(default, *args)), _outputs(op(*args, backend="reference"))):
            assert torch.equal(got, want), name
    x, cb, _ = _samples("cpu")
    with pytest.raises(ak.BackendUnavailable, match="'cuda' is not available for cpu tensors"):
        torch.ops.astra.vq_encode.default.redispatch(default, x, cb, "cuda")


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
