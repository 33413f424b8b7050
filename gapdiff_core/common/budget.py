"""The budget: an L∞ bound on the change of every pixel, in grey levels on the 0-255 scale (8 is the official
noise_budget=16 on [-1, 1]). One rule everywhere, for every command, the service, the UI, the nodes and every
protection method: a finite number from 1 to 255. Below 1 no pixel of an 8-bit photo can change."""
from __future__ import annotations

import math

BUDGET_MIN, BUDGET_MAX = 1.0, 255.0
DEFAULT_BUDGET = 8.0
BUDGET_RULE = f"{BUDGET_MIN:g}-{BUDGET_MAX:g} grey levels on the 0-255 scale (below 1 no pixel of an 8-bit photo " \
              "can change)"


class BudgetError(ValueError):
    """A budget outside the rule; the message names what was given and the allowed range."""


def check_budget(value, what: str = "budget") -> float:
    """`value` as a float if it is a finite number within 1-255 grey levels; BudgetError naming `what` otherwise."""
    try:
        budget = float(value)
    except (TypeError, ValueError):
        raise BudgetError(f"{what} must be a number of grey levels, not {value!r}") from None
    if not math.isfinite(budget) or not BUDGET_MIN <= budget <= BUDGET_MAX:
        raise BudgetError(f"{what} must be {BUDGET_RULE}, not {value!r}")
    return budget
