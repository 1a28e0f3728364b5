"""lemon: lossless model expansion (LEMON, ICLR 2024) for transformers models.

``import lemon`` is light: torch and transformers load on first use of the API.
The API's modules are named apart from its functions (``lemon.verify`` lives in
``lemon/verification.py``), so importing a submodule never shadows a function.
"""

__version__ = "0.1.0"

_API = {
    "expand": "lemon.model", "expand_": "lemon.model", "expand_plan": "lemon.model",
    "available_backends": "lemon.backends", "verify": "lemon.verification",
}
_MODULES = ("schedule", "checkpoint")  # lemon.schedule.LemonSchedule, lemon.checkpoint.expand_checkpoint
__all__ = sorted(_API) + list(_MODULES) + ["__version__"]


def __getattr__(name: str):
    import importlib

    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"lemon.{name}")
    raise AttributeError(f"module 'lemon' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazy API is not in globals() until first use: list it for dir() and completion
    return sorted(set(globals()) | set(__all__))
