"""`lasan serve` binds Triton's HTTP, gRPC and metrics endpoints on loopback unless told otherwise
(tritonserver's own default for each address is 0.0.0.0, so every address is passed explicitly)."""

from __future__ import annotations

import argparse

import pytest

from lasan.build.serve import ALL_INTERFACES, LOOPBACK, TritonServer, configure


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(["--repo", "repo", *argv])


def test_serve_listens_on_loopback_by_default() -> None:
    assert _args().host == LOOPBACK == "127.0.0.1"


def test_all_interfaces_is_an_explicit_flag() -> None:
    assert _args("--all-interfaces").host == ALL_INTERFACES == "0.0.0.0"
    assert _args("--host", "10.1.2.3").host == "10.1.2.3"
    with pytest.raises(SystemExit):
        _args("--host", "10.1.2.3", "--all-interfaces")


def test_every_triton_endpoint_gets_the_address() -> None:
    arguments = TritonServer("repo", http_port=18000, grpc_port=18001, metrics_port=18002).address_arguments()
    assert arguments == [
        "--http-address=127.0.0.1", "--http-port=18000",
        "--grpc-address=127.0.0.1", "--grpc-port=18001",
        "--metrics-address=127.0.0.1", "--metrics-port=18002",
    ]
