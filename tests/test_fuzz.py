"""The fuzz suite (tests/fuzz_cases.py) in a child pytest: a crash of the process (a signal) fails here
instead of ending the test run. SQRET_FUZZ_EXAMPLES (examples per change, default 12) and
SQRET_FUZZ_RANDOM=1 (fresh random examples instead of the fixed ones) tune it."""

from filecraft import run_child_pytest


def test_fuzz_suite_in_a_child_process():
    run_child_pytest("fuzz_cases.py")
