"""Step 4 of the method on its own: budgets checked before training, and the choice of
the served student from the trained candidates' figures."""

from __future__ import annotations

from typing import Any

from app.schemas.model_spec import Constraints
from worker.size_search import budget_violation, choose_candidate, has_budget


def entry(i: int, params: int, accuracy: float | None, **extra: Any) -> dict[str, Any]:
    return {"index": i, "params": params, "accuracy": accuracy, "skipped": None, **extra}


FIGURES = {"params": 5000, "size_bytes": 20_000, "latency_ms": 0.4}


def test_budgets_are_checked_figure_by_figure():
    assert not has_budget(Constraints(min_accuracy=0.9))
    assert has_budget(Constraints(max_latency_ms=1.0))
    assert budget_violation(FIGURES, Constraints(max_params=5000, max_latency_ms=0.5)) is None
    assert (
        budget_violation(FIGURES, Constraints(max_params=4999)) == "params 5000 > max_params 4999"
    )
    assert (
        budget_violation(FIGURES, Constraints(max_size_bytes=10_000))
        == "size_bytes 20000 > max_size_bytes 10000"
    )
    assert budget_violation(FIGURES, Constraints(max_latency_ms=0.1)) == (
        "latency_ms 0.4 > max_latency_ms 0.1"
    )


def test_with_a_floor_the_smallest_candidate_that_reaches_it_is_served():
    entries = [entry(0, 70_000, 0.97), entry(1, 18_000, 0.95), entry(2, 4_700, 0.88)]
    chosen, reason, met = choose_candidate(entries, Constraints(min_accuracy=0.9))
    assert (chosen, met) == (1, True) and "smallest" in reason
    assert entries[2]["skipped"] == "accuracy 0.88 < min_accuracy 0.9"
    assert entries[0]["skipped"] is None


def test_a_floor_nobody_reaches_serves_the_most_accurate_and_says_so():
    entries = [entry(0, 70_000, 0.80), entry(1, 18_000, 0.85)]
    chosen, reason, met = choose_candidate(entries, Constraints(min_accuracy=0.9))
    assert (chosen, met) == (1, False) and "no candidate reached" in reason
    assert entries[1]["skipped"] is None and entries[0]["skipped"].startswith("accuracy 0.8")


def test_without_a_floor_the_most_accurate_is_served_and_ties_go_to_the_smaller():
    entries = [entry(0, 70_000, 0.95), entry(1, 18_000, 0.95), entry(2, 4_700, 0.90)]
    assert choose_candidate(entries, None)[0] == 1


def test_regression_candidates_are_ranked_by_squared_error():
    entries = [entry(0, 100, None, mse=0.3), entry(1, 200, None, mse=0.1)]
    assert choose_candidate(entries, Constraints())[0] == 1


def test_candidates_skipped_for_budgets_are_never_served():
    skipped = {**entry(0, 70_000, None), "skipped": "params 70000 > max_params 50000"}
    assert choose_candidate([skipped, entry(1, 18_000, 0.9)], Constraints())[0] == 1
    chosen, reason, met = choose_candidate([skipped], Constraints(max_params=50_000))
    assert chosen is None and not met and "budget" in reason
