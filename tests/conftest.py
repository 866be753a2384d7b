"""Shared test configuration.

Hypothesis runs deterministically by default (profile ``ci``: derandomized, no
example database), so a failure reproduces on every machine.  For a randomized
run ``HYPOTHESIS_PROFILE=explore python -m pytest ...`` (a new seed each run).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile(
    "explore", derandomize=False, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
