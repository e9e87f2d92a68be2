"""LASAN: lead-aware spatial attention network for inherited-arrhythmia ECG classification."""

__version__ = "0.1.0"
