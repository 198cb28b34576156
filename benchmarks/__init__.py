"""Benchmarks: each script prints its figures against a named baseline measured in the same run."""

import os
import sys


def reference_path() -> None:
    """Puts tests/ first on sys.path so the PyTorch reference assemblies the tests check import by
    their bare names (as in the tests); an installed package called `tests` (laion_clap ships
    one) would otherwise shadow `tests.*` imports."""
    tests_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
