"""Headless Chromium through selenium, for the browser tests
(tests/test_demo_browser.py, tests/test_wsrelay_js.py): the one driver
set-up of the suite, and a web server for pages of another origin.

Needs Debian's chromium and chromium-driver (mk/browser.mk installs them
before `make test` runs pytest).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
from typing import Iterator

import psutil
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The machine has 2 shared cores: generous limits, strict conditions.
DOM_TIMEOUT = 45.0
STOP_TIMEOUT = 30.0


def require_browser() -> None:
    # `make test` installs them first (mk/browser.mk); without them a browser
    # test cannot say anything, and says so rather than passing quietly.
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing; `make browser` installs them")


@contextlib.contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile. Every process it started
    (chromedriver, chromium and its helpers) is gone after the block."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    profile = tempfile.mkdtemp(prefix="wsrelay-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        # Without these, Chromium's own background connections are refused by
        # this machine's closed network, and it stalls on them.
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--no-proxy-server",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(DOM_TIMEOUT)
    try:
        yield driver
    finally:
        # Taken while chromedriver is alive: once it exits, the browser's
        # processes would be re-parented and no longer be our children.
        started = [p for p in me.children(recursive=True) if p.pid not in before]
        try:
            driver.quit()
        finally:
            _gone, alive = psutil.wait_procs(started, timeout=STOP_TIMEOUT)
            for proc in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            psutil.wait_procs(alive, timeout=STOP_TIMEOUT)
            shutil.rmtree(profile, ignore_errors=True)
            assert not alive, f"browser processes outlived driver.quit(): {alive}"


class _Page(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test's output is the test's, not a log of its page server


@contextlib.contextmanager
def page_server(html: str) -> Iterator[str]:
    """``html`` served at every path of another origin (a port of its own):
    the origin's URL."""
    handler = type("Page", (_Page,), {"body": html.encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT)
