"""projc keeps freed memory in the process: a step's fresh buffers do not fault in again."""

import os
import subprocess
import sys
import textwrap

import pytest

_PROBE = textwrap.dedent("""
    import resource
    import projc  # tunes the allocator before JAX starts its threads
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: (jnp.sin(x) * 2 + 1).sum(0))  # a 64 MiB temporary each call
    x = jnp.ones((4096, 4096), jnp.float32)
    jax.block_until_ready(f(x))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        jax.block_until_ready(f(x))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * resource.getpagesize() / 2**20)
""")


def _faulted_mib(**env) -> float:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_freed_buffers_are_reused_without_page_faults():
    from projc.allocator import retain_freed_memory

    assert retain_freed_memory()
    tuned, system = _faulted_mib(), _faulted_mib(PROJC_MALLOC="system")
    assert tuned < 16, f"{tuned:.0f} MiB faulted in over three calls"
    assert system > 100, f"{system:.0f} MiB: the probe no longer allocates afresh, the test proves nothing"
