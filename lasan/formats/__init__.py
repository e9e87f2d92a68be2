"""Readers and writers for ECG formats (DICOM, HL7 v2, WFDB)."""
