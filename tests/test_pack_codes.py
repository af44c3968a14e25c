"""pack_codes / unpack_codes: the wire format, byte for byte, on every backend."""
import pytest
import torch

import astra_kernels as ak


def test_known_bytes(backend_device):
    backend, device = backend_device
    # bits=3, LSB first: 1,0,0 | 0,1,0 | 1,1,0 | 0,0,1 | 1,0,1 (+ zero padding)
    codes = torch.tensor([1, 2, 3, 4, 5], dtype=torch.int32, device=device)
    packed = ak.pack_codes(codes, 3, backend=backend)
    assert packed.dtype == torch.uint8 and packed.cpu().tolist() == [0b11010001, 0b01011000]
    assert ak.unpack_codes(packed, 3, (5,), backend=backend).cpu().tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("bits", range(1, 17))
def test_round_trip_and_exact_size(backend_device, bits):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(bits)
    for count in (1, 7, 8, 9, 63, 1000):
        codes = torch.randint(0, 1 << bits, (count,), generator=gen, dtype=torch.int32)
        codes[0] = (1 << bits) - 1  # all bits set at the start of the stream
        packed = ak.pack_codes(codes.to(device), bits, backend=backend)
        assert packed.shape == ((count * bits + 7) // 8,) == (ak.packed_size(count, bits),)
        assert torch.equal(packed.cpu(), ak.pack_codes(codes, bits, backend="reference"))
        # padding bits of the last byte are zero
        tail_bits = count * bits % 8
        if tail_bits:
            assert packed[-1].item() >> tail_bits == 0
        assert torch.equal(ak.unpack_codes(packed, bits, (count,), backend=backend).cpu(), codes)


def test_multidimensional_codes_round_trip(backend_device):
    backend, device = backend_device
    codes = torch.randint(0, 1024, (3, 17, 16), generator=torch.Generator().manual_seed(1)).to(device)
    packed = ak.pack_codes(codes, ak.code_bits(1024), backend=backend)
    assert packed.numel() == 3 * 17 * 16 * 10 // 8
    out = ak.unpack_codes(packed, 10, codes.shape, backend=backend)
    assert out.dtype == torch.int32 and torch.equal(out.long(), codes.long())


def test_code_bits():
    assert [ak.code_bits(k) for k in (2, 3, 4, 5, 1000, 1024, 1025, 65536)] == [1, 2, 2, 3, 10, 10, 11, 16]


def test_empty():
    packed = ak.pack_codes(torch.empty(0, 4, dtype=torch.int32), 10)
    assert packed.shape == (0,) and ak.unpack_codes(packed, 10, (0, 4)).shape == (0, 4)
