"""Triton client: score ECGs through the served ``lasan`` ensemble.

Public surface (see docs/client.md): :class:`TritonScorer` (blocking),
:class:`AsyncTritonScorer` (asyncio, many requests in flight), :class:`Score` and
:class:`ModelInfo`. Reports (matplotlib) live in :mod:`lasan.client.report`, imported
only when needed.
"""

from __future__ import annotations

from lasan.client.api import DEFAULT_URL, AsyncTritonScorer, RetryPolicy, TritonScorer, is_transient
from lasan.client.score import ModelInfo, Score

__all__ = ["DEFAULT_URL", "AsyncTritonScorer", "RetryPolicy", "TritonScorer", "is_transient", "ModelInfo", "Score"]
