"""Running an iterative elementwise solver in blocks that stay in cache (XLA-CPU).

Under a loop over whole arrays, XLA-CPU runs the loop body as a handful of kernels, each one a
pass over memory: a Newton solver with a few arrays of state moves tens of times the bytes of
its inputs and outputs (the softplus projection's cost analysis: ~590 bytes per element
against 24). Mapped over blocks of `CPU_BLOCK` elements with `lax.map`, the same passes reread
the block from cache. That gain is CPU's alone: on a GPU the blocks would run one after
another as small launches, and under a sharded program `lax.map` over a flattened sharded
array makes XLA's partitioner gather it. So blocking is on only on a single CPU device
(`cache_blocking`), and the solvers are written to give the same answer either way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# 65536 elements: 16 float32 state arrays are 4 MB, within the L3 of the 2-core EPYC. The
# softplus projection at 12.8M elements: 814 ms whole, 493 ms in blocks of 65536, 906 ms in
# blocks of 16384 (the loop's per-iteration overhead), 458 ms in blocks of 262144.
CPU_BLOCK = 65536


@functools.cache
def cache_blocking() -> bool:
    """Whether solvers run in cached blocks: on a single CPU device only (see the module)."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1


def flat_map(fn, arrays, fills, block=None):
    """`fn(*arrays)` for an elementwise `fn`, computed over flat blocks of `block` elements.

    Args:
        fn: maps arrays of one shape to a tuple of arrays of that shape; each element's
            answer may depend only on the same element of the inputs.
        arrays: arrays broadcastable to one shape.
        fills: one padding value per array for the last block: a query `fn` solves cleanly.
        block: elements per block (default `CPU_BLOCK`); one call on the whole arrays when
            they are no larger, or where `cache_blocking` is off.

    Returns:
        `fn`'s tuple, each array of the broadcast shape.
    """
    shape = jnp.broadcast_shapes(*(jnp.shape(x) for x in arrays))
    arrays = [jnp.broadcast_to(x, shape) for x in arrays]
    size = int(np.prod(shape))
    block = block or CPU_BLOCK
    if size <= block or not cache_blocking():
        return tuple(fn(*arrays))
    count = -(-size // block)

    def blocks(x, fill):
        flat = x.reshape(-1)
        if count * block > size:
            flat = jnp.pad(flat, (0, count * block - size), constant_values=fill)
        return flat.reshape(count, block)

    outs = lax.map(lambda xs: tuple(fn(*xs)), tuple(blocks(x, f) for x, f in zip(arrays, fills)))
    return tuple(o.reshape(-1)[:size].reshape(shape) for o in outs)
