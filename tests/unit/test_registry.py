"""The typed registries."""

from __future__ import annotations

import pytest

from mtlkit._registry import Registry
from mtlkit.errors import UnknownComponentError


def test_register_get_build_alias_and_unregister() -> None:
    reg: Registry = Registry("widget")

    @reg.register("spinner", aliases=("spin",))
    def spinner(*, speed: int = 1) -> int:
        """A spinner."""
        return speed * 2

    assert reg.get("spin") is spinner
    assert reg.build("spinner", speed=3) == 6
    assert reg.summary("spinner") == "A spinner."
    assert reg.names() == ["spinner"] and "spin" in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("spin")(spinner)
    with pytest.raises(TypeError, match="widget 'spinner': got an unexpected keyword argument 'sped'"):
        reg.build("spinner", sped=3)
    with pytest.raises(UnknownComponentError, match="Unknown widget 'spiner'. Did you mean 'spinner'"):
        reg.get("spiner")
    reg.unregister("spin")
    assert "spinner" not in reg and "spin" not in reg
