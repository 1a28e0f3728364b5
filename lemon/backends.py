"""Executors of plans: which exist, where each runs, and the fallback when one cannot.

Every executor has the contract of :func:`lemon.reference.execute` (plan, source, out=None)
and produces the same bits. ``auto`` picks the fastest that runs on the tensors' device; a
named backend that cannot run there falls back to the reference executor with one warning
that points at the caller's line. The compiled backends (``cpp``, ``cuda``) are part of this
install or not: asking for one that was not built is an error that says how to build it.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .caller import stacklevel_outside_lemon
from .plan import TensorPlan

Executor = Callable[[TensorPlan, torch.Tensor], torch.Tensor]


def triton_interpreter() -> bool:
    """Triton's interpreter runs kernels on CPU tensors (read when the kernels are first
    imported, so set TRITON_INTERPRET=1 before the first expansion)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_runs_on(device: torch.device) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and triton_interpreter()


def _cpp_runs_on(device: torch.device) -> bool:
    from . import native
    return device.type == "cpu" and native.built()


def _cuda_runs_on(device: torch.device) -> bool:
    from . import native
    return device.type == "cuda" and torch.cuda.is_available() and native.has_cuda_executor()


def _load_cpp() -> Executor:
    from .native import execute_cpu
    return execute_cpu


def _load_cuda() -> Executor:
    from .native import execute_cuda
    return execute_cuda


def _load_reference() -> Executor:
    from .reference import execute
    return execute


def _load_triton() -> Executor:
    from lemon_kernels.executor import execute
    return execute


@dataclass(frozen=True)
class Backend:
    name: str
    runs_on: Callable[[torch.device], bool]  # can it execute plans on tensors of this device, here?
    load: Callable[[], Executor]
    where: str  # what it needs, for the fallback message


BACKENDS = {
    "reference": Backend("reference", lambda device: True, _load_reference, "anywhere"),
    "triton": Backend("triton", _triton_runs_on, _load_triton,
                      "Triton with CUDA tensors, or CPU tensors under TRITON_INTERPRET=1"),
    "cpp": Backend("cpp", _cpp_runs_on, _load_cpp, "CPU tensors"),
    "cuda": Backend("cuda", _cuda_runs_on, _load_cuda, "CUDA tensors"),
}
NAMES = tuple(BACKENDS)  # every name the API accepts, besides "auto"
COMPILED = ("cpp", "cuda")  # part of lemon's C++ extension: built with lemon, or not
AUTO = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}  # fastest first


def execute_meta(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The executor of meta tensors: a model built on the meta device (shapes, no values)
    expands to the target's shapes on the meta device, for looking at it before loading weights."""
    return out if out is not None else torch.empty(plan.output_shape, dtype=source.dtype, device=source.device)


def available_backends() -> list[str]:
    """The backends that can execute plans on this machine (on some device of it)."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [name for name, backend in BACKENDS.items() if any(backend.runs_on(d) for d in devices)]


def executor(backend: str = "auto", device: torch.device | None = None) -> Executor:
    """The executor for ``backend`` on tensors of ``device`` (default: CPU)."""
    device = torch.device(device if device is not None else "cpu")
    if backend != "auto" and backend not in NAMES:
        raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {NAMES}")
    if device.type == "meta":  # no values to compute: every backend gives the shapes alone
        return execute_meta
    if backend == "auto":
        for name in AUTO.get(device.type, ("reference",)):
            if BACKENDS[name].runs_on(device):
                return BACKENDS[name].load()
    if backend in COMPILED:  # not built into this install: an error that says how to build it
        from . import native
        native.require(backend)
    chosen = BACKENDS[backend]
    if not chosen.runs_on(device):
        warnings.warn(f"lemon: backend {backend!r} is not available here for {device.type} tensors "
                      f"(it needs {chosen.where}; available: {available_backends()}); using the reference executor",
                      stacklevel=stacklevel_outside_lemon())
        return BACKENDS["reference"].load()
    return chosen.load()
