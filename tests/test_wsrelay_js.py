"""wsrelay.js, the browser client (docs/guide.md, "The browser client:
wsrelay.js"), in headless Chromium (tests/browser.py) against `wsrelay serve`
of tests/apps.py's JS_APP_YAML, on one process and on two workers.

The test page comes from another origin, as a site's pages would, and loads
the client from the gateway: GET /wsrelay.js as a classic script, or
/wsrelay.mjs as an ES module. It records every event the client gives, for
the test to read; publications are made through the server API
(wsrelay.client.Client), and the sockets are cut by the API's disconnect, by
a SIGKILLed worker and by a restart. Every wait is a WebDriverWait on the
page's state or a wait for the server's output; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import psutil
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.support.ui import WebDriverWait

from tests.apps import JS_APP_YAML, write_channels_app
from tests.browser import DOM_TIMEOUT, chromium, page_server, require_browser
from tests.harness import Metrics, ServerProcess, serve_command
from wsrelay.browser import MODULE_EXPORTS, SOURCE
from wsrelay.client import APIError, Client

KEY = "wsrelay-js-test-key"
LOBBY = "room:lobby"
LOUNGE = "lounge:tea"
# Short delays, so that reconnections are quick; the back-off still doubles.
FAST = {"minDelay": 100, "maxDelay": 800}

# The page: the client, loaded as `loader` says, and a record of each event.
PAGE = """<!doctype html>
<meta charset="utf-8"><title>wsrelay.js</title>
{loader}
<script>
window.seen = {{}};
// A client whose every event is recorded in record[event], in order.
window.start = (Client, url, options, record = seen) => {{
  const relay = new Client(url, options);
  for (const event of Client.EVENTS) {{
    record[event] = [];
    relay.on(event, (detail) => record[event].push(detail));
  }}
  return relay;
}};
</script>
"""
LOADERS = {
    # window.WsRelay, from a classic script.
    "script": '<script src="{gateway}/wsrelay.js"></script>\n'
              "<script>window.Client = window.WsRelay;</script>",
    # The module's export; the module form defines no global of its own.
    "module": '<script type="module">\n'
              'import {{ WsRelay }} from "{gateway}/wsrelay.mjs";\n'
              'window.leaked = "WsRelay" in window;\n'
              "window.Client = WsRelay;\n"
              "</script>",
}


@pytest.fixture(autouse=True)
def _browser_installed() -> None:
    require_browser()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


def serve(tmp_path: Path, *args: str, **env: str) -> ServerProcess:
    """`wsrelay serve` of JS_APP_YAML with the server API on."""
    app = write_channels_app(tmp_path, JS_APP_YAML)
    return ServerProcess(serve_command(app, *args), env={"WSRELAY_API_KEY": KEY, **env})


def get(server: ServerProcess, path: str, headers: Optional[dict[str, str]] = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=DOM_TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response
    finally:
        conn.close()


def metrics(server: ServerProcess) -> Metrics:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=DOM_TIMEOUT)
    try:
        conn.request("GET", "/metrics?local=1")
        return Metrics(conn.getresponse().read().decode())
    finally:
        conn.close()


class Page:
    """The test page in ``driver``, its client started on a gateway's route."""

    def __init__(self, driver: webdriver.Chrome, server: ServerProcess, path: str, **options: Any) -> None:
        self.driver = driver
        self.driver.execute_script("window.relay = start(Client, arguments[0], arguments[1])",
                                   server.url(path), options)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, what: str, expression: str, *args: Any) -> Any:
        """The value of JS ``expression`` once it is truthy."""
        try:
            return WebDriverWait(self.driver, DOM_TIMEOUT).until(
                lambda d: d.execute_script(f"return {expression}", *args))
        except TimeoutException:
            raise AssertionError(f"timed out waiting for {what}; the client's state: {self.js('return relay.state')}, "
                                 f"its events: {json.dumps(self.js('return seen'))[:4000]}") from None

    def states(self) -> list[str]:
        return self.js("return seen.state.map((s) => s.state)")

    def numbers(self) -> list[int]:
        """The ``n`` of each publication {"n": ...} handed to the page, in order."""
        return self.js("return seen.publication.filter((p) => p.data && p.data.n).map((p) => p.data.n)")


