"""One registry type for architectures, datasets and losses: the same lookups and the
same clear error, with close names suggested."""

from __future__ import annotations

import pytest

from app.core.archs import ARCHS
from app.core.datasets import DATASETS
from app.core.losses import LOSSES
from app.core.registry import Registry, UnknownNameError


def test_add_get_and_names():
    reg: Registry[int] = Registry("colour")
    reg.add("red", 1)

    @reg.register("blue")
    def blue() -> int:
        return 2

    assert reg.get("red") == 1 and reg.get("blue") is blue
    assert reg.names() == ["blue", "red"] and "red" in reg and len(reg) == 2
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("red", 3)


def test_unknown_names_suggest_close_ones_and_list_the_rest():
    reg: Registry[int] = Registry("colour")
    for i, name in enumerate(("red", "green", "blue")):
        reg.add(name, i)
    with pytest.raises(UnknownNameError) as exc:
        reg.get("gren")
    assert str(exc.value) == "unknown colour 'gren'; did you mean green? known: blue, green, red"
    with pytest.raises(UnknownNameError) as exc:
        reg.get("zzz")
    assert "did you mean" not in str(exc.value) and "known: blue, green, red" in str(exc.value)


@pytest.mark.parametrize(
    ("registry", "typo", "meant"),
    [
        (ARCHS, "small_cn", "small_cnn"),
        (ARCHS, "resnet19", "resnet18"),
        (DATASETS, "digit", "digits"),
        (DATASETS, "torchvision:FashionMnist", "torchvision:FashionMNIST"),
        (LOSSES, "hnt", "hint"),
    ],
)
def test_every_registry_suggests_the_name_a_typo_meant(registry, typo, meant):
    with pytest.raises(UnknownNameError) as exc:
        registry.get(typo)
    message = str(exc.value)
    assert message.startswith(f"unknown {registry.kind} {typo!r}; did you mean ")
    assert meant in message.split("?")[0]


def test_a_long_list_shows_featured_names_and_the_count():
    with pytest.raises(UnknownNameError) as exc:
        ARCHS.get("zzzz")
    message = str(exc.value)
    assert "known archs include small_cnn, resnet18" in message
    assert f"({len(ARCHS)} in all: small_cnn and every torchvision classification model)" in message
