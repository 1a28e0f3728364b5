"""Executors of plans: which exist, which run here, and the fallback when one does not."""
from __future__ import annotations

import warnings
from typing import Callable

import torch

from .caller import stacklevel_outside_lemon
from .plan import TensorPlan

Executor = Callable[[TensorPlan, torch.Tensor], torch.Tensor]
BACKENDS = ("reference", "triton", "cpp", "cuda")  # fastest last to be built; "auto" picks


def _reference() -> Executor:
    from .reference import execute
    return execute


_LOADERS: dict[str, Callable[[], Executor]] = {"reference": _reference}


def available_backends() -> list[str]:
    """The backends that can execute plans on this machine."""
    return [name for name in BACKENDS if name in _LOADERS]


def executor(backend: str = "auto", device: torch.device | None = None) -> Executor:
    """The executor for ``backend``. "auto" picks the fastest available for ``device``; a known
    backend that cannot run here falls back to the reference executor with a warning."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {BACKENDS}")
    if backend == "auto":
        backend = available_backends()[-1]
    if backend not in _LOADERS:
        warnings.warn(f"lemon: backend {backend!r} is not available here "
                      f"(available: {available_backends()}); using the reference executor",
                      stacklevel=stacklevel_outside_lemon())
        backend = "reference"
    return _LOADERS[backend]()