@pytest.fixture
def open_page(browser: webdriver.Chrome) -> Iterator[Any]:
    """A function: the test page (loaded as `loader` says) from another
    origin, for a gateway."""
    with contextlib.ExitStack() as stack:
        def load(server: ServerProcess, loader: str = "script") -> webdriver.Chrome:
            site = stack.enter_context(page_server(PAGE.format(loader=LOADERS[loader].format(
                gateway=server.url("", "http")))))
            browser.get(site + "/")
            WebDriverWait(browser, DOM_TIMEOUT).until(
                lambda d: d.execute_script("return typeof window.Client === 'function'"))
            return browser

        yield load


# -- the file ------------------------------------------------------------------------------------


def test_every_service_answers_wsrelay_js(tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        script = get(server, "/wsrelay.js")
        assert script.status == 200
        assert script.getheader("Content-Type") == "text/javascript; charset=utf-8"
        assert script.getheader("Cache-Control") == "no-cache"
        assert script.getheader("Access-Control-Allow-Origin") == "*"
        assert int(script.getheader("Content-Length")) == len(SOURCE.read_bytes())
        etag = script.getheader("ETag")
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag), etag
        # A browser that has it asks whether it is still current: it is.
        for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            again = get(server, "/wsrelay.js", {"If-None-Match": tag})
            assert again.status == 304, tag
            assert again.getheader("ETag") == etag and again.getheader("Content-Length") in (None, "0")
        assert get(server, "/wsrelay.js", {"If-None-Match": '"other"'}).status == 200

        module = get(server, "/wsrelay.mjs")
        assert module.status == 200
        assert module.getheader("Content-Type") == "text/javascript; charset=utf-8"
        assert int(module.getheader("Content-Length")) == len(SOURCE.read_bytes() + MODULE_EXPORTS)
        assert module.getheader("ETag") not in (None, etag)
        assert get(server, "/wsrelay.js/more").status == 404
        assert server.stop() == 0, server.output()


@pytest.mark.parametrize("loader", ["script", "module"])
def test_the_page_loads_it_and_receives(tmp_path: Path, open_page: Any, loader: str) -> None:
    """As a classic script and as an ES module: publications of the channels
    the handler granted, the target's own messages, and what the page sends."""
    with serve(tmp_path) as server:
        driver = open_page(server, loader)
        if loader == "module":
            assert driver.execute_script("return window.leaked") is False
        page = Page(driver, server, f"/ws/member?ch={LOBBY}&user=ada")
        page.wait("the socket open", "relay.state === 'open'")
        assert page.states() == ["open"]
        assert page.js("return seen.state[0].previous") == "connecting"
        # The target's message (tests/procs.py relay:member): no envelope, so
        # the application's own.
        me = json.loads(page.wait("the target's message", "seen.message.length && seen.message[0].data"))["me"]
        with Client(server.url("", "http"), KEY) as client:
            client.publish(LOBBY, {"n": 1})
            client.publish("room:other", {"n": 99})  # not granted: not received
            client.publish(LOBBY, {"n": 2})
        page.wait("two publications", "seen.publication.length === 2")
        publications = page.js("return seen.publication")
        assert [(p["channel"], p["data"]) for p in publications] == [(LOBBY, {"n": 1}), (LOBBY, {"n": 2})]
        # The lobby keeps history: its subscription began with `subscribed`
        # (nothing published yet), and each publication has its offset.
        subscribed = page.js("return seen.subscribed")
        assert [(s["channel"], s["offset"], s["recovered"]) for s in subscribed] == [(LOBBY, 0, False)]
        epoch = subscribed[0]["epoch"]
        assert [(p["offset"], p["epoch"], p["replayed"]) for p in publications] == [
            (1, epoch, False), (2, epoch, False)]
        assert page.js("return relay.position(arguments[0])", LOBBY) == {"epoch": epoch, "offset": 2}
        assert page.js("return relay.send('hello')") is True
        with Client(server.url("", "http"), KEY) as client:
            assert client.disconnect(client=me) == {"closed": 1}
        page.wait("the reconnection", "seen.state.length === 3 && seen.subscribed.length === 2")
        assert page.states() == ["open", "reconnecting", "open"]
        # It named its position, and nothing was missed.
        assert page.js("return seen.subscribed[1]") == {"channel": LOBBY, "offset": 2, "epoch": epoch,
                                                         "recovered": True}
        assert page.js("return [seen.gap, seen.publication.length]") == [[], 2]
        page.js("relay.close()")
        assert page.states()[-1] == "closed"
        assert page.js("return [relay.socket, relay.send('late')]") == [None, False]
        assert server.stop() == 0, server.output()


