# The publish benchmark's incumbents (`python -m bench publish`: Django
# Channels' channels_redis and python-socketio's AsyncRedisManager) run on a
# redis-server the bench starts itself, on 127.0.0.1 with a random port and
# no persistence. `make bench` installs Debian's redis-server when it is
# missing; `make redis` does just that, as mk/nats.mk does for nats-server
# (non-interactive apt-get, `apt-get update` once if the install fails; root
# or sudo without a password).

REDIS_SERVER   := redis-server
REDIS_DEBS     := redis-server
APT_GET        ?= DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0
SUDO           ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
REDIS_FIND     := PATH="$$PATH:/usr/sbin:/usr/local/sbin" command -v $(REDIS_SERVER) >/dev/null 2>&1

.PHONY: redis

redis:
	@if $(REDIS_FIND); then \
	  exit 0; \
	fi; \
	echo "redis: installing $(REDIS_DEBS) (apt-get)"; \
	if ! $(SUDO) env $(APT_GET) install --no-install-recommends $(REDIS_DEBS) >/tmp/wsrelay-apt-redis.log 2>&1; then \
	  echo "redis: install failed without fresh package lists; running apt-get update"; \
	  $(SUDO) env $(APT_GET) update >>/tmp/wsrelay-apt-redis.log 2>&1 \
	    && $(SUDO) env $(APT_GET) install --no-install-recommends $(REDIS_DEBS) >>/tmp/wsrelay-apt-redis.log 2>&1 \
	    || { echo "redis: apt-get failed; last lines of /tmp/wsrelay-apt-redis.log:" >&2; \
	         tail -n 30 /tmp/wsrelay-apt-redis.log >&2; exit 1; }; \
	fi; \
	$(REDIS_FIND) \
	  || { echo "redis: $(REDIS_SERVER) still missing after apt-get" >&2; exit 1; }
