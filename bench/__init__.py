"""Benchmarks of wsrelay: ``python -m bench SCENARIO`` (see docs/performance.md).

Load scenarios (``echo``, ``broadcast``, ``connections``, ``churn``) run the
load generator (bench.loadgen) against wsrelay and its peers (bench.servers),
one server process at a time; ``cluster`` runs wsrelay with WSRELAY_WORKERS
against the single process; ``publish`` has a publisher process publish to
a room, wsrelay channels against Django Channels and python-socketio.
``runtime`` is the process-runtime microbenchmark (bench.runtime).

The modules, in the order they import each other:

- shared pieces: bench.common (log, counts, the command line's number lists),
  bench.procfs (every read of /proc), bench.processes (work run inside
  wsrelay processes), bench.servers (the servers under test),
  bench.loadgen (the load generator);
- scenarios: bench.scenarios (the load scenarios' ``Runner``), bench.cluster
  (the cluster scenarios, on top of it), bench.publish (the publish
  scenario, its servers and its load generator worker; bench.publisher is
  the driver of its publisher processes), bench.report (results.md, plots,
  targets);
- the driver: bench.__main__ (both command lines, results.json).

bench.runtime, bench.cluster_transport, bench.cluster_hop, bench.cluster_codec
and bench.deflate are programs of their own (``python -m bench.NAME``).
"""
