"""How big the reliability scenarios run: their short form in the suite, their full size on demand.

The suite must stay under ten minutes on two cores, and the scenarios that push a thousand cases
through killed processes prove the same guarantees at a few hundred (the kills land mid-stream
either way); the property tests that write to PostgreSQL run fewer examples. `infra/onething.sh
test-long` (ONETHING_TEST_SCALE=long) runs them at their full size (README, "Tests"); one file:

    ONETHING_TEST_SCALE=long infra/onething.sh test tests/test_cascade_burst.py
"""
from __future__ import annotations

import os

LONG = os.environ.get("ONETHING_TEST_SCALE", "short") == "long"


def scaled(full: int, short: int) -> int:
    """`full` with ONETHING_TEST_SCALE=long, else `short`."""
    return full if LONG else short
