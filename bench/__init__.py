"""Benchmarks of wsrelay: ``python -m bench SCENARIO`` (see docs/performance.md).

Load scenarios (``echo``, ``broadcast``, ``connections``, ``churn``) run the
load generator (bench.loadgen) against wsrelay and its peers (bench.servers),
one server process at a time. ``runtime`` is the process-runtime
microbenchmark (bench.runtime).
"""