def test_join_and_leave_reach_the_page(tmp_path: Path, open_page: Any) -> None:
    """A channel with presence and join_leave: the page is told who comes
    and goes, with each one's presence entry."""
    with serve(tmp_path) as server:
        page = Page(open_page(server), server, f"/ws/member?ch={LOUNGE}&user=ada")
        page.wait("ada in", "relay.state === 'open' && seen.message.length === 1")
        page.js("window.other = {}; window.bob = start(Client, arguments[0], {}, other)",
                server.url(f"/ws/member?ch={LOUNGE}&user=bob"))
        bob = json.loads(page.wait("bob in", "other.message && other.message.length && other.message[0].data"))["me"]
        entry = {"client": bob, "user": "bob", "info": {}}
        page.wait("bob's join", "seen.join.some((j) => j.info.user === 'bob')")
        assert [j for j in page.js("return seen.join") if j["info"]["user"] == "bob"] == [
            {"channel": LOUNGE, "info": entry}]
        page.js("bob.close()")
        page.wait("bob's leave", "seen.leave.length === 1")
        assert page.js("return seen.leave") == [{"channel": LOUNGE, "info": entry}]
        assert page.js("return [seen.publication, seen.subscribed, seen.gap]") == [[], [], []]
        assert server.stop() == 0, server.output()


# -- reconnecting ---------------------------------------------------------------------------------


def test_disconnected_by_the_server_it_reconnects(tmp_path: Path, open_page: Any) -> None:
    """The API's disconnect closes with the caller's code: the client comes
    back, with what the page said meanwhile, unless the page marked the code
    final."""
    with serve(tmp_path) as server, Client(server.url("", "http"), KEY) as client:
        page = Page(open_page(server), server, f"/ws/chat?ch={LOBBY}&user=ada", finalCodes=[4009], sendQueue=2,
                    **FAST)
        # Said while it reconnects (relay:channel_room publishes what its
        # clients say to the lobby): two kept, then sent once it is back; the
        # third refused, the queue being full.
        page.js("window.kept = [];"
                "relay.on('state', (s) => {"
                "  if (s.state !== 'reconnecting') return;"
                "  for (const n of [1, 2, 3]) kept.push(relay.send(`said while away ${s.code} #${n}`)); })")
        page.wait("the first join", "seen.publication.some((p) => p.data.joined)")

        for code, reason in ((4001, "come back"), (1000, "")):
            opened = page.states().count("open")
            assert client.disconnect(user="ada", code=code, reason=reason) == {"closed": 1}
            page.wait(f"back after {code}", "seen.state.filter((s) => s.state === 'open').length === arguments[0]",
                      opened + 1)
            lost = page.js("return seen.state.filter((s) => s.state === 'reconnecting').pop()")
            assert (lost["code"], lost["reason"], lost["previous"], lost["attempt"]) == (code, reason, "open", 1)
            # The first retry waits between half of minDelay and all of it.
            assert FAST["minDelay"] / 2 <= lost["delay"] <= FAST["minDelay"], lost
            said = page.wait("what was said meanwhile", "seen.publication.some((p) => p.data === arguments[0]) && "
                             "seen.publication.map((p) => p.data).filter((d) => typeof d === 'string')",
                             f"said while away {code} #2")
            assert said[-2:] == [f"said while away {code} #1", f"said while away {code} #2"], said
            assert page.js("return kept.splice(0)") == [True, True, False]
        assert page.states() == ["open", "reconnecting", "open", "reconnecting", "open"]
        # Each came back where it was: every publication of the lobby once, in order.
        assert [s["recovered"] for s in page.js("return seen.subscribed")] == [False, True, True]
        offsets = page.js("return seen.publication.map((p) => p.offset)")
        assert offsets == list(range(1, len(offsets) + 1)) and page.js("return seen.gap") == []

        # A code the page marked final: closed, and no retry.
        assert client.disconnect(user="ada", code=4009, reason="go away") == {"closed": 1}
        page.wait("closed", "relay.state === 'closed'")
        closed = page.js("return seen.state[seen.state.length - 1]")
        assert (closed["code"], closed["reason"], closed["initiator"]) == (4009, "go away", "server")
        assert page.js("return [relay.socket, relay.send('late')]") == [None, False]
        assert metrics(server)("wsrelay_connections_total") == 3
        assert server.stop() == 0, server.output()


