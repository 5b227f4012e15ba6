"""The chat demo in a real browser: `wsrelay serve examples/chat/app.yaml`,
as `make run` starts it, driven by headless Chromium through selenium.

Needs Debian's chromium and chromium-driver (mk/browser.mk installs them
before `make test` runs pytest). Every wait is a WebDriverWait on a DOM
condition or a wait for an event of the server process; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from typing import Callable, Iterator

import psutil
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.harness import REPO, WSRELAY, Metrics, ServerProcess

APP = "examples/chat/app.yaml"
PAGE = REPO / "examples" / "chat" / "index.html"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The machine has 2 shared cores: generous limits, strict conditions.
DOM_TIMEOUT = 45.0
STOP_TIMEOUT = 30.0

@pytest.fixture(autouse=True)
def _browser_installed() -> None:
    # `make test` installs them first (mk/browser.mk); without them this test
    # cannot say anything, and says so rather than passing quietly.
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing; `make browser` installs them")


# -- the demo server, as `make run` starts it --------------------------------------------


@pytest.fixture
def demo() -> Iterator[ServerProcess]:
    """`.venv/bin/wsrelay serve examples/chat/app.yaml --addr 127.0.0.1:0`,
    with compression on as `make run` has it."""
    env = {"WSRELAY_LOG_LEVEL": "INFO", "WSRELAY_COMPRESSION": "on"}
    with ServerProcess([WSRELAY, "serve", APP, "--addr", "127.0.0.1:0"], env=env) as server:
        status, body = get(server, "/health")
        assert status == 200 and b'"status":"ok"' in body, (status, body)
        yield server


def get(server: ServerProcess, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=DOM_TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def metrics(server: ServerProcess) -> Metrics:
    status, body = get(server, "/metrics")
    assert status == 200
    return Metrics(body.decode())


# -- the browser ----------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile. Every process it started
    (chromedriver, chromium and its helpers) is gone after the test."""
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


def wait_for(driver: webdriver.Chrome, what: str, condition: Callable[[webdriver.Chrome], object]) -> object:
    try:
        return WebDriverWait(driver, DOM_TIMEOUT).until(condition)
    except TimeoutException:
        raise AssertionError(
            f"timed out waiting for {what}; status={_text(driver, 'status')!r} log={_text(driver, 'log')!r}"
        ) from None


