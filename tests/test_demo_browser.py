"""The chat demo in a real browser: `wsrelay serve examples/chat/app.yaml`,
as `make run` starts it, driven by headless Chromium through selenium
(tests/browser.py). The page talks to the gateway through wsrelay.js, the
browser client (tests/test_wsrelay_js.py tests it on its own).

Every wait is a WebDriverWait on a DOM condition or a wait for an event of
the server process; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import http.client
import uuid
from typing import Callable, Iterator

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import DOM_TIMEOUT, chromium, page_server, require_browser
from tests.harness import REPO, WSRELAY, Metrics, ServerProcess
from wsrelay.client import Client

APP = "examples/chat/app.yaml"
KEY = "demo-browser-test-key"
PAGE = REPO / "examples" / "chat" / "index.html"


@pytest.fixture(autouse=True)
def _browser_installed() -> None:
    require_browser()


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
    with chromium() as driver:
        yield driver


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


def log_has(line: str, times: int = 1) -> Callable[[webdriver.Chrome], bool]:
    return lambda d: _text(d, "log").splitlines().count(line) >= times


def fill(driver: webdriver.Chrome, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def join(driver: webdriver.Chrome, user: str, room: str) -> None:
    fill(driver, "user", user)
    fill(driver, "room", room)
    driver.find_element(By.ID, "join").click()


def slow_client(driver: webdriver.Chrome, delay: int = 3600000) -> None:
    """The page's next client waits ``delay`` ms (an hour) before each
    retry: what the test does while the page is away is done before it
    comes back."""
    driver.execute_script(
        "const delay = arguments[0], Client = WsRelay;"
        "window.WsRelay = class extends Client {"
        "  constructor(url, options) { super(url, {...options, minDelay: delay, maxDelay: delay}); } };",
        delay)


def missed_lines(driver: webdriver.Chrome) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#log .missed")]


def online(driver: webdriver.Chrome) -> list[str]:
    """The page's online list, as shown."""
    return driver.execute_script("return [...document.querySelectorAll('#online li')].map((li) => li.textContent)")


def online_is(*users: str) -> Callable[[webdriver.Chrome], bool]:
    return lambda d: online(d) == list(users)


def wait_online(driver: webdriver.Chrome, who: str, *users: str) -> None:
    try:
        WebDriverWait(driver, DOM_TIMEOUT).until(online_is(*users))
    except TimeoutException:
        raise AssertionError(f"{who}'s online list is {online(driver)!r}, not {list(users)!r}") from None


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
    assert browser.execute_script("return relay.socket.extensions") == (
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
    # overwrite the new socket's status (the old client is closed for good).
    browser.execute_script("window.previousSocket = relay.socket;")
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


@contextlib.contextmanager
def foreign_site(gateway_ws_url: str) -> Iterator[str]:
    """A copy of the demo page served from another origin (another port),
    loading wsrelay.js from the gateway and pointing its WebSocket at it
    through window.WSRELAY_URL."""
    html = PAGE.read_text()
    client, marker = '<script src="/wsrelay.js"></script>', "<script>"
    assert client in html and marker in html
    gateway = gateway_ws_url.replace("ws://", "http://", 1)
    html = html.replace(client, f'<script src="{gateway}/wsrelay.js"></script>', 1)
    setting = f"<script>window.WSRELAY_URL = {gateway_ws_url!r};</script>\n"
    with page_server(html.replace(marker, setting + marker, 1)) as site:
        yield site


def test_the_online_list_follows_tabs_opening_and_closing(demo: ServerProcess, browser: webdriver.Chrome) -> None:
    """The room's presence on the page: the list a tab is sent as it joins,
    then the room's join and leave events; a user with two tabs is listed
    once."""
    room = "room_" + uuid.uuid4().hex[:8]
    browser.get(demo.url("/", "http"))
    alice = browser.current_window_handle
    join(browser, "alice", room)
    wait_online(browser, "alice", "alice")

    browser.switch_to.new_window("window")
    bob = browser.current_window_handle
    browser.get(demo.url("/", "http"))
    join(browser, "bob", room)
    # Bob's first list already holds alice; alice hears of bob.
    wait_online(browser, "bob", "alice", "bob")
    browser.switch_to.window(alice)
    wait_online(browser, "alice", "alice", "bob")

    # Alice's second tab: still one alice, with two tabs.
    browser.switch_to.new_window("window")
    browser.get(demo.url("/", "http"))
    join(browser, "alice", room)
    for tab in (browser.current_window_handle, alice, bob):
        browser.switch_to.window(tab)
        wait_online(browser, "every tab", "alice (2 tabs)", "bob")
    # Another room's member is not listed in this one.
    browser.switch_to.window(alice)
    browser.switch_to.new_window("window")
    browser.get(demo.url("/", "http"))
    join(browser, "cy", room + "_2")
    wait_online(browser, "cy", "cy")
    browser.close()

    # Bob closes his tab; then one of alice's is closed.
    browser.switch_to.window(bob)
    browser.close()
    browser.switch_to.window(alice)
    wait_online(browser, "alice", "alice (2 tabs)")
    browser.close()
    browser.switch_to.window(browser.window_handles[0])
    wait_online(browser, "alice's other tab", "alice")
    assert metrics(demo)("wsrelay_connections_total") == 4
    assert demo.stop() == 0, demo.output()


def test_page_from_another_origin_is_refused(demo: ServerProcess, browser: webdriver.Chrome) -> None:
    def origin_failures() -> float:
        return metrics(demo)("wsrelay_handshake_failures_total", reason="origin")

    with foreign_site(demo.url()) as site:
        browser.get(site + "/")
        assert browser.execute_script("return window.WSRELAY_URL") == demo.url()
        # The page's client retries a refused socket, as any lost one, after
        # a delay; here the delay is an hour, so that the gateway counts one
        # refusal while the page says it was refused and will retry.
        slow_client(browser)
        join(browser, "mallory", "lobby")
        wait_for(browser, "the refusal", lambda d: _text(d, "status").startswith("refused (1006), retrying in "))
        # The socket never opened: no connected status, no event in the log,
        # and the client waits without a socket.
        assert browser.execute_script("return [relay.state, relay.socket]") == ["reconnecting", None]
        assert _text(browser, "log") == ""
        browser.execute_script("relay.close()")
        assert _text(browser, "status") == "closed (1000)"

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
    "Channels"), and see each other in their online lists, a closed tab
    leaving the other's (docs/guide.md, "Presence")."""
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
        # The tabs that landed on alice's worker are closed: gone from the
        # lists, on both workers.
        wait_online(browser, user, "alice", user)
        browser.switch_to.window(alice)
        wait_online(browser, "alice", "alice", user)
        browser.switch_to.window(bob)
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
        # Bob's tab closes on his worker; alice's, on the other, drops him.
        browser.switch_to.window(bob)
        browser.close()
        browser.switch_to.window(alice)
        wait_online(browser, "alice", "alice")
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


