"""Errors a user can act on.

Every failure caused by the user's input (a file, a model, a data set, a flag) is a
:class:`ProjcError`. The CLI prints its message on one line and exits with status 2; it never
shows a traceback for these. Internal bugs stay ordinary exceptions.
"""

from __future__ import annotations


class ProjcError(Exception):
    """A problem with the user's input; the message says what and where."""

    exit_code = 2


class ModelLoadError(ProjcError):
    """The model file is missing, not ONNX, truncated or invalid."""


class UnsupportedOpError(ProjcError):
    """One or more nodes have no implementation; lists every one of them."""

    def __init__(self, what: str, nodes: list[tuple[str, str, str, int]]):
        self.nodes = nodes
        lines = [
            f"  {name or '<unnamed>'}: {domain + '::' if domain else ''}{op} (opset {ver})"
            for name, op, domain, ver in nodes
        ]
        super().__init__(
            f"{what}: {len(nodes)} node(s) use unsupported ops:\n" + "\n".join(lines)
        )


class ShapeError(ProjcError):
    """A dimension cannot be made static, or two shapes do not agree."""


class DataError(ProjcError):
    """A data set does not fit the model, or is malformed."""
