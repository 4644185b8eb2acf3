"""Labs 1.7 and 1.8 run once per test session (tiny preset), shared by test_lab17 and test_lab18.

Run together, as `make demo` runs them, so lab 1.8 reuses lab 1.7's SFT and DPO stages.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from trainlab.labs import run_labs
from trainlab.results import SuiteResult


@functools.lru_cache(maxsize=1)
def align_suite() -> tuple[SuiteResult, Path]:
    out = Path(tempfile.mkdtemp(prefix="trainlab-align-suite-"))
    suite = run_labs(["lab17", "lab18"], out_dir=out, preset="tiny", device="cpu", seed=0, quiet=True)
    return suite, out
