"""lasan.validation: the lead rule the intake applies is the one the client sends by."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lasan.errors import BadWaveformError, MissingLeadsError
from lasan.formats.sample import sample_ecg
from lasan.leads import STANDARD_LEADS
from lasan.validation import validate_record


def _subsets():
    # Every subset of the limb leads, with all, some or none of the chest leads.
    limb, chest = STANDARD_LEADS[:6], STANDARD_LEADS[6:]
    for n in range(len(limb) + 1):
        for kept in itertools.combinations(limb, n):
            for chest_kept in (chest, chest[:-1], ()):
                if kept or chest_kept:
                    yield tuple(kept) + tuple(chest_kept)


def test_validate_record_refuses_exactly_what_wire_ecg_cannot_send():
    from lasan.client.request import wire_ecg

    full = sample_ecg(fs=250.0, duration_s=4.0)
    for leads in _subsets():
        rows = [full.leads.index(lead) for lead in leads]
        record = type(full)(full.signal[rows], full.fs, leads, full.acquisition)
        try:
            wire_ecg(record)
            sendable = True
        except MissingLeadsError:
            sendable = False
        if sendable:
            validate_record(record)
        else:
            with pytest.raises(MissingLeadsError):
                validate_record(record)


def test_empty_and_non_finite_waveforms_are_refused():
    record = sample_ecg(fs=250.0, duration_s=4.0)
    bad = record.signal.copy()
    bad[0, 10] = np.nan
    with pytest.raises(BadWaveformError, match="finite"):
        validate_record(type(record)(bad, record.fs, record.leads, record.acquisition))
