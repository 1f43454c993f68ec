"""Forward rules for ONNX ops, one module per family; importing this package registers them."""

from projc.backends.jax.ops._registry import lookup, register, registered

# Importing the families fills the rule table.
from projc.backends.jax.ops import (  # noqa: F401,E402
    attention,
    control,
    conv,
    elementwise,
    indexing,
    linalg,
    ml,
    norm,
    pool,
    quantize,
    reduce,
    resize,
    rnn,
    sampling,
    sequence,
    shape,
    signal,
)

__all__ = ["lookup", "register", "registered"]
