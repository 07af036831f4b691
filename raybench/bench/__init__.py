"""Benchmark scripts (not tests): run by hand, print figures."""
