"""projc: compile ONNX networks into projection programs and train them without gradients.

The public surface::

    projc.load_model(path, batch_size=..., dims=...)   # ONNX -> network IR (static shapes)
    projc.load_dataset("digits" | "mnist5k" | "mnist1d" | "file.npz")
    projc.evaluate(path, dataset)                      # accuracy: projc vs onnxruntime
    projc.Forward(model)                               # the jitted forward pass (JAX backend)
    program = projc.compile(path, batch_size=256, algorithm="dr", iterations=50)
    program.train(dataset, epochs=10)                  # gradient-free training -> TrainResult
    program.export_onnx("trained.onnx")                # the source graph, trained initializers
    program.save("model.projc"); projc.load_program("model.projc")  # the compiled artifact
"""

from __future__ import annotations

from typing import Any

from projc.allocator import retain_freed_memory

# before JAX starts XLA's threads: each picks its allocator arena on its first allocation
retain_freed_memory()

__version__ = "0.1.0"

__all__ = ["CompiledProgram", "Forward", "ProjcError", "TrainResult", "__version__", "compile", "evaluate",
           "load_dataset", "load_model", "load_program"]

# Imported on first use, so that `projc inspect` and friends start without loading JAX.
_LAZY = {
    "CompiledProgram": ("projc.program", "CompiledProgram"),
    "Forward": ("projc.backends.jax", "Forward"),
    "TrainResult": ("projc.trainer", "TrainResult"),
    "compile": ("projc.program", "compile"),
    "load_program": ("projc.artifact", "load"),
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
