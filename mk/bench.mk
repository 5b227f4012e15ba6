# Load benchmarks: wsrelay against bare picows, websockets, aiohttp and Node's
# ws, one server process at a time (bench/, docs/performance.md).
#
#   make bench              the load scenarios (this file adds bench-load to the
#                           top Makefile's `bench`, whose own recipe runs the
#                           process-runtime microbenchmark, bench/runtime.py)
#   make bench-load         echo, broadcast, connections, churn at full size
#   make bench-quick        the same, small and short: does everything work?
#   make bench-echo-inflight       echo, 50 conns x 4 in flight x 256 B binary, 3 runs
#   make bench-echo | bench-broadcast | bench-connections | bench-churn
#   make bench-setup        npm ci of the Node peer (bench/node, lock file committed)
#   make bench-cluster      WSRELAY_WORKERS against the single process, same run:
#                           100k idle connections over 6 workers, echo and
#                           handshakes with 2 workers, the node-to-node hop
#                           (broadcast over workers: recorded as pending until
#                           global names are wired); 3 runs each (medians;
#                           the hop: the best of 3)
#   make bench-cluster-quick  the same, small and short
#   make bench-publish      a publisher process to rooms of 1k and 15k subscribers:
#                           wsrelay channels against Django Channels and
#                           python-socketio (their packages: requirements-bench.txt;
#                           redis-server: mk/redis.mk), Group.send, 2 workers, the API
#   make bench-publish-quick  the same, small and short
#   make bench-history      what history costs: publications into 1 and 1,000 channels
#                           with history and without, in memory and in JetStream
#                           (2 workers); 1,000 clients recovering 300 missed
#                           publications against Socket.IO 4.8's connection state
#                           recovery (bench/node); idle RSS per connection
#   make bench-history-quick  the same, small and short
#
# BENCH_ARGS is passed to `python -m bench`, e.g.
#   make bench-load BENCH_ARGS="--repeat 3 --servers wsrelay,picows,websockets"
# Results go to bench/results/<scenario>-<time>/ (results.json, results.md, PNGs).

BENCH_ARGS   ?=
BENCH_NODE   := bench/node
BENCH_NODE_STAMP := $(BENCH_NODE)/node_modules/.package-lock.json

.PHONY: bench-load bench-quick bench-setup bench-echo-inflight bench-echo bench-broadcast bench-connections bench-churn \
        bench-cluster bench-cluster-quick bench-publish bench-publish-quick bench-history bench-history-quick

bench: bench-load bench-publish bench-history

$(BENCH_NODE_STAMP): $(BENCH_NODE)/package.json $(BENCH_NODE)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd $(BENCH_NODE) && npm ci --no-audit --no-fund --loglevel=error; \
	else \
	  echo "bench: npm is not installed: the node peer will be skipped"; \
	fi

bench-setup: $(BENCH_NODE_STAMP)

bench-load: dev bench-setup
	$(BIN)/python -m bench all $(BENCH_ARGS)

bench-quick: dev bench-setup
	$(BIN)/python -m bench all --quick $(BENCH_ARGS)

bench-echo-inflight: dev
	$(BIN)/python -m bench echo --conns 50 --inflight 4 --size 256 --binary \
	  --servers wsrelay,picows,websockets --repeat 3 $(BENCH_ARGS)

bench-echo bench-broadcast bench-connections bench-churn: bench-%: dev bench-setup
	$(BIN)/python -m bench $* $(BENCH_ARGS)

# nats (mk/nats.mk): the private broker of WSRELAY_WORKERS is Debian's nats-server.
bench-cluster: dev nats
	$(BIN)/python -m bench cluster --repeat 3 $(BENCH_ARGS)

bench-cluster-quick: dev nats
	$(BIN)/python -m bench cluster --quick $(BENCH_ARGS)

# The peers' packages ($(VENV)/.deps-bench, Makefile) and redis-server (mk/redis.mk);
# nats: the wsrelay-w2 row runs WSRELAY_WORKERS=2.
bench-publish: dev $(VENV)/.deps-bench redis nats
	$(BIN)/python -m bench publish $(BENCH_ARGS)

bench-publish-quick: dev $(VENV)/.deps-bench redis nats
	$(BIN)/python -m bench publish --quick $(BENCH_ARGS)

# nats: the JetStream rows run WSRELAY_WORKERS=2; bench-setup: Socket.IO on Node.
bench-history: dev bench-setup nats
	$(BIN)/python -m bench history $(BENCH_ARGS)

bench-history-quick: dev bench-setup nats
	$(BIN)/python -m bench history --quick $(BENCH_ARGS)
