"""Triton client: score ECGs through the served `lasan` ensemble."""
