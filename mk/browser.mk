# Browser tests (tests/test_demo_browser.py) drive Debian's headless Chromium
# through selenium and /usr/bin/chromedriver. `make test` installs both before
# pytest runs, only when one of them is missing; `make browser` does just that.
#
# apt-get runs non-interactively; when the install fails (a fresh machine
# whose package lists are empty or stale) it runs `apt-get update` once and
# tries again. Needs root, or sudo without a password.

CHROMIUM       := /usr/bin/chromium
CHROMEDRIVER   := /usr/bin/chromedriver
BROWSER_DEBS   := chromium chromium-driver
APT_GET        := DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0
SUDO           := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

.PHONY: browser

browser:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then \
	  exit 0; \
	fi; \
	echo "browser: installing $(BROWSER_DEBS) (apt-get)"; \
	if ! $(SUDO) env $(APT_GET) install --no-install-recommends $(BROWSER_DEBS) >/tmp/wsrelay-apt.log 2>&1; then \
	  echo "browser: install failed without fresh package lists; running apt-get update"; \
	  $(SUDO) env $(APT_GET) update >>/tmp/wsrelay-apt.log 2>&1 \
	    && $(SUDO) env $(APT_GET) install --no-install-recommends $(BROWSER_DEBS) >>/tmp/wsrelay-apt.log 2>&1 \
	    || { echo "browser: apt-get failed; last lines of /tmp/wsrelay-apt.log:" >&2; \
	         tail -n 30 /tmp/wsrelay-apt.log >&2; exit 1; }; \
	fi; \
	test -x $(CHROMIUM) && test -x $(CHROMEDRIVER) \
	  || { echo "browser: $(CHROMIUM) or $(CHROMEDRIVER) still missing after apt-get" >&2; exit 1; }

TEST_PREREQS += browser
