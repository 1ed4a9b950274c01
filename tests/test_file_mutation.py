"""The file-mutation suite (tests/file_mutation_cases.py) in a child pytest: a signal (SIGBUS, SIGSEGV)
while loading or searching a mutated file fails here instead of ending the test run."""

from filecraft import run_child_pytest


def test_file_mutation_suite_in_a_child_process():
    run_child_pytest("file_mutation_cases.py")
