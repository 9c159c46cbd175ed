"""Step 4 of the method: pick the student's size from the target's needs.

Pure functions of a candidate's figures (params, size, latency, accuracy) and the
constraints, so that the choice is tested on its own (tests/worker/test_size_search.py).
"""

from __future__ import annotations

from typing import Any

from app.schemas.job_spec import Constraints

# A figure and the constraint that bounds it.
BUDGETS = (
    ("params", "max_params"),
    ("size_bytes", "max_size_bytes"),
    ("latency_ms", "max_latency_ms"),
)


def has_budget(constraints: Constraints) -> bool:
    """Whether any constraint is a size or latency budget (checkable before training)."""
    return any(getattr(constraints, name) is not None for _, name in BUDGETS)


def budget_violation(figures: dict[str, Any], constraints: Constraints) -> str | None:
    """Why a candidate breaks a size or latency budget, or None. Params, size and latency
    do not depend on the weights, so a candidate is checked untrained and skipped."""
    for key, name in BUDGETS:
        limit = getattr(constraints, name)
        if limit is not None and figures[key] > limit:
            return f"{key} {figures[key]} > {name} {limit}"
    return None


def choose_candidate(
    entries: list[dict[str, Any]], constraints: Constraints | None
) -> tuple[int | None, str, bool]:
    """(index of the served candidate or None, why, whether the constraints were met).

    With an accuracy floor: the smallest (fewest params) candidate that reaches it; without
    one: the most accurate. When none reaches the floor, the most accurate is served and
    the reason says the floor was missed. Entries carry `index`, `skipped` (None when
    trained), `params`, `accuracy` and, for regression, `mse`; a candidate under the floor
    gets its `skipped` reason here.
    """
    trained = [e for e in entries if e["skipped"] is None]
    if not trained:
        return None, "every candidate broke a size or latency budget", False
    floor = constraints.min_accuracy if constraints is not None else None
    if floor is not None:
        passing = [e for e in trained if (e["accuracy"] or 0.0) >= floor]
        for e in trained:
            if e not in passing:
                e["skipped"] = f"accuracy {e['accuracy']} < min_accuracy {floor}"
        if passing:
            best = min(passing, key=lambda e: (e["params"], -(e["accuracy"] or 0.0)))
            return best["index"], f"the smallest candidate with accuracy >= {floor}", True
        best = max(trained, key=lambda e: e["accuracy"] or 0.0)
        # Served after all: it is the one candidate not skipped.
        best["skipped"] = None
        return (
            best["index"],
            f"no candidate reached min_accuracy {floor}; serving the most accurate",
            False,
        )
    # Regression targets have no accuracy: the lowest squared error is the best.
    best = max(
        trained,
        key=lambda e: (e["accuracy"] or 0.0, -(e.get("mse") or 0.0), -e["params"]),
    )
    return best["index"], "the most accurate candidate within the budgets", True
