"""The op rule table: (domain, op type) -> implementations by the opset version they start at.

A rule is ``fn(ctx, *inputs) -> array | tuple[array, ...]``; a missing optional input is
``None``. Dispatch picks the newest implementation whose ``since`` version is at most the
model's opset for that domain, so one rule serves every later opset until the op changes.
"""

from __future__ import annotations

import bisect
from typing import Callable

Rule = Callable[..., object]

_RULES: dict[tuple[str, str], list[tuple[int, Rule]]] = {}

_DOMAIN_ALIASES = {"ai.onnx": ""}


def _norm(domain: str) -> str:
    return _DOMAIN_ALIASES.get(domain, domain)


def register(*ops: str, since: int = 1, domain: str = ""):
    """Decorator: register ``fn`` for each op in ``ops`` starting at opset ``since``."""

    def deco(fn: Rule) -> Rule:
        for op in ops:
            versions = _RULES.setdefault((_norm(domain), op), [])
            if any(v == since for v, _ in versions):
                raise ValueError(f"rule for {op} since {since} registered twice")
            bisect.insort(versions, (since, fn), key=lambda item: item[0])
        return fn

    return deco


def lookup(op: str, version: int, domain: str = "") -> Rule | None:
    """The rule for ``op`` at opset ``version``, or ``None`` when there is none."""
    versions = _RULES.get((_norm(domain), op))
    if not versions:
        return None
    i = bisect.bisect_right([v for v, _ in versions], version)
    return versions[i - 1][1] if i else None


def registered() -> dict[tuple[str, str], list[int]]:
    """(domain, op) -> the opset versions with an implementation."""
    return {key: [v for v, _ in rules] for key, rules in sorted(_RULES.items())}
