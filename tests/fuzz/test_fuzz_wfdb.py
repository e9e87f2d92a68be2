"""WFDB reader under mutation of a valid header (``.hea``) written by our writer: fields replaced
by odd values (Unicode digits, huge or negative numbers), lines dropped or repeated, truncation."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from contract import FUZZ, assert_contract
from hypothesis import given
from hypothesis import strategies as st

from lasan.formats import read_ecg, write_ecg
from lasan.formats.sample import sample_ecg

ODD = ["", "²", "٣", "1e400", "-1", "0", "nan", "9" * 30, "abc", "500²", "16x", "0/mV", "(0)/mV", "+", "#", "212",
       "1000(0)/²V", "mV", "V7", "/", "x"]


@lru_cache(maxsize=1)
def seed() -> tuple[str, bytes]:
    with tempfile.TemporaryDirectory() as folder:
        header = write_ecg(sample_ecg(fs=250, duration_s=2.0, seed=3), Path(folder) / "rec.hea", fmt="wfdb")
        return header.with_suffix(".hea").read_text(), header.with_suffix(".dat").read_bytes()


@st.composite
def header_mutation(draw) -> str:
    lines = seed()[0].splitlines()
    index = draw(st.integers(0, len(lines) - 1))
    action = draw(st.sampled_from(["field", "drop", "repeat", "truncate"]))
    if action == "field":
        fields = lines[index].split(" ")
        fields[draw(st.integers(0, len(fields) - 1))] = draw(st.sampled_from(ODD) | st.text(max_size=8))
        lines[index] = " ".join(fields)
    elif action == "drop":
        del lines[index]
    elif action == "repeat":
        lines.insert(index, lines[index])
    else:
        lines[index] = lines[index][: draw(st.integers(0, len(lines[index])))]
    return "\n".join(lines) + "\n"


def test_valid_record_reads(tmp_path: Path) -> None:
    text, dat = seed()
    (tmp_path / "rec.hea").write_text(text)
    (tmp_path / "rec.dat").write_bytes(dat)
    assert read_ecg(tmp_path / "rec.hea").fs == 250


@FUZZ
@given(header_mutation())
def test_wfdb_header(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "rec.hea").write_text(text, encoding="utf-8", errors="surrogatepass")
        (Path(folder) / "rec.dat").write_bytes(seed()[1])
        assert_contract("wfdb-header", lambda: read_ecg(Path(folder) / "rec.hea", fmt="wfdb"))
