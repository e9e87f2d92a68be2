"""CPU inference optimisation of exported TorchScript parts, without changing their numbers.

What the profile of LASAN on CPU shows (docs/performance.md has the table): about 92 % of
the forward time is the four per-lead convolutions, which oneDNN already runs close to the
machine's matmul rate; BatchNorm, ReLU and max-pool are the rest. So the useful steps are
the ones that remove work around the convolutions rather than a different kernel:

* ``torch.jit.freeze`` inlines the weights as constants and folds each eval-mode
  BatchNorm into the preceding convolution (one pass over the activations fewer per block);
* ``torch.jit.optimize_for_inference`` then runs the frozen-graph passes (conv/add/mul
  folding, dropout removal, and oneDNN weight prepacking where the op supports it);
* the thread count: one intra-op thread per core this process may use, and a single
  inter-op thread, because the parts are one chain of ops with nothing to run beside it.

Every optimised module is checked against the module it came from on the example inputs;
a result that differs by more than ``atol`` is refused, so an optimisation can never change
what a clinician sees.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from lasan.errors import ModelRepositoryError

__all__ = ["DEFAULT_ATOL", "optimize_for_cpu", "recommended_threads", "apply_thread_settings", "max_abs_difference"]

# Folding BatchNorm into the convolution reorders float additions; the observed difference
# on LASAN is about 5e-7. 1e-4 is the contract the served model must keep against eager.
DEFAULT_ATOL = 1e-4


def recommended_threads() -> int:
    """Intra-op threads for CPU inference: the CPUs this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def apply_thread_settings(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default :func:`recommended_threads`) and return the count.

    The inter-op pool is left alone when it has already started (torch allows setting it once).
    """
    n = threads or recommended_threads()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set or parallel work already ran in this process
        pass
    return n


def _as_tuple(outputs: object) -> tuple[torch.Tensor, ...]:
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if isinstance(outputs, (tuple, list)):
        return tuple(t for t in outputs if isinstance(t, torch.Tensor))
    raise ModelRepositoryError(f"cannot compare module outputs of type {type(outputs).__name__}")


def max_abs_difference(a: object, b: object) -> float:
    """Largest absolute difference between two module outputs (tensor or tuple of tensors).

    Raises:
        ModelRepositoryError: the outputs differ in number or shape.
    """
    ta, tb = _as_tuple(a), _as_tuple(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb, strict=True)):
        raise ModelRepositoryError("the optimised module returns differently shaped outputs than the original")
    return max((float((x.float() - y.float()).abs().max()) if x.numel() else 0.0) for x, y in zip(ta, tb, strict=True))


def optimize_for_cpu(
    scripted: torch.jit.ScriptModule,
    example_inputs: Sequence[torch.Tensor],
    *,
    atol: float = DEFAULT_ATOL,
) -> torch.jit.ScriptModule:
    """Freeze and optimise a scripted or traced part for CPU inference; numbers stay within ``atol``.

    Args:
        scripted: a TorchScript module (``torch.jit.script`` or ``torch.jit.trace``); it is put in eval mode.
        example_inputs: inputs to compare the original and the optimised module on (a batch > 1
            is best: it exercises the batch dimension the server will use).
        atol: largest allowed absolute difference on any output.

    Returns:
        The optimised module; save it with ``torch.jit.save`` like any ScriptModule.

    Raises:
        ModelRepositoryError: the optimised module's outputs differ by more than ``atol``
            (the original module should then be exported unoptimised).
    """
    scripted = scripted.eval()
    inputs = tuple(example_inputs)
    with torch.inference_mode():
        reference = scripted(*inputs)
    # freeze() folds eval-mode BatchNorm into conv weights; optimize_for_inference() runs the
    # frozen-graph passes on top. Neither is done under inference_mode: they rewrite parameters.
    frozen = torch.jit.freeze(scripted)
    optimised = torch.jit.optimize_for_inference(frozen)
    with torch.inference_mode():
        # Twice: the profiling executor specialises the graph on its first calls.
        optimised(*inputs)
        result = optimised(*inputs)
    diff = max_abs_difference(reference, result)
    if not diff <= atol:
        raise ModelRepositoryError(
            f"CPU optimisation changed the model's outputs by {diff:.2e} (> {atol:.0e}); export it unoptimised"
        )
    return optimised
