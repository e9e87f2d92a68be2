"""DICOM reader under mutation (see dicom_mutations.py): a record or a LasanError, never anything else."""

from __future__ import annotations

from contract import FUZZ, assert_contract
from dicom_mutations import attribute_mutation, byte_mutation, dataset_mutation, valid_bytes
from hypothesis import given

from lasan.formats import read_ecg


def test_valid_file_reads() -> None:
    assert read_ecg(valid_bytes()).fs == 250


@FUZZ
@given(attribute_mutation())
def test_dicom_attribute_bytes(data: bytes) -> None:
    assert_contract("dicom-attr", lambda: read_ecg(data, fmt="dicom"))


@FUZZ
@given(dataset_mutation())
def test_dicom_dataset_values(data: bytes) -> None:
    assert_contract("dicom-dataset", lambda: read_ecg(data, fmt="dicom"))


@FUZZ
@given(byte_mutation())
def test_dicom_random_bytes(data: bytes) -> None:
    assert_contract("dicom-bytes", lambda: read_ecg(data, fmt="dicom"))
