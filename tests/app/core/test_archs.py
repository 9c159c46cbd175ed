"""The architecture registry: names, sizes, inputs from 8x8 to 224x224, 1 or 3 channels."""

from __future__ import annotations

import pytest
import torch

from app.core.archs import (
    arch_info,
    count_params,
    default_hint_layer,
    head_name,
    known_archs,
    replace_head,
)
from app.core.network import NetworkConfig, build_network, module_names
from app.core.registry import UnknownNameError

# One architecture per torchvision family (the input rules are per family), plus ours.
FAMILY_REPRESENTATIVES = [
    "small_cnn",
    "resnet18",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "mnasnet0_5",
    "regnet_x_400mf",
    "shufflenet_v2_x0_5",
    "squeezenet1_1",
    "densenet121",
    "convnext_tiny",
    "alexnet",
    "googlenet",
    "inception_v3",
    "swin_t",
    "vit_b_32",
    "maxvit_t",
    "vgg11",
]


def test_every_torchvision_classifier_is_registered():
    import torchvision

    names = set(known_archs())
    assert "small_cnn" in names
    assert set(torchvision.models.list_models(module=torchvision.models)) <= names


def test_unknown_arch_lists_known_ones():
    with pytest.raises(UnknownNameError) as exc:
        arch_info("resnet19")
    assert "resnet18" in str(exc.value) and "small_cnn" in str(exc.value)


def test_small_cnn_scales_with_width():
    sizes = [
        count_params(build_network(NetworkConfig("small_cnn", 10, 1, 28, width=w)))
        for w in (0.25, 0.5, 1.0, 2.0)
    ]
    assert sizes == sorted(sizes)
    # width 1 is the founding document's student size class (< 100k parameters).
    assert 60_000 < sizes[2] < 100_000


@pytest.mark.parametrize("arch", FAMILY_REPRESENTATIVES)
def test_inputs_from_8x8_grey_to_224_colour(arch: str):
    for channels, size in ((1, 8), (3, 224)):
        net = build_network(
            NetworkConfig(arch, num_classes=7, in_channels=channels, image_size=size)
        )
        net.eval()
        with torch.inference_mode():
            out = net(torch.rand(2, channels, size, size))
        assert out.shape == (2, 7), (arch, channels, size)


def test_network_applies_scale_and_normalisation():
    config = NetworkConfig("small_cnn", 3, 1, 8, scale=255.0, mean=[0.5], std=[0.25])
    net = build_network(config)
    x = torch.full((1, 1, 8, 8), 255.0)
    # (255 / 255 - 0.5) / 0.25 = 2
    assert torch.allclose(net.preprocess(x), torch.full((1, 1, 8, 8), 2.0))


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "squeezenet1_1", "vit_b_32"])
def test_replace_head_changes_outputs(arch: str):
    net = build_network(NetworkConfig(arch, 5, 3, 32))
    replace_head(net.backbone, 12)
    net.eval()
    with torch.inference_mode():
        assert net(torch.rand(1, 3, 32, 32)).shape == (1, 12)
    assert head_name(net.backbone)


@pytest.mark.parametrize(
    "arch",
    [a for a in FAMILY_REPRESENTATIVES if default_hint_layer(a) is not None],
)
def test_default_hint_layers_exist(arch: str):
    layer = default_hint_layer(arch)
    assert layer in module_names(arch)
