"""projc: compile ONNX networks into projection programs and train them without gradients.

The public surface::

    projc.load_model(path, batch_size=..., dims=...)   # ONNX -> network IR (static shapes)
    projc.load_dataset("digits" | "mnist5k" | "mnist1d" | "file.npz")
    projc.evaluate(path, dataset)                      # accuracy: projc vs onnxruntime
    projc.Forward(model)                               # the jitted forward pass (JAX backend)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Forward", "ProjcError", "__version__", "evaluate", "load_dataset", "load_model"]

# Imported on first use, so that `projc inspect` and friends start without loading JAX.
_LAZY = {
    "Forward": ("projc.backends.jax", "Forward"),
    "ProjcError": ("projc.errors", "ProjcError"),
    "evaluate": ("projc.evaluate", "evaluate"),
    "load_dataset": ("projc.datasets", "load_dataset"),
    "load_model": ("projc.frontend", "load_model"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'projc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
