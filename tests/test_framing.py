"""The frame format: every way a received message can be wrong is rejected, naming what is wrong; random bytes
never pass for a frame."""
import struct
import zlib

import pytest
import torch

from astra.transport import framing

TAG = "block3"


def _payload(n, seed=0):
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _frame(payload, sequence=4, source=1, tag=TAG):
    return framing.encode(payload, framing.payload_checksum(payload), sequence=sequence,
                          exchange=framing.exchange_id(tag), source=source)


def _expected(n, sequence=4, source=1, tag=TAG):
    return framing.Expected(source, sequence, framing.exchange_id(tag), n)


def _received(message, expected, room=True):
    """``message`` as a library without sizes (gloo) leaves it in a receive buffer."""
    buf = framing.receive_buffer(expected.frame_bytes, room=room)
    buf[: message.numel()] = message
    return buf


@pytest.mark.parametrize("n", [0, 1, 7, 20_000])
def test_a_frame_round_trips_with_and_without_a_reported_size(n):
    payload = _payload(n, seed=n)
    frame = _frame(payload)
    assert frame.numel() == framing.HEADER_BYTES + n == 32 + n
    assert bytes(frame[:4].tolist()) == b"ASF1"
    assert torch.equal(framing.open_frame(frame, _expected(n), frame.numel()), payload)
    assert torch.equal(framing.open_frame(_received(frame, _expected(n)), _expected(n), None), payload)


def test_the_header_layout_is_as_documented():
    payload = _payload(10)
    frame = _frame(payload, sequence=7, source=2)
    magic, checksum, sequence, exchange, source, length = struct.unpack("<4sIQIIQ", bytes(frame[:32].tolist()))
    assert (magic, sequence, exchange, source, length) == (b"ASF1", 7, zlib.crc32(TAG.encode()), 2, 10)
    assert checksum == zlib.crc32(bytes(frame[8:32].tolist()), zlib.crc32(bytes(payload.tolist())))


def test_the_payload_is_a_view_into_the_receive_buffer():
    frame = _frame(_payload(64))
    out = framing.open_frame(frame, _expected(64), frame.numel())
    assert out.data_ptr() == frame.data_ptr() + 32


@pytest.mark.parametrize("cut", [1, 31, 32, 33, 100])
def test_short_messages_are_rejected_whether_or_not_the_library_reports_their_size(cut):
    frame = _frame(_payload(100).clamp(min=1))  # no zero byte: a lost tail never equals the zeroed buffer
    short = frame[: frame.numel() - cut]
    with pytest.raises(framing.FrameError, match=rf"sent a short message: {short.numel()} bytes where a 132-byte"):
        framing.open_frame(short.clone(), _expected(100), short.numel())
    with pytest.raises(framing.FrameError, match="checksum mismatch|not an ASTRA frame|payload bytes"):
        framing.open_frame(_received(short, _expected(100)), _expected(100), None)


@pytest.mark.parametrize("extra", [1, 8, 132])
def test_long_messages_are_rejected_whether_or_not_the_library_reports_their_size(extra):
    frame = _frame(_payload(100))
    long = torch.cat([frame, _payload(extra, seed=9)])
    with pytest.raises(framing.FrameError, match=rf"sent a long message: {long.numel()} bytes where a 132-byte"):
        framing.open_frame(long, _expected(100), long.numel())
    with pytest.raises(framing.FrameError, match="sent a long message: more bytes where a 132-byte frame"):
        framing.open_frame(_received(long, _expected(100)), _expected(100), None)


def test_receive_buffers_are_zeroed_and_have_one_frame_of_room_with_a_guard():
    expected = _expected(10)
    buf = framing.receive_buffer(expected.frame_bytes)
    assert buf.numel() == 2 * expected.frame_bytes + 8 and not buf[: expected.frame_bytes].any()
    exact = framing.receive_buffer(expected.frame_bytes, room=False)
    assert exact.numel() == expected.frame_bytes and not exact.any()
    buf[expected.frame_bytes] ^= 1  # one byte past the frame: a long message
    buf[: expected.frame_bytes] = _frame(_payload(10))
    with pytest.raises(framing.FrameError, match="long message"):
        framing.open_frame(buf, expected, None)


@pytest.mark.parametrize("byte", range(132))
def test_every_single_byte_corruption_is_rejected(byte):
    frame = _frame(_payload(100))
    bad = frame.clone()
    bad[byte] ^= 1 << (byte % 8)
    with pytest.raises(framing.FrameError, match="checksum mismatch|not an ASTRA frame|payload bytes"):
        framing.open_frame(bad, _expected(100), bad.numel())


@pytest.mark.parametrize(
    "field,kwargs,message",
    [
        ("sequence", dict(sequence=3), "sequence number 3 where 4 was expected .a message of another forward"),
        ("source", dict(source=2), "names rank 2 as its source"),
        ("exchange", dict(tag="block2"), "a frame of another exchange"),
    ],
)
def test_a_well_formed_frame_with_another_sequence_source_or_exchange_is_rejected(field, kwargs, message):
    payload = _payload(50)
    frame = _frame(payload, **kwargs)
    with pytest.raises(framing.FrameError, match=message):
        framing.open_frame(frame, _expected(50), frame.numel())


def test_a_frame_of_another_length_is_rejected_by_its_header():
    frame = _frame(_payload(50))
    with pytest.raises(framing.FrameError, match="sent a frame of 50 payload bytes where 60 were expected"):
        framing.open_frame(_received(frame, _expected(60)), _expected(60), None)


def test_random_bytes_are_never_taken_for_a_frame():
    gen = torch.Generator().manual_seed(0)
    for trial in range(2000):
        n = int(torch.randint(0, 200, (1,), generator=gen))
        expected = _expected(n)
        size = expected.frame_bytes
        if trial % 2:  # any size near the frame's
            size = int(torch.randint(0, expected.frame_bytes + 40, (1,), generator=gen))
        noise = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=gen)
        if trial % 3 == 0 and size >= 4:
            noise[:4] = torch.tensor(list(b"ASF1"), dtype=torch.uint8)  # even with the magic right
        for buf, received in ((noise, size), (_received(noise[: expected.frame_bytes], expected), None)):
            with pytest.raises(framing.FrameError):
                framing.open_frame(buf, expected, received)
