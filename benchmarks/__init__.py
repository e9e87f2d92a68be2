"""Benchmarks (`lasan bench`, `make bench`): never part of the tests."""
