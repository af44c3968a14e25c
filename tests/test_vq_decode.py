"""vq_decode: an exact codebook lookup on every backend and dtype."""
import pytest
import torch

import astra_kernels as ak


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("lead,g,k,dg", [((9,), 1, 1024, 64), ((3, 5), 16, 37, 3), ((1,), 32, 2, 1), ((4, 4), 3, 300, 33)])
def test_decode_is_an_exact_lookup(backend_device, dtype, lead, g, k, dg):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(k * g)
    cb = torch.randn(g, k, dg, generator=gen).to(dtype).to(device)
    codes = torch.randint(0, k, (*lead, g), generator=gen, dtype=torch.int32)
    out = ak.vq_decode(codes.to(device), cb, backend=backend)
    expected = torch.stack([cb[i, codes[..., i].long().to(device)] for i in range(g)], dim=-2)
    assert out.dtype == dtype and out.shape == (*lead, g * dg)
    assert torch.equal(out, expected.reshape(*lead, g * dg))


def test_decode_of_encode_returns_the_chosen_codewords(backend_device):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(11)
    cb = torch.randn(4, 50, 6, generator=gen).to(device)
    x = torch.randn(30, 24, generator=gen).to(device)
    codes, sqdist = ak.vq_encode(x, cb, backend=backend)
    x_hat = ak.vq_decode(codes, cb, backend=backend)
    torch.testing.assert_close(((x - x_hat).reshape(30, 4, 6) ** 2).sum(-1), sqdist, rtol=1e-5, atol=1e-5)


def test_decode_accepts_any_integer_codes_and_strided_codebooks(backend_device):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(12)
    cb = torch.randn(50, 2, 8, generator=gen).transpose(0, 1).to(device)  # (2, 50, 8), non-contiguous
    codes = torch.randint(0, 50, (7, 2), generator=gen)
    ref = ak.vq_decode(codes.to(device), cb.contiguous(), backend="reference")
    for dtype in (torch.int64, torch.int16, torch.uint8):
        torch.testing.assert_close(ak.vq_decode(codes.to(dtype).to(device), cb, backend=backend), ref, rtol=0, atol=0)
    torch.testing.assert_close(ak.vq_decode(codes.t().to(device).t(), cb, backend=backend), ref, rtol=0, atol=0)


def test_decode_gradient_accumulates_into_used_codewords():
    cb = torch.zeros(2, 5, 3, requires_grad=True)
    codes = torch.tensor([[1, 4], [1, 0], [3, 4]])
    grad = torch.arange(18.0).reshape(3, 6)
    ak.vq_decode(codes, cb).backward(grad)
    expected = torch.zeros(2, 5, 3)
    for row in range(3):
        for g in range(2):
            expected[g, codes[row, g]] += grad[row, g * 3 : (g + 1) * 3]
    torch.testing.assert_close(cb.grad, expected)
