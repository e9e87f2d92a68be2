"""MLLP framing in memory: split frames, several per read, oversize, garbage, truncation."""

from __future__ import annotations

import asyncio

import pytest

from lasan.errors import MLLPFramingError
from lasan.integration.mllp import (
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
    FrameTooLargeError,
    MLLPDecoder,
    frame,
    read_block,
)

MSG = b"MSH|^~\\&|CART|WARD|LASAN||20240101||ORU^R01|C1|P|2.5.1\rPID|1\r"


def test_constants_are_the_mllp_bytes():
    assert (START_BLOCK, END_BLOCK, CARRIAGE_RETURN) == (b"\x0b", b"\x1c", b"\r")
    assert frame(MSG) == b"\x0b" + MSG + b"\x1c\r"


def test_frame_split_across_every_byte_boundary():
    wire = frame(MSG)
    for cut in range(1, len(wire)):
        dec = MLLPDecoder()
        assert dec.feed(wire[:cut]) + dec.feed(wire[cut:]) == [MSG], cut
        assert dec.discarded_bytes == 0 and dec.pending_bytes == 0


def test_one_byte_at_a_time():
    dec = MLLPDecoder()
    out = []
    for b in frame(MSG) + frame(MSG.replace(b"C1", b"C2")):
        out += dec.feed(bytes([b]))
    assert out == [MSG, MSG.replace(b"C1", b"C2")]


def test_several_frames_in_one_read():
    msgs = [MSG.replace(b"C1", f"C{i}".encode()) for i in range(5)]
    dec = MLLPDecoder()
    assert dec.feed(b"".join(frame(m) for m in msgs)) == msgs
    assert dec.discarded_bytes == 0


def test_garbage_between_frames_is_skipped_and_counted():
    dec = MLLPDecoder()
    wire = b"\x00\xffnoise" + frame(MSG) + b"\r\n junk \x1c" + frame(MSG)
    assert dec.feed(wire) == [MSG, MSG]
    assert dec.discarded_bytes == len(b"\x00\xffnoise") + len(b"\r\n junk \x1c")


def test_fs_without_trailing_cr_is_accepted():
    dec = MLLPDecoder()
    assert dec.feed(b"\x0b" + MSG + b"\x1c" + b"\x0b" + MSG + b"\x1c\r") == [MSG, MSG]


def test_new_start_block_inside_a_frame_drops_the_truncated_one():
    dec = MLLPDecoder()
    assert dec.feed(b"\x0bMSH|^~\\&|half a mess" + frame(MSG)) == [MSG]
    assert dec.truncated_frames == 1


def test_oversize_frame_raises_and_decoder_recovers():
    dec = MLLPDecoder(max_frame_bytes=1024)
    with pytest.raises(FrameTooLargeError, match="1024 byte limit"):
        dec.feed(b"\x0b" + b"A" * 2000)
    # After the error the decoder is clean: a following complete frame decodes.
    assert dec.feed(frame(MSG)) == [MSG]
    with pytest.raises(FrameTooLargeError):
        MLLPDecoder(max_frame_bytes=1024).feed(frame(b"B" * 1500))


def test_exact_limit_is_allowed():
    body = b"M" * 1024
    assert MLLPDecoder(max_frame_bytes=1024).feed(frame(body)) == [body]


def _reader(*chunks: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for c in chunks:
        reader.feed_data(c)
    reader.feed_eof()
    return reader


def test_read_block_over_a_stream():
    async def main():
        wire = frame(MSG) + frame(MSG)
        reader = _reader(wire[:7], wire[7:30], wire[30:])
        dec, pending = MLLPDecoder(), []
        first = await read_block(reader, dec, pending)
        second = await read_block(reader, dec, pending)
        end = await read_block(reader, dec, pending)
        return first, second, end

    first, second, end = asyncio.run(main())
    assert first == MSG and second == MSG and end is None


def test_stream_ending_inside_a_frame_is_a_framing_error():
    async def main():
        await read_block(_reader(b"\x0b" + MSG[:20]), MLLPDecoder(), [])

    with pytest.raises(MLLPFramingError, match="truncated"):
        asyncio.run(main())


def test_idle_timeout():
    async def main():
        reader = asyncio.StreamReader()  # never fed
        await read_block(reader, MLLPDecoder(), [], idle_timeout_s=0.05)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(main())
