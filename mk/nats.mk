# The cluster tests (tests/test_cluster_*.py) start their own nats-server, on
# 127.0.0.1 with a random port and token. `make test` installs Debian's
# nats-server before pytest runs, only when it is missing; `make nats` does
# just that.
#
# apt-get runs non-interactively; when the install fails (a fresh machine
# whose package lists are empty or stale) it runs `apt-get update` once and
# tries again. Needs root, or sudo without a password. APT_GET and SUDO come
# from mk/browser.mk when it is included; they are set here too, so this file
# stands on its own.

NATS_SERVER    := nats-server
NATS_DEBS      := nats-server
APT_GET        ?= DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0
SUDO           ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
# Debian puts it in /usr/sbin, which a user's PATH may lack.
NATS_FIND      := PATH="$$PATH:/usr/sbin:/usr/local/sbin" command -v $(NATS_SERVER) >/dev/null 2>&1

.PHONY: nats

nats:
	@if $(NATS_FIND); then \
	  exit 0; \
	fi; \
	echo "nats: installing $(NATS_DEBS) (apt-get)"; \
	if ! $(SUDO) env $(APT_GET) install --no-install-recommends $(NATS_DEBS) >/tmp/wsrelay-apt-nats.log 2>&1; then \
	  echo "nats: install failed without fresh package lists; running apt-get update"; \
	  $(SUDO) env $(APT_GET) update >>/tmp/wsrelay-apt-nats.log 2>&1 \
	    && $(SUDO) env $(APT_GET) install --no-install-recommends $(NATS_DEBS) >>/tmp/wsrelay-apt-nats.log 2>&1 \
	    || { echo "nats: apt-get failed; last lines of /tmp/wsrelay-apt-nats.log:" >&2; \
	         tail -n 30 /tmp/wsrelay-apt-nats.log >&2; exit 1; }; \
	fi; \
	$(NATS_FIND) \
	  || { echo "nats: $(NATS_SERVER) still missing after apt-get" >&2; exit 1; }

TEST_PREREQS += nats
