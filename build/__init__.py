"""Export checkpoints to TorchScript / ONNX / TensorRT and write Triton model repositories.

Public entry points (imported lazily so that ``lasan serve`` does not load torch):

* :func:`lasan.build.repository.write_repository` ``(checkpoint, out_dir, profile="cpu", ...)`` -> a report whose ``.path`` is the repository
* :class:`lasan.build.serve.TritonServer` - the embedded Triton server, a context manager
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_repository", "TritonServer", "free_port"]

_WHERE = {
    "write_repository": "repository",
    "TritonServer": "serve",
    "free_port": "serve",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
