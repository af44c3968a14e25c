"""Property tests of pack_codes / unpack_codes on every CPU backend against the reference:
random lengths (empty and odd included), every width 1..16, non-contiguous codes, and random
bytes fed to unpack_codes."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import astra_kernels as ak
from astra_kernels import reference

BACKENDS = ak.available_backends("cpu")
SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def codes_and_bits(draw):
    bits = draw(st.integers(1, 16))
    count = draw(st.one_of(st.integers(0, 17), st.integers(0, 3000)))
    seed = draw(st.integers(0, 2**31 - 1))
    codes = torch.randint(0, 1 << bits, (count,), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)
    return codes, bits


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(case=codes_and_bits())
def test_pack_matches_reference_and_unpacks_back(backend, case):
    codes, bits = case
    packed = ak.pack_codes(codes, bits, backend=backend)
    assert packed.dtype == torch.uint8 and packed.numel() == ak.packed_size(codes.numel(), bits)
    if codes.numel():
        assert torch.equal(packed, reference.pack_codes(codes, bits))
    assert torch.equal(ak.unpack_codes(packed, bits, codes.shape, backend=backend), codes)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(case=codes_and_bits(), step=st.integers(2, 3), dtype=st.sampled_from([torch.int64, torch.int16, torch.int32]))
def test_pack_reads_strided_and_wider_codes(backend, case, step, dtype):
    """A strided view of codes of any integer dtype packs as its contiguous int32 copy."""
    codes, bits = case
    if dtype == torch.int16 and bits == 16:
        codes = codes // 2  # int16 holds 15 bits of non-negative codes
    spread = torch.zeros(codes.numel() * step, dtype=dtype)
    spread[::step] = codes.to(dtype)
    view = spread[::step]
    assert torch.equal(ak.pack_codes(view, bits, backend=backend), ak.pack_codes(codes, bits, backend="reference"))


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(bits=st.integers(1, 16), count=st.integers(0, 600), data=st.data())
def test_unpack_of_random_bytes(backend, bits, count, data):
    """Any bytes of the right length unpack to codes < 2**bits, as the reference unpacks them, and repack to the
    same bytes up to the unused high bits of the last byte."""
    nbytes = ak.packed_size(count, bits)
    raw = torch.tensor(list(data.draw(st.binary(min_size=nbytes, max_size=nbytes))), dtype=torch.uint8)
    codes = ak.unpack_codes(raw, bits, (count,), backend=backend)
    assert codes.dtype == torch.int32 and codes.shape == (count,)
    if count == 0:
        return
    assert torch.equal(codes, reference.unpack_codes(raw, bits, count))
    assert int(codes.min()) >= 0 and int(codes.max()) < (1 << bits)
    used = count * bits - 8 * (nbytes - 1)  # bits of the last byte that hold codes
    expected = raw.clone()
    expected[-1] &= (1 << used) - 1
    assert torch.equal(ak.pack_codes(codes, bits, backend=backend), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(case=codes_and_bits(), bad=st.one_of(st.integers(-(2**40), -1), st.integers(0, 2**40)), data=st.data())
def test_pack_refuses_any_code_that_does_not_fit(backend, case, bad, data):
    codes, bits = case
    bad = bad if bad < 0 else bad + (1 << bits)
    codes = torch.cat([codes.long(), torch.tensor([bad])])
    where = data.draw(st.integers(0, codes.numel() - 1))
    codes[[where, -1]] = codes[[-1, where]]
    with pytest.raises(ValueError, match=rf"codes contains -?\d+, outside \[0, {1 << bits}\)"):
        ak.pack_codes(codes, bits, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(bits=st.integers(1, 16), count=st.integers(0, 40), delta=st.integers(-3, 3).filter(bool))
def test_unpack_refuses_a_wrong_length(backend, bits, count, delta):
    nbytes = ak.packed_size(count, bits) + delta
    if nbytes < 0:
        return
    with pytest.raises(ValueError, match=f"packed has {nbytes} bytes but {count} codes"):
        ak.unpack_codes(torch.zeros(nbytes, dtype=torch.uint8), bits, (count,), backend=backend)
