"""The pass contract, the registry and pipelines.

A pass is a frozen dataclass with a kebab-case ``name``; calling it on a model returns a
:class:`PassResult` with the (possibly new) model and whether anything changed. Passes register
themselves with :func:`register_pass`; a pipeline is a comma-separated string of names, e.g.
``"canonicalize,fold-constants,dce"``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import onnx_ir as ir

from projc.errors import ProjcError


@dataclasses.dataclass(frozen=True)
class PassResult:
    model: ir.Model
    modified: bool


@dataclasses.dataclass(frozen=True)
class Pass:
    """Base class: subclasses set ``name`` and implement :meth:`run`."""

    name: ClassVar[str] = ""

    def run(self, model: ir.Model) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, model: ir.Model) -> PassResult:
        return self.run(model)


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to pipelines under its ``name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"pass name {cls.name!r} missing or registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    """Name -> pass class, for every registered pass."""
    return dict(_REGISTRY)


def get_pass(name: str) -> Pass:
    """Instantiate the pass called ``name`` with its default options."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ProjcError(f"unknown pass {name!r}; known passes: {known}") from None


def parse_pipeline(spec: str) -> list[Pass]:
    """Turn ``"a,b,c"`` into pass instances, rejecting unknown names."""
    return [get_pass(part.strip()) for part in spec.split(",") if part.strip()]


def run_pipeline(
    model: ir.Model,
    passes: str | list[Pass],
    after_each: Callable[[Pass, ir.Model], None] | None = None,
) -> PassResult:
    """Run passes in order; ``after_each`` (e.g. the verifier) is called after every pass."""
    if isinstance(passes, str):
        passes = parse_pipeline(passes)
    modified = False
    for p in passes:
        result = p(model)
        model, modified = result.model, modified or result.modified
        if after_each is not None:
            after_each(p, model)
    return PassResult(model, modified)
