"""Benchmark suites behind `visionlab bench`; each writes benchmarks/<suite>.md."""
