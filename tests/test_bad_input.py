"""Bad input gets a TypeError/ValueError that names the problem, before any kernel runs."""
import pytest
import torch

import astra_kernels as ak

CB = torch.randn(4, 16, 8)
X = torch.randn(5, 32)


@pytest.mark.parametrize(
    "x,cb,exc,match",
    [
        (X, torch.randn(16, 32), ValueError, r"codebooks must have shape \(G, K, D/G\)"),
        (torch.tensor(1.0), CB, ValueError, "0-d"),
        (torch.randn(5, 30), CB, ValueError, "D=30 .*not divisible by G"),
        (torch.randn(5, 36), CB, ValueError, r"D/G=9 differs from codebooks.shape\[2\]=8"),
        (X.half(), CB, TypeError, "same dtype"),
        (X.double(), CB.double(), TypeError, "x must be float32, float16 or bfloat16|codebooks must be"),
        (X.int(), CB, TypeError, "must be float32"),
        (X, torch.randn(4, 0, 8), ValueError, "empty"),
        (X, torch.randn(4, 1, 8), ValueError, "K=1 is outside"),
        (torch.randn(5, 65 * 2), torch.randn(65, 4, 2), ValueError, "G=65 is outside"),
        (X.tolist(), CB, TypeError, "x must be a torch.Tensor"),
        (X, torch.randn(4, 16, 8, device="meta"), ValueError, "same device"),
    ],
)
@pytest.mark.parametrize("encode", [ak.vq_encode, ak.vq_encode_int8], ids=["exact", "int8"])
def test_vq_encode_rejects(x, cb, exc, match, encode):
    with pytest.raises(exc, match=match):
        encode(x, cb)


def test_decode_rejects_out_of_range_and_bad_shapes():
    with pytest.raises(ValueError, match=r"contains 16, outside \[0, 16\)"):
        ak.vq_decode(torch.tensor([[0, 1, 2, 16]]), CB)
    with pytest.raises(ValueError, match=r"contains -1"):
        ak.vq_decode(torch.tensor([[0, -1, 2, 3]]), CB)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., G=4\)"):
        ak.vq_decode(torch.tensor([[0, 1, 2]]), CB)
    with pytest.raises(TypeError, match="integer tensor"):
        ak.vq_decode(torch.zeros(2, 4), CB)


def test_pack_rejects_codes_that_do_not_fit():
    with pytest.raises(ValueError, match=r"contains 1024, outside \[0, 1024\)"):
        ak.pack_codes(torch.tensor([3, 1024]), 10)
    with pytest.raises(ValueError, match="contains -5"):
        ak.pack_codes(torch.tensor([-5, 1]), 10)
    with pytest.raises(ValueError, match="bits=17"):
        ak.pack_codes(torch.tensor([1]), 17)
    with pytest.raises(ValueError, match="bits=0"):
        ak.pack_codes(torch.tensor([1]), 0)
    with pytest.raises(TypeError, match="bits must be an int"):
        ak.pack_codes(torch.tensor([1]), 2.0)


def test_unpack_rejects_wrong_sizes_and_types():
    packed = ak.pack_codes(torch.arange(10), 4)
    with pytest.raises(ValueError, match="has 5 bytes but 11 codes of 4 bits need exactly 6"):
        ak.unpack_codes(packed, 4, (11,))
    with pytest.raises(TypeError, match="uint8"):
        ak.unpack_codes(packed.int(), 4, (10,))
    with pytest.raises(ValueError, match="1-D"):
        ak.unpack_codes(packed.reshape(1, 5), 4, (10,))
    with pytest.raises(ValueError, match="negative"):
        ak.unpack_codes(packed, 4, (-10,))


def test_backend_selection_errors():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        ak.vq_encode(X, CB, backend="fast")
    if not torch.cuda.is_available():
        with pytest.raises(ak.BackendUnavailable, match="'cuda' is not available for cpu tensors"):
            ak.vq_encode(X, CB, backend="cuda")
    with pytest.raises(TypeError, match="backend must be a string"):
        ak.vq_encode(X, CB, backend=1)


def test_inputs_are_left_untouched(backend_device):
    backend, device = backend_device
    x, cb = X.to(device), CB.to(device)
    x0, cb0 = x.clone(), cb.clone()
    codes, _ = ak.vq_encode(x, cb, backend=backend)
    ak.vq_decode(codes, cb, backend=backend)
    c0 = codes.clone()
    ak.pack_codes(codes, 4, backend=backend)
    assert torch.equal(x, x0) and torch.equal(cb, cb0) and torch.equal(codes, c0)
