"""VqEncoder (codebooks prepared once) gives exactly the ops' results, keeps its own copy of the
codebooks, and rejects bad input like the ops."""
import pytest
import torch

import astra_kernels as ak

BACKENDS = [b for b in ak.available_backends("cpu") if b in ("cpu", "reference")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("int8", [False, True], ids=["exact", "int8"])
@pytest.mark.parametrize("shape", [((3, 5), 4, 37, 6), ((70,), 32, 1024, 24), ((9,), 1, 200, 768), ((4,), 2, 50, 1)],
                         ids=str)
def test_equals_the_op_on_every_call(backend, int8, shape):
    lead, g, k, dg = shape
    gen = torch.Generator().manual_seed(k)
    cb = torch.randn(g, k, dg, generator=gen)
    encoder = ak.VqEncoder(cb, int8=int8, backend=backend)
    op = ak.vq_encode_int8 if int8 else ak.vq_encode
    for _ in range(2):  # the prepared state is reused, never consumed
        x = torch.randn(*lead, g * dg, generator=gen)
        codes, sqdist = encoder(x)
        want, want_sq = op(x, cb, backend=backend)
        assert torch.equal(codes, want) and torch.equal(sqdist, want_sq)
    wide = torch.randn(lead[0], g * dg + 3, generator=gen)[:, 2:-1]  # strided rows
    assert torch.equal(encoder(wide)[0], op(wide, cb, backend=backend)[0])
    assert encoder(torch.empty(0, g * dg))[0].shape == (0, g)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ CPU extension is not built")
def test_keeps_its_own_copy_of_the_codebooks():
    gen = torch.Generator().manual_seed(1)
    cb = torch.randn(2, 30, 4, generator=gen)
    x = torch.randn(20, 8, generator=gen)
    encoder = ak.VqEncoder(cb, backend="cpu")
    before = encoder(x)
    cb.mul_(-1.0)  # the caller changes its tensor: the prepared encoder does not follow
    assert torch.equal(encoder(x)[0], before[0])
    assert not torch.equal(ak.VqEncoder(cb, backend="cpu")(x)[0], before[0])


def test_half_precision_codebooks_and_bad_input():
    gen = torch.Generator().manual_seed(2)
    cb = torch.randn(4, 16, 8, generator=gen).half()
    x = torch.randn(5, 32, generator=gen).half()
    assert torch.equal(ak.VqEncoder(cb)(x)[0], ak.vq_encode(x, cb)[0])
    with pytest.raises(TypeError, match="same dtype"):
        ak.VqEncoder(cb)(x.float())
    with pytest.raises(ValueError, match="D=30 .*not divisible by G"):
        ak.VqEncoder(cb)(torch.randn(5, 30).half())
    with pytest.raises(ValueError, match="codebooks must have shape"):
        ak.VqEncoder(torch.randn(16, 32))
    with pytest.raises(ak.BackendUnavailable):
        ak.VqEncoder(cb, int8=True, backend="triton" if "triton" not in ak.available_backends("cpu") else "cuda")
