"""The JAX backend: forward evaluation of the network IR and (later) projection programs.

ONNX models carry int64 and float64 tensors, so 64-bit types are enabled for this process;
kernels that want float32 ask for it explicitly.
"""

import jax

jax.config.update("jax_enable_x64", True)

from projc.backends.jax.evaluator import Forward, make_forward, unsupported_nodes  # noqa: E402

__all__ = ["Forward", "make_forward", "unsupported_nodes"]
