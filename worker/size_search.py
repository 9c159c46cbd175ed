"""Step 4 of the method: pick the student's size from the target's needs.

Pure functions of a candidate's figures (params, size, latency, accuracy) and the
constraints, so that the choice is tested on its own (tests/worker/test_size_search.py).

Precision is one more dimension when the spec asks for int8: each trained candidate's
int8 variant is an entry too (`precision` "int8", `candidate` naming its network), with
the int8 model's size, batch-1 latency and accuracy. It competes only where serving
would take it (within `int8_max_drop` of its fp32 sibling and faster at batch 32), and
then ranks as that sibling does (the drop is one the user allowed) but ahead of it on a
tie: so a width-0.5 int8 can win over a width-0.25 fp32 where the width-0.5 fp32 breaks
a latency or size budget.
"""

from __future__ import annotations

from typing import Any

from app.schemas.model_spec import Constraints

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


def int8_entry(
    fp32: dict[str, Any], block: dict[str, Any], *, index: int, constraints: Constraints
) -> dict[str, Any]:
    """The int8 variant of the trained candidate `fp32` (its entry) as an entry of its
    own, from the quantization's `block` (model.json `int8`); skipped with the reason
    when serving would not take it or it breaks a budget."""
    entry: dict[str, Any] = {
        "index": index,
        "candidate": fp32.get("candidate"),
        "precision": "int8",
        "model": fp32.get("model"),
        "arch": fp32.get("arch"),
        "width": fp32.get("width"),
        "params": fp32["params"],
        "size_bytes": block.get("size_bytes"),
        "latency_ms": block.get("batch_1_ms"),
        "accuracy": block.get("accuracy"),
        "skipped": None,
    }
    if block.get("error"):
        entry["skipped"] = f"int8: {block['error']}"
    elif not block.get("served"):
        entry["skipped"] = f"int8 not servable: {block.get('reason')}"
    else:
        entry["skipped"] = budget_violation(entry, constraints)
    if entry["skipped"] is None:
        entry["rank_accuracy"] = fp32.get("accuracy")
    return entry


def int8_choice(
    entries: list[dict[str, Any]], chosen: int, block: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """After a search with int8 variants: the chosen network's fp32 entry, and its int8
    `block` with `served` as the search decided (the chosen entry's precision). Where
    that differs from the serve rule's verdict, `reason` says why."""
    entry = entries[chosen]
    same = [e for e in entries if e.get("candidate") == entry.get("candidate")]
    fp32 = next(e["index"] for e in same if e.get("precision") == "fp32")
    if entry.get("precision") == "int8":
        return fp32, {**block, "served": True}
    if not block.get("served"):
        return fp32, block  # the rule said no already, and why
    sibling = next((e for e in same if e.get("precision") == "int8"), {})
    why = sibling.get("skipped") or "its fp32 variant ranked first"
    return fp32, {**block, "served": False, "reason": f"the size search served fp32: {why}"}


def _precision_rank(entry: dict[str, Any]) -> int:
    """0 for an int8 variant, 1 otherwise: an int8 entry still competing is one serving
    would take over its fp32 sibling, so it goes first on a tie."""
    return 0 if entry.get("precision") == "int8" else 1


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
            best = min(
                passing, key=lambda e: (e["params"], _precision_rank(e), -(e["accuracy"] or 0.0))
            )
            return best["index"], f"the smallest candidate with accuracy >= {floor}", True
        best = max(trained, key=lambda e: e["accuracy"] or 0.0)
        # Served after all: it is the one candidate not skipped.
        best["skipped"] = None
        return (
            best["index"],
            f"no candidate reached min_accuracy {floor}; serving the most accurate",
            False,
        )
    # Regression targets have no accuracy: the lowest squared error is the best. An
    # int8 variant ranks by its fp32 sibling's accuracy (`rank_accuracy`, int8_entry).
    best = max(
        trained,
        key=lambda e: (
            e.get("rank_accuracy", e["accuracy"]) or 0.0,
            -(e.get("mse") or 0.0),
            -e["params"],
            -_precision_rank(e),
        ),
    )
    return best["index"], "the most accurate candidate within the budgets", True


# What an int8 variant shows of itself inside its candidate's entry.
INT8_FIELDS = ("size_bytes", "latency_ms", "accuracy", "skipped")


def report_candidates(
    entries: list[dict[str, Any]], chosen: int
) -> tuple[list[dict[str, Any]], int, str]:
    """The search's entries in the report's shape (API.md: one entry per candidate,
    `chosen` its index): each int8 variant nested under its candidate's `int8`; and the
    chosen candidate's index and precision ("fp32" or "int8")."""
    out: list[dict[str, Any]] = []
    by_candidate: dict[int, dict[str, Any]] = {}
    for entry in entries:
        if entry.get("precision") == "int8":
            sibling = by_candidate[entry["candidate"]]
            sibling["int8"] = {k: entry.get(k) for k in INT8_FIELDS}
            continue
        hidden = ("candidate", "precision", "rank_accuracy")
        shown = {k: v for k, v in entry.items() if k not in hidden}
        number = entry.get("candidate", len(out))
        shown["index"] = number
        by_candidate[number] = shown
        out.append(shown)
    picked = entries[chosen]
    return out, picked.get("candidate", chosen), picked.get("precision", "fp32")
