"""Opset dispatch: the newest rule whose version is at most the model's opset."""

from projc.backends.jax.ops import _registry as reg


def test_dispatch_picks_newest_at_or_below(monkeypatch):
    monkeypatch.setattr(reg, "_RULES", {})
    reg.register("Foo", since=1)(lambda ctx: "v1")
    reg.register("Foo", since=13)(lambda ctx: "v13")
    assert reg.lookup("Foo", 7)(None) == "v1"
    assert reg.lookup("Foo", 13)(None) == "v13"
    assert reg.lookup("Foo", 28)(None) == "v13"
    assert reg.lookup("Foo", 12)(None) == "v1"


def test_missing_and_too_old(monkeypatch):
    monkeypatch.setattr(reg, "_RULES", {})
    reg.register("Bar", since=11)(lambda ctx: 1)
    assert reg.lookup("Bar", 10) is None
    assert reg.lookup("Nope", 17) is None
    assert reg.lookup("Bar", 17, domain="ai.onnx") is not None


def test_duplicate_registration_rejected(monkeypatch):
    monkeypatch.setattr(reg, "_RULES", {})
    reg.register("Baz", since=1)(lambda ctx: 1)
    try:
        reg.register("Baz", since=1)(lambda ctx: 2)
    except ValueError as exc:
        assert "twice" in str(exc)
    else:
        raise AssertionError("duplicate registration accepted")
