"""projc tunes glibc's allocator on import, unless told not to (projc/allocator.py).

Whether freed buffers then come back without page faults depends on timing (most steps, not
all, in measurements); benchmarks print that, a test here would be flaky."""

import os
import subprocess
import sys

import pytest

_PROBE = "import projc.allocator as a; print(a.retain_freed_memory())"


def _applied(**env) -> str:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_the_allocator_is_tuned_unless_the_system_one_is_asked_for():
    from projc.allocator import retain_freed_memory

    assert retain_freed_memory()  # conftest imported projc: applied already, and idempotent
    assert _applied() == "True"
    assert _applied(PROJC_MALLOC="system") == "False"
