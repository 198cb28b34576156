"""Test and benchmark support: PyTorch reference assemblies and tiny fixtures.

Nothing in the library imports this package; the tests and benchmarks/ do.
"""
