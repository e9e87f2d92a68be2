"""The ECG-system export readers (GE MUSE, Philips Sierra, HL7 aECG, Mortara XML, SCP-ECG, EDF)
under mutation of a valid file: element texts replaced by odd values, elements dropped, bytes
flipped, the file truncated. Seeds are the spec-built files of tests/core and the real Philips export."""

from __future__ import annotations

import re
from functools import cache

import pytest
from contract import FUZZ, assert_contract, core_tests_path
from hypothesis import given
from hypothesis import strategies as st

from lasan.formats import read_ecg

core_tests_path()
from test_formats_vendor import BUILDERS, PHILIPS  # noqa: E402 - after the path is set

ODD = ["", "²", "٣", "1e400", "-1", "0", "nan", "9" * 30, "abc", "1.²", "-0", "\x00", "&amp;", "MICROVOLTS", "V7"]
_TEXT = re.compile(rb">([^<>]{1,200})<")
_ELEMENT = re.compile(rb"<([A-Za-z][\w.:-]*)[^<>]*>[^<>]*</\1>")


@cache
def seed(fmt: str) -> bytes:
    return PHILIPS.read_bytes() if fmt == "philips-sierra" else BUILDERS[fmt]()


def formats() -> list[str]:
    return sorted(BUILDERS) + (["philips-sierra"] if PHILIPS.exists() else [])


@st.composite
def mutation(draw, fmt: str) -> bytes:
    data = seed(fmt)
    xml = data.lstrip().startswith(b"<")
    action = draw(st.sampled_from(["text", "drop", "bytes", "truncate"] if xml else ["bytes", "truncate", "int"]))
    if action == "text" and (spans := [m.span(1) for m in _TEXT.finditer(data)]):
        start, end = draw(st.sampled_from(spans))
        odd = draw(st.sampled_from(ODD)).encode("utf-8")
        return data[:start] + odd + data[end:]
    if action == "drop" and (spans := [m.span() for m in _ELEMENT.finditer(data)]):
        start, end = draw(st.sampled_from(spans))
        return data[:start] + data[end:]
    if action == "int":  # binary headers: a 16/32-bit field overwritten with an extreme value
        at = draw(st.integers(0, min(len(data), 2048) - 4))
        value = draw(st.sampled_from([0, 1, 0xFFFF, 0x7FFF, 0xFFFFFFFF, 0x80000000]))
        width = draw(st.sampled_from([2, 4]))
        return data[:at] + (value & (2 ** (8 * width) - 1)).to_bytes(width, "little") + data[at + width:]
    mutable = bytearray(data)
    if action != "truncate":
        for _ in range(draw(st.integers(1, 8))):
            mutable[draw(st.integers(0, len(mutable) - 1))] = draw(st.integers(0, 255))
        return bytes(mutable)
    return data[: draw(st.integers(0, len(data)))]


@pytest.mark.parametrize("fmt", formats())
def test_vendor_seed_reads(fmt: str) -> None:
    assert read_ecg(seed(fmt), fmt=fmt).n_samples > 0


@pytest.mark.parametrize("fmt", formats())
def test_vendor_mutations(fmt: str) -> None:
    @FUZZ
    @given(mutation(fmt))
    def run(data: bytes) -> None:
        assert_contract(fmt, lambda: read_ecg(data, fmt=fmt))

    run()
