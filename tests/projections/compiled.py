"""What a jitted operator's compiled program writes: for tests on XLA's fusion decisions."""

from __future__ import annotations

import re

import jax
import numpy as np


def written_arrays(fn, *shapes, size):
    """The instructions of `fn`'s compiled entry computation (float32 arguments of `shapes`)
    whose results have `size` elements or more: the arrays the program writes to memory at
    that size (parameters excluded; each fusion is one pass writing its result)."""
    args = [jax.ShapeDtypeStruct(s, np.float32) for s in shapes]
    text = jax.jit(fn).lower(*args).compile().as_text()
    entry = text[text.index("\nENTRY"):]
    entry = entry[:entry.index("\n}")]
    found = []
    for line in entry.splitlines()[1:]:
        result = re.search(r"= \w+\[([\d,]*)\]", line)
        if result is None or " parameter(" in line:
            continue
        dims = [int(d) for d in result.group(1).split(",") if d]
        if int(np.prod(dims)) >= size:
            found.append(line.strip())
    return found
