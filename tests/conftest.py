"""Session-wide test settings.

Hypothesis: no per-example deadline (CI machines are small and shared, a slow example is
not a failure), and under CI (`M2MSEC_CI=1`, set by .ci/run) a derandomized run, so that
a CI result can be reproduced exactly.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("m2msec", deadline=None)
settings.register_profile("m2msec-ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("m2msec-ci" if os.environ.get("M2MSEC_CI") == "1" else "m2msec")