class Publisher(threading.Thread):
    """Publishes {"n": 1}, {"n": 2}, ... to ``channel`` through the API, one
    about every ``every`` seconds, until stopped. Each has an idempotency key
    and is retried until the API takes it (its worker may be killed during
    the call), so each number is published once: ``published`` is the last."""

    def __init__(self, url: str, channel: str, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.url, self.channel, self.every = url, channel, every
        self.published = 0
        self.retries = 0
        self.failure: Optional[BaseException] = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            with Client(self.url, KEY, timeout=5.0) as client:
                while not self._halt.is_set():
                    self._publish(client, self.published + 1)
                    self.published += 1
                    self._halt.wait(self.every)  # the pace of publication, not a synchronisation
        except BaseException as exc:
            self.failure = exc

    def _publish(self, client: Client, n: int) -> None:
        for _attempt in range(100):
            try:
                client.publish(self.channel, {"n": n}, idempotency_key=f"n{n}")
                return
            except (OSError, APIError):
                # A worker killed under the call, or still starting again:
                # once more, as a task would retry.
                self.retries += 1
                self._halt.wait(0.05)
        raise AssertionError(f"publication {n} refused 100 times")

    def stop(self) -> int:
        """Stop; the last number published."""
        self._halt.set()
        self.join(DOM_TIMEOUT)
        assert not self.is_alive() and self.failure is None, self.failure
        return self.published


def worker_process(server: ServerProcess, index: int) -> psutil.Process:
    for child in psutil.Process(server.pid).children():
        if child.cmdline()[-2:] == ["--worker", str(index)]:
            return child
    raise AssertionError(f"no worker {index} under {server.pid}")


def test_a_killed_worker_loses_nothing(tmp_path: Path, open_page: Any) -> None:
    """WSRELAY_WORKERS=2: the worker that holds the page's socket is
    SIGKILLed while publications go on; the client reconnects (to whichever
    worker the kernel gives it) and hands the page each publication once, in
    order."""
    with serve(tmp_path, WSRELAY_WORKERS="2", WSRELAY_NODE="web", WSRELAY_CLUSTER_DOWN_AFTER="2s") as server:
        # A first retry 2 to 4 s after the loss: publications go on meanwhile,
        # for the recovery to give again.
        page = Page(open_page(server), server, f"/ws/chat?ch={LOBBY}&user=ada", minDelay=4000, maxDelay=4000)
        joined = page.wait("the join", "seen.publication.filter((p) => p.data.joined).map((p) => p.data.joined)[0]")
        index = int(re.match(r"\{web-(\d+)[|@]", joined).group(1))
        publisher = Publisher(server.url("", "http"), LOBBY)
        publisher.start()
        try:
            page.wait("publications", "seen.publication.filter((p) => p.data.n).length >= 10")
            victim = worker_process(server, index)
            victim.send_signal(signal.SIGKILL)
            page.wait("the reconnection", "seen.state.length >= 3 && relay.state === 'open'")
            lost = page.js("return seen.state[1]")
            assert (lost["state"], lost["code"]) == ("reconnecting", 1006), lost
            # Publications made after it is back arrive live.
            after = publisher.published + 10
            page.wait("live publications", "Math.max(...seen.publication.map((p) => p.data.n || 0)) >= arguments[0]",
                      after)
        finally:
            last = publisher.stop()
        page.wait("the last publication", "seen.publication.some((p) => p.data.n === arguments[0])", last)
        assert page.numbers() == list(range(1, last + 1))  # each once, in order
        assert page.states()[-1] == "open"
        # The new socket recovered: what was published while the page was away
        # came first, marked as replayed, then the live ones; no gap.
        subscribed = page.js("return seen.subscribed")
        assert [s["recovered"] for s in subscribed] == [False, True], subscribed
        publications = page.js("return seen.publication")
        offsets = [p["offset"] for p in publications]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), offsets
        replayed = [p["offset"] for p in publications if p["replayed"]]
        assert replayed and max(replayed) == subscribed[1]["offset"], (replayed, subscribed)
        assert replayed == list(range(replayed[0], subscribed[1]["offset"] + 1))
        assert page.js("return seen.gap") == []
        server.wait_text(rf"worker {index} \(pid {victim.pid}\) exited with signal SIGKILL")
        assert server.stop() == 0, server.output()