def test_the_page_comes_back_and_shows_what_it_missed(browser: webdriver.Chrome) -> None:
    """The demo's rooms keep history: cut by the server, the page comes back by
    itself and shows what was said while it was away, marked; after a
    restart (a new process, its history gone) it says it may have missed
    some."""
    room = "room_" + uuid.uuid4().hex[:8]
    with ServerProcess([WSRELAY, "serve", REPO / APP, "--addr", "127.0.0.1:0"], env={"WSRELAY_API_KEY": KEY}) as server:
        port = server.port
        browser.get(server.url("/", "http"))
        # A retry 4 s after a loss: long enough to miss what the test says meanwhile.
        slow_client(browser, 4000)
        join(browser, "alice", room)
        wait_for(browser, "alice's join", log_has(f"alice joined {room}"))
        with Client(server.url("", "http"), KEY) as client:
            assert client.disconnect(user="alice", code=4001, reason="come back") == {"closed": 1}
            wait_for(browser, "the loss", lambda d: _text(d, "status").startswith("disconnected (4001), retrying in "))
            said = {"kind": "message", "user": "bob", "text": "said while alice was away"}
            client.publish(f"room:{room}", said)
        wait_for(browser, "alice back", log_has(f"alice joined {room}", 2))
        assert _text(browser, "status") == "connected"
        # Said while she was away: her own departure (her old socket's
        # ws.leave) and bob's message, given again in their order, marked.
        missed = {"alice left", "bob: said while alice was away"}
        lines = _text(browser, "log").splitlines()
        assert lines[:2] == [f"alice joined {room}", "reconnected: 2 missed while away"], lines
        assert set(lines[2:4]) == missed and lines[4:] == [f"alice joined {room}"], lines
        assert set(missed_lines(browser)) == missed
        assert server.stop() == 0, server.output()

    with ServerProcess([WSRELAY, "serve", REPO / APP, "--addr", f"127.0.0.1:{port}"]) as again:
        wait_for(browser, "alice back again", log_has(f"alice joined {room}", 3))
        assert "messages may have been missed while away and no longer kept: reload the page to catch up" in \
            _text(browser, "log").splitlines()
        assert _text(browser, "status") == "connected"
        assert again.stop() == 0, again.output()
