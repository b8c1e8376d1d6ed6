"""The tiers' contract (tests/conftest.py): a unit test that starts a process fails, naming where it belongs."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_a_unit_test_that_starts_a_process_fails():
    with pytest.raises(AssertionError, match=r"a unit test started a process .*move it to tests/integration"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
