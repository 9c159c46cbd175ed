"""Each distillation loss against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from app.core.losses import (
    HintAdapter,
    get_loss,
    hint_mse,
    known_losses,
    soft_target_kl,
    squared_error,
)
from app.core.registry import UnknownNameError
from app.schemas.job_spec import DistillLossSpec


def test_registry_names_and_unknown():
    assert known_losses() == ["hint", "kl", "mse"]
    with pytest.raises(UnknownNameError, match="known: hint, kl, mse"):
        get_loss("cosine")
    # A close misspelling is suggested.
    with pytest.raises(UnknownNameError, match="did you mean mse"):
        get_loss("mes")


def test_registered_losses_dispatch_to_their_terms():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    spec = DistillLossSpec(temperature=2.0)
    assert get_loss("mse").logits(s, t, spec).item() == pytest.approx(squared_error(s, t).item())
    kl = soft_target_kl(s, t, 2.0).item()
    assert get_loss("kl").logits(s, t, spec).item() == pytest.approx(kl)
    # hint is the kl term plus the feature term the objective adds.
    assert get_loss("hint").logits(s, t, spec).item() == pytest.approx(kl)
    assert [n for n in known_losses() if get_loss(n).features] == ["hint"]
    assert [n for n in known_losses() if get_loss(n).for_regression] == ["mse"]


def test_mse_is_squared_norm_over_logits_mean_over_samples():
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # sample 1: 0 + 4 + 9 = 13; sample 2: 1 + 1 + 1 = 3; mean = 8
    assert squared_error(student, teacher).item() == pytest.approx(8.0)


def _softmax(values: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in values]
    return [e / sum(exps) for e in exps]


def test_kl_matches_hand_computation_with_temperature_squared():
    s, t, temp = [1.0, 2.0, 0.5], [2.0, 0.0, 1.0], 2.0
    p_t, p_s = _softmax(t, temp), _softmax(s, temp)
    expected = sum(a * math.log(a / b) for a, b in zip(p_t, p_s, strict=True)) * temp**2
    got = soft_target_kl(torch.tensor([s]), torch.tensor([t]), temp)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kl_is_zero_for_identical_logits_and_positive_otherwise():
    x = torch.randn(4, 5)
    assert soft_target_kl(x, x.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_target_kl(x, x.flip(1), 4.0).item() > 0


def test_kl_is_batch_mean():
    a, b = torch.randn(1, 5), torch.randn(1, 5)
    single = soft_target_kl(a, b, 3.0)
    doubled = soft_target_kl(torch.cat([a, a]), torch.cat([b, b]), 3.0)
    assert doubled.item() == pytest.approx(single.item(), rel=1e-6)


def test_hint_mse_is_elementwise_mean():
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    t = torch.zeros_like(s)
    assert hint_mse(s, t).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_hint_adapter_maps_channels_and_size():
    adapter = HintAdapter(torch.Size([2, 8, 4, 4]), torch.Size([2, 32, 2, 2]))
    out = adapter(torch.randn(2, 8, 4, 4))
    assert out.shape == (2, 32, 2, 2)
    tokens = HintAdapter(torch.Size([2, 8, 4, 4]), torch.Size([2, 50, 16]))
    assert tokens(torch.randn(2, 8, 4, 4)).shape == (2, 16)