def _text(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def status_is(value: str) -> Callable[[webdriver.Chrome], bool]:
    return lambda d: _text(d, "status") == value


def log_has(line: str) -> Callable[[webdriver.Chrome], bool]:
    return lambda d: line in _text(d, "log").splitlines()


def fill(driver: webdriver.Chrome, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def join(driver: webdriver.Chrome, user: str, room: str) -> None:
    fill(driver, "user", user)
    fill(driver, "room", room)
    driver.find_element(By.ID, "join").click()


# -- the tests ---------------------------------------------------------------------------------


def test_two_tabs_chat_in_the_same_room(demo: ServerProcess, browser: webdriver.Chrome) -> None:
    room = "room_" + uuid.uuid4().hex[:8]
    browser.get(demo.url("/", "http"))
    alice = browser.current_window_handle
    assert browser.title == "wsrelay chat"
    join(browser, "alice", room)
    wait_for(browser, "alice connected", status_is("connected"))
    wait_for(browser, "alice's join", log_has(f"alice joined {room}"))
    # Chromium offered permessage-deflate and the gateway accepted it.
    assert browser.execute_script("return ws.extensions") == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover")

    browser.switch_to.new_window("window")
    bob = browser.current_window_handle
    browser.get(demo.url("/", "http"))
    join(browser, "bob", room)
    wait_for(browser, "bob connected", status_is("connected"))
    wait_for(browser, "bob's join, seen by bob", log_has(f"bob joined {room}"))

    browser.switch_to.window(alice)
    wait_for(browser, "bob's join, seen by alice", log_has(f"bob joined {room}"))
    fill(browser, "text", "hello from alice")
    browser.find_element(By.ID, "send").click()
    wait_for(browser, "alice's own message", log_has("alice: hello from alice"))

    browser.switch_to.window(bob)
    wait_for(browser, "alice's message in bob's tab", log_has("alice: hello from alice"))
    assert _text(browser, "status") == "connected"

    # A message long enough to be compressed both ways: Chromium compresses
    # what it sends, the room's publication goes out compressed (RSV1), and
    # both tabs show it as typed. Long enough too that the envelope's
    # channel name (random, so incompressible) does not decide the count.
    long_text = "a longer message that the browser and the room compress " * 8
    sent_before = metrics(demo)("wsrelay_bytes_out_total")
    fill(browser, "text", long_text)
    browser.find_element(By.ID, "send").click()
    wait_for(browser, "bob's long message", log_has(f"bob: {long_text.strip()}"))
    browser.switch_to.window(alice)
    wait_for(browser, "bob's long message in alice's tab", log_has(f"bob: {long_text.strip()}"))
    # Two deliveries of a JSON event carrying the text: compressed, each is
    # far smaller than the text itself.
    assert metrics(demo)("wsrelay_bytes_out_total") - sent_before < len(long_text)
    browser.switch_to.window(bob)

    # Bob closes his tab: the room tells alice.
    browser.close()
    browser.switch_to.window(alice)
    wait_for(browser, "bob's leave", log_has("bob left"))

    # Alice moves to another room: the old socket's late close event must not
    # overwrite the new socket's status.
    browser.execute_script("window.previousSocket = ws;")
    other_room = room + "_2"
    join(browser, "alice", other_room)
    wait_for(browser, "alice in the other room", log_has(f"alice joined {other_room}"))
    wait_for(browser, "the old socket closed", lambda d: d.execute_script("return previousSocket.readyState") == 3)
    assert _text(browser, "status") == "connected"
    # Whenever they arrive, a replaced socket's events are ignored.
    browser.execute_script(
        "previousSocket.onclose({code: 1006});"
        "previousSocket.onmessage({data: JSON.stringify({channel: arguments[0], event: 'publication',"
        " data: {kind: 'message', user: 'ghost', text: 'stale'}})});",
        f"room:{room}",
    )
    assert _text(browser, "status") == "connected"
    assert "ghost: stale" not in _text(browser, "log")

    assert metrics(demo)("wsrelay_connections_total") == 3
    assert metrics(demo)("wsrelay_handshake_failures_total", reason="origin") == 0
    assert demo.stop() == 0, demo.output()


class _Page(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def foreign_site(gateway_ws_url: str) -> Iterator[str]:
    """A copy of the demo page served from another origin (another port),
    pointing its WebSocket at the gateway through window.WSRELAY_URL."""
    html = PAGE.read_text()
    marker = "<script>"
    assert marker in html
    setting = f"<script>window.WSRELAY_URL = {gateway_ws_url!r};</script>\n"
    handler = type("ForeignPage", (_Page,), {"body": html.replace(marker, setting + marker, 1).encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT)


def test_page_from_another_origin_is_refused(demo: ServerProcess, browser: webdriver.Chrome) -> None:
    def origin_failures() -> float:
        return metrics(demo)("wsrelay_handshake_failures_total", reason="origin")

    with foreign_site(demo.url()) as site:
        browser.get(site + "/")
        assert browser.execute_script("return window.WSRELAY_URL") == demo.url()
        join(browser, "mallory", "lobby")
        wait_for(browser, "the refusal", status_is("refused (1006)"))
        # The socket never opened: no connected status, no event in the log,
        # and the browser's WebSocket is CLOSED.
        assert browser.execute_script("return ws.readyState") == 3
        assert _text(browser, "log") == ""

    # The gateway refused it for its origin, before any handler ran.
    assert origin_failures() == 1
    assert metrics(demo)("wsrelay_connections_total") == 0
    status, body = get(demo, "/health")
    assert status == 200 and b'"processes":1' in body, body  # no room was spawned

    # The same refusal, by hand: a valid upgrade from a foreign Origin gets 403.
    status, body = get(demo, "/ws/chat?room=lobby&user=mallory", {
        "Origin": site,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    })
    assert status == 403, (status, body)
    assert b"not allowed" in body
    assert origin_failures() == 2
    # ...while the same request from the gateway's own origin is upgraded.
    conn = http.client.HTTPConnection(demo.host, demo.port, timeout=DOM_TIMEOUT)
    try:
        conn.request("GET", "/ws/chat?room=lobby&user=alice", headers={
            "Origin": demo.url("", "http"),
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        })
        response = conn.getresponse()
        assert response.status == 101
        assert response.getheader("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    finally:
        conn.close()
    assert origin_failures() == 2
    assert demo.stop() == 0, demo.output()


def test_two_pages_on_different_workers_chat_in_one_room(browser: webdriver.Chrome) -> None:
    """`WSRELAY_WORKERS=2 make run`: the kernel spreads the tabs' sockets over
    two workers; a room is a channel, the same on every worker, so tabs on
    either worker chat in it, each message shown once (docs/guide.md,
    "Channels")."""
    with ServerProcess([WSRELAY, "serve", APP, "--addr", "127.0.0.1:0"],
                       env={"WSRELAY_WORKERS": "2", "WSRELAY_NODE": "web"}) as server:
        room = "room_" + uuid.uuid4().hex[:8]
        browser.get(server.url("/", "http"))
        alice = browser.current_window_handle
        join(browser, "alice", room)
        line = wait_for(browser, "alice's join", joined_line("alice", room))
        alice_node = line.rsplit(" via ", 1)[1]
        # New tabs until one lands on the other worker (each is a new socket;
        # the kernel's choice is a hash of it).
        for attempt in range(20):
            browser.switch_to.new_window("window")
            browser.get(server.url("/", "http"))
            user = f"bob{attempt}"
            join(browser, user, room)
            line = wait_for(browser, f"{user}'s join", joined_line(user, room))
            if not line.endswith(f" via {alice_node}"):
                break
            browser.close()
            browser.switch_to.window(alice)
        else:
            raise AssertionError(f"20 tabs in a row landed on {alice_node}")
        bob = browser.current_window_handle
        fill(browser, "text", f"hello from {user}")
        browser.find_element(By.ID, "send").click()
        browser.switch_to.window(alice)
        wait_for(browser, "bob's message in alice's tab", log_has(f"{user}: hello from {user}"))
        fill(browser, "text", "hello from alice")
        browser.find_element(By.ID, "send").click()
        browser.switch_to.window(bob)
        wait_for(browser, "alice's message in bob's tab", log_has("alice: hello from alice"))
        for tab in (bob, alice):
            browser.switch_to.window(tab)
            lines = _text(browser, "log").splitlines()
            assert lines.count(f"{user}: hello from {user}") == lines.count("alice: hello from alice") == 1, lines
        assert server.stop() == 0


def joined_line(user: str, room: str) -> Callable[[webdriver.Chrome], object]:
    """The log line of ``user`` joining ``room`` (with the worker it came
    through), once there."""
    def find(d: webdriver.Chrome) -> object:
        for line in _text(d, "log").splitlines():
            if line.startswith(f"{user} joined {room} via "):
                return line
        return None

    return find
