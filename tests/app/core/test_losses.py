"""Each distillation loss against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from app.core.losses import (
    HintAdapter,
    decoupled_kd,
    dist_relation,
    get_loss,
    hint_mse,
    known_losses,
    soft_target_kl,
    squared_error,
)
from app.core.registry import UnknownNameError
from app.schemas.stage_spec import DistillLossSpec
from worker.objectives import DistillObjective


def test_registry_names_and_unknown():
    assert known_losses() == ["dist", "dkd", "hint", "kl", "mse"]
    with pytest.raises(UnknownNameError, match="known: dist, dkd, hint, kl, mse"):
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


# ------------------------------------------------------------------------------- dkd
def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _dkd_by_hand(s_rows, t_rows, targets, temp, alpha, beta):
    """TCKD and NCKD per sample, step by step, then the batch mean times T^2."""
    total = 0.0
    for s, t, k in zip(s_rows, t_rows, targets, strict=True):
        p_s, p_t = _softmax(s, temp), _softmax(t, temp)
        tckd = _kl([p_t[k], 1 - p_t[k]], [p_s[k], 1 - p_s[k]])
        others = [i for i in range(len(s)) if i != k]
        q_s = _softmax([s[i] for i in others], temp)
        q_t = _softmax([t[i] for i in others], temp)
        total += alpha * tckd + beta * _kl(q_t, q_s)
    return total / len(s_rows) * temp**2


DKD_S = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]]
DKD_T = [[3.0, 0.0, 1.0], [1.0, 0.5, -0.5]]  # the teacher's top classes: 0, 0


def test_dkd_matches_hand_computation_with_teacher_argmax():
    got = decoupled_kd(torch.tensor(DKD_S), torch.tensor(DKD_T), 2.0, alpha=1.0, beta=8.0)
    expected = _dkd_by_hand(DKD_S, DKD_T, [0, 0], 2.0, 1.0, 8.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dkd_uses_the_labels_when_given():
    s, t = torch.tensor(DKD_S), torch.tensor(DKD_T)
    labels = torch.tensor([2, 1])  # not the teacher's top classes
    got = decoupled_kd(s, t, 4.0, alpha=0.5, beta=3.0, labels=labels)
    assert got.item() == pytest.approx(_dkd_by_hand(DKD_S, DKD_T, [2, 1], 4.0, 0.5, 3.0), rel=1e-5)
    without = decoupled_kd(s, t, 4.0, alpha=0.5, beta=3.0)
    assert without.item() == pytest.approx(
        _dkd_by_hand(DKD_S, DKD_T, [0, 0], 4.0, 0.5, 3.0), rel=1e-5
    )
    assert got.item() != pytest.approx(without.item(), rel=1e-3)
    # Labels equal to the teacher's top classes give the same value as none.
    same = decoupled_kd(s, t, 4.0, alpha=0.5, beta=3.0, labels=torch.tensor([0, 0]))
    assert same.item() == pytest.approx(without.item(), rel=1e-6)


def test_dkd_alpha_and_beta_weight_the_two_parts():
    s, t = torch.tensor(DKD_S), torch.tensor(DKD_T)
    tckd = decoupled_kd(s, t, 4.0, alpha=1.0, beta=0.0).item()
    nckd = decoupled_kd(s, t, 4.0, alpha=0.0, beta=1.0).item()
    assert tckd > 0 and nckd > 0
    assert decoupled_kd(s, t, 4.0).item() == pytest.approx(tckd + 8 * nckd, rel=1e-5)


def test_dkd_is_zero_for_identical_logits_and_has_finite_gradients():
    x = torch.randn(4, 5)
    assert decoupled_kd(x, x.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    # Very confident logits: p_t rounds to 1 in float32, 1 - p_t is still finite.
    student = (torch.randn(4, 5) * 50).requires_grad_()
    teacher = torch.randn(4, 5) * 50
    loss = decoupled_kd(student, teacher, 1.0, labels=torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_dkd_refuses_float_targets():
    with pytest.raises(ValueError, match="class labels"):
        decoupled_kd(torch.randn(2, 3), torch.randn(2, 3), 4.0, labels=torch.randn(2))


# ------------------------------------------------------------------------------ dist
def _pearson(a: list[float], b: list[float]) -> float:
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    da, db = [v - mean_a for v in a], [v - mean_b for v in b]
    cov = sum(x * y for x, y in zip(da, db, strict=True))
    return cov / math.sqrt(sum(x * x for x in da) * sum(y * y for y in db))


DIST_S = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0], [0.3, 0.1, -0.4]]
DIST_T = [[3.0, 0.0, 1.0], [1.0, 0.5, -0.5], [-1.0, 2.0, 0.0]]


def test_dist_matches_hand_computation():
    temp, beta, gamma = 2.0, 1.0, 2.0
    p_s = [_softmax(row, temp) for row in DIST_S]
    p_t = [_softmax(row, temp) for row in DIST_T]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(p_s, p_t, strict=True)) / len(p_s)
    cols_s, cols_t = list(zip(*p_s, strict=True)), list(zip(*p_t, strict=True))
    intra = 1 - sum(_pearson(a, b) for a, b in zip(cols_s, cols_t, strict=True)) / 3
    # numpy's correlation agrees with the one written out above.
    assert _pearson(p_s[0], p_t[0]) == pytest.approx(np.corrcoef(p_s[0], p_t[0])[0, 1])
    expected = (beta * inter + gamma * intra) * temp**2
    got = dist_relation(torch.tensor(DIST_S), torch.tensor(DIST_T), temp, beta=beta, gamma=gamma)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dist_is_zero_for_identical_logits_and_ignores_a_per_row_shift():
    x = torch.randn(6, 5)
    assert dist_relation(x, x.clone(), 1.0).item() == pytest.approx(0.0, abs=1e-5)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    base = dist_relation(s, t, 4.0).item()
    assert base > 0
    shifted = dist_relation(s + torch.randn(6, 1) * 10, t + torch.randn(6, 1) * 10, 4.0)
    assert shifted.item() == pytest.approx(base, rel=1e-4)


def test_dist_has_finite_gradients_without_variance():
    # A batch of one has no variance across the batch (intra) and a uniform student row
    # none across classes (inter): the eps keeps both finite.
    for student, teacher in (
        (torch.randn(1, 4), torch.randn(1, 4)),
        (torch.zeros(3, 4), torch.randn(3, 4)),
        (torch.randn(3, 4), torch.randn(3, 4)),
    ):
        student.requires_grad_()
        loss = dist_relation(student, teacher, 4.0)
        loss.backward()
        assert torch.isfinite(loss)
        assert student.grad is not None and torch.isfinite(student.grad).all()


# ---------------------------------------------------------------------- registry, objective
def test_dkd_and_dist_dispatch_with_the_spec_fields():
    s, t = torch.tensor(DKD_S), torch.tensor(DKD_T)
    spec = DistillLossSpec(type="dkd", temperature=2.0, dkd_alpha=0.5, dkd_beta=2.0)
    labels = torch.tensor([2, 1])
    dkd = get_loss("dkd")
    assert dkd.logits(s, t, spec, labels=labels).item() == pytest.approx(
        decoupled_kd(s, t, 2.0, alpha=0.5, beta=2.0, labels=labels).item()
    )
    assert dkd.logits(s, t, spec).item() == pytest.approx(
        decoupled_kd(s, t, 2.0, alpha=0.5, beta=2.0).item()
    )
    spec = DistillLossSpec(type="dist", temperature=3.0, dist_beta=2.0, dist_gamma=0.5)
    assert get_loss("dist").logits(s, t, spec, labels=labels).item() == pytest.approx(
        dist_relation(s, t, 3.0, beta=2.0, gamma=0.5).item()
    )
    # The older terms take (and ignore) labels too.
    for name in ("mse", "kl", "hint"):
        loss = get_loss(name)
        assert loss.logits(s, t, spec, labels=labels).item() == pytest.approx(
            loss.logits(s, t, spec).item()
        )
    defaults = DistillLossSpec()
    assert (defaults.dkd_alpha, defaults.dkd_beta) == (1.0, 8.0)
    assert (defaults.dist_beta, defaults.dist_gamma) == (1.0, 1.0)
    assert not get_loss("dkd").features and not get_loss("dkd").for_regression
    assert not get_loss("dist").features and not get_loss("dist").for_regression


@pytest.mark.parametrize("loss_type", ["dkd", "dist"])
def test_distill_objective_runs_the_new_losses_with_and_without_labels(loss_type):
    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    x, idx = torch.randn(5, 4), torch.arange(5)
    with torch.no_grad():
        # Labels that differ from the teacher's top class on every sample.
        y = (teacher(x).argmax(dim=1) + 1) % 3
    spec = DistillLossSpec(type=loss_type, alpha=1.0)

    def run(use_labels: bool, labels: torch.Tensor | None) -> float:
        student.zero_grad()
        objective = DistillObjective(teacher=teacher, loss=spec, use_labels=use_labels, cache=None)
        loss, logits = objective(student, x, labels, idx)
        loss.backward()
        assert logits.shape == (5, 3) and torch.isfinite(loss)
        assert student.weight.grad is not None and torch.isfinite(student.weight.grad).all()
        return loss.item()

    labelled = run(True, y)
    unlabelled = run(True, None)
    # Labels that are not the teacher's classes are not passed on.
    assert run(False, y) == pytest.approx(unlabelled)
    with torch.no_grad():
        s_logits, t_logits = student(x), teacher(x)
    expected = get_loss(loss_type).logits(s_logits, t_logits, spec, labels=y).item()
    assert labelled == pytest.approx(expected, rel=1e-5)
    if loss_type == "dkd":
        assert labelled != pytest.approx(unlabelled, rel=1e-3)
    else:
        assert labelled == pytest.approx(unlabelled, rel=1e-6)
    # With alpha < 1 and labels, the hard-label cross-entropy is mixed in.
    mixed = DistillObjective(
        teacher=teacher,
        loss=DistillLossSpec(type=loss_type, alpha=0.5),
        use_labels=True,
        cache=None,
    )
    loss, _ = mixed(student, x, y, idx)
    ce = nn.functional.cross_entropy(s_logits, y).item()
    assert loss.item() == pytest.approx(0.5 * expected + 0.5 * ce, rel=1e-5)
