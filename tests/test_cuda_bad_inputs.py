"""The CUDA backends (the CUDA extension, Triton compiled) check the registered ops' arguments
as the CPU backends do: every bad input of tests/test_op_checks.py, moved to the GPU, raises the
reference's ValueError text, and a bad code raises inside an Inductor-compiled graph too.
Skipped without a CUDA device (benchmarks/gpu/gpu_check.sh runs it on one)."""
import math

import pytest
import torch
from test_op_checks import BAD_OP_INPUTS

import astra_kernels as ak
from astra_kernels import backends, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA_BACKENDS = ak.available_backends("cuda") if torch.cuda.is_available() else []


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def _on_cuda(args: tuple) -> tuple:
    return tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("op,args,match", BAD_OP_INPUTS, ids=[f"{op}-{i}" for i, (op, _, _) in enumerate(BAD_OP_INPUTS)])
def test_cuda_backends_name_a_bad_input_as_the_reference_does(op, args, match):
    want = _message(getattr(reference, op), *args)
    on_gpu = _on_cuda(args)
    checked = []
    for name in CUDA_BACKENDS:
        module = backends.get(name)
        if not hasattr(module, op):
            continue
        assert _message(getattr(module, op), *on_gpu) == want, name
        assert _message(getattr(torch.ops.astra, op), *on_gpu, backend=name) == want, name
        checked.append(name)
    assert checked or op == "attention_after"  # only the C++ CPU backend continues from a prior
    torch.cuda.synchronize()  # the checks leave the device usable


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_public_api_on_cuda_rejects_scale_head_dim_kv_heads_and_codes(backend):
    q, k = torch.randn(1, 2, 3, 4, device="cuda"), torch.randn(1, 1, 3, 4, device="cuda")
    for scale in (math.inf, math.nan, 0.0, -1.0):
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            ak.attention(q, k, k, scale=scale, backend=backend)
    empty_d = torch.randn(1, 2, 3, 0, device="cuda")
    with pytest.raises(ValueError, match="head dim d=0 must be at least 1"):
        ak.attention(empty_d, empty_d[:, :1], empty_d[:, :1], backend=backend)
    no_heads = torch.randn(1, 0, 3, 4, device="cuda")
    with pytest.raises(ValueError, match="key/value heads Hkv=0"):
        ak.attention(q, no_heads, no_heads, backend=backend)
    cb = torch.randn(4, 16, 8, device="cuda")
    with pytest.raises(ValueError, match=r"codes contains 2147483647, outside \[0, 16\)"):
        ak.vq_decode(torch.tensor([[0, 1, 2, 2**32 + 1]], device="cuda"), cb, backend=backend)
    good = torch.tensor([[0, 1, 2, 15]], device="cuda")
    assert torch.equal(ak.vq_decode(good, cb, backend=backend), ak.vq_decode(good.cpu(), cb.cpu()).cuda())


def test_range_check_survives_inductor_on_cuda():
    cb = torch.randn(4, 16, 8, device="cuda")

    def decode(codes):
        return ak.vq_decode(codes, cb).sum()

    torch._dynamo.reset()
    compiled = torch.compile(decode, backend="inductor", fullgraph=True)
    good = torch.tensor([[1, 2, 3, 4]], dtype=torch.int32, device="cuda")
    torch.testing.assert_close(compiled(good), decode(good))
    with pytest.raises(ValueError, match=r"contains 16, outside \[0, 16\)"):
        compiled(torch.tensor([[1, 16, 3, 4]], dtype=torch.int32, device="cuda"))