def test_restarted_it_backs_off_then_reconnects_unrecovered(tmp_path: Path, open_page: Any) -> None:
    """A single process stopped and started again on its port: while it is
    away, each failed attempt waits twice as long (up to maxDelay); then
    the client is back, told it did not recover (the history was the old
    process's), its back-off from the start."""
    with serve(tmp_path) as server:
        port = server.port
        page = Page(open_page(server), server, f"/ws/chat?ch={LOBBY}&user=ada", **FAST)
        page.wait("the join", "seen.publication.some((p) => p.data.joined)")
        assert server.stop() == 0, server.output()  # its sockets closed with 1001
        page.wait("five failed attempts", "seen.state.length >= 6")
        with serve(tmp_path, "--addr", f"127.0.0.1:{port}") as again:
            page.wait("back", "relay.state === 'open' && seen.publication.filter((p) => p.data.joined).length === 2")
            lost = page.js("return seen.state.filter((s) => s.state === 'reconnecting')")
            assert lost[0]["code"] == 1001 and lost[0]["previous"] == "open"
            for attempt, state in enumerate(lost, start=1):
                ceiling = min(FAST["maxDelay"], FAST["minDelay"] * 2 ** (attempt - 1))
                assert state["attempt"] == attempt and ceiling / 2 <= state["delay"] <= ceiling, lost
            assert all(s["code"] == 1006 for s in lost[1:]), lost  # nothing was listening
            # A new process, a new history: the position names an epoch it
            # never had, so the page is told it may have missed publications.
            first, second = page.js("return seen.subscribed")
            assert (first["recovered"], second["recovered"]) == (False, False)
            assert second["epoch"] != first["epoch"]
            assert page.js("return seen.gap") == [
                {"channel": LOBBY, "reason": "not_recovered", "epoch": second["epoch"], "missed": None}]
            assert again.stop() == 0, again.output()
        # Its back-off starts again: the next loss waits at most minDelay.
        states = page.wait("the loss", "seen.state.length > arguments[0] && seen.state", len(lost) + 2)
        assert states[len(lost) + 1]["state"] == "open", states
        assert (states[len(lost) + 2]["code"], states[len(lost) + 2]["attempt"]) == (1001, 1), states
        assert states[len(lost) + 2]["delay"] <= FAST["minDelay"], states


def test_a_publication_seen_is_dropped_and_a_jump_is_told(tmp_path: Path, open_page: Any) -> None:
    """What the client does with what the server never sends (the server
    gives each publication once, without gaps): envelopes handed to its
    socket's message handler as if they had arrived."""
    with serve(tmp_path) as server, Client(server.url("", "http"), KEY) as client:
        page = Page(open_page(server), server, f"/ws/member?ch={LOBBY}&user=ada")
        page.wait("the subscription", "seen.subscribed.length === 1")
        epoch = page.js("return seen.subscribed[0].epoch")
        for n in (1, 2):
            assert client.publish(LOBBY, {"n": n}) == {"offset": n, "epoch": epoch}
        page.wait("two publications", "seen.publication.length === 2")

        def arrives(offset: int, n: int, of_epoch: str = epoch) -> None:
            page.js("relay.socket.onmessage({data: JSON.stringify(arguments[0])})",
                    {"channel": LOBBY, "event": "publication", "data": {"n": n}, "offset": offset, "epoch": of_epoch})

        # A listener that throws is reported, and costs the others nothing.
        page.js("relay.on('publication', () => { throw new Error('a failing listener'); })")
        arrives(2, 2)  # handed over already
        arrives(1, 1)
        assert page.numbers() == [1, 2] and page.js("return seen.gap") == []
        arrives(5, 5)  # 3 and 4 never came
        assert page.numbers() == [1, 2, 5]
        assert page.js("return seen.gap") == [{"channel": LOBBY, "reason": "offset", "epoch": epoch, "missed": 2}]
        arrives(1, 6, "another")  # another history
        assert page.numbers() == [1, 2, 5, 6]
        assert page.js("return seen.gap[1]") == {"channel": LOBBY, "reason": "epoch", "epoch": "another",
                                                 "missed": None}
        assert page.js("return relay.position(arguments[0])", LOBBY) == {"epoch": "another", "offset": 1}
        assert server.stop() == 0, server.output()
