"""``async def`` endpoints, over real sockets against a running gateway: an
endpoint that waits and then relays or answers, WSRELAY_HANDLER_TIMEOUT (504,
the handler cancelled, what it spawned ended), a handler that fails, a client
that leaves while its handler waits, and handlers waiting side by side while
established connections go on (docs/guide.md, "Handlers that wait")."""

from __future__ import annotations

import asyncio
import contextvars
import json
from typing import Any

import anyio

import wsrelay
from tests.apps import relay_app
from tests.harness import expect, running, until
from tests.wsclient import RawWebSocket, address, close_payload, encode_frame, http_request
from wsrelay import process

PATH = "/ws/chat"


def _relay_to(pid: Any) -> str:
    return json.dumps({"target_pid": str(pid)})


async def test_an_async_endpoint_awaits_then_relays() -> None:
    gate = asyncio.Event()

    async def endpoint(req: Any, res: Any) -> None:
        process.send(process.self(), "waiting")
        await gate.wait()
        pid = process.spawn("relay:recorder", None, process.self())
        res.header("X-WS-Relay", _relay_to(pid))

    async with running(relay_app(endpoint)) as gw:
        connecting = asyncio.ensure_future(RawWebSocket.connect(gw, PATH))
        await expect("waiting")
        assert not connecting.done()
        gate.set()
        ws = await connecting
        assert ws.response.status == 101
        await expect("ready")
        topic, payload, _ = await expect("target")
        assert topic == "ws.join"
        ws.send_text("hello")
        topic, payload, _ = await expect("target")
        assert (topic, payload["data"]) == ("ws.message", "hello")
        await ws.close_handshake(1000)
        topic, payload, _ = await expect("target")
        assert (topic, payload["reason"]) == ("ws.leave", "client_closed")


async def test_an_async_endpoint_answers_without_relaying() -> None:
    async def endpoint(req: Any, res: Any) -> None:
        await asyncio.sleep(0)
        res.status(401).header("WWW-Authenticate", "Bearer").write(f"who are you, {req.query('user')}?")

    async with running(relay_app(endpoint)) as gw:
        answer = await http_request(gw, PATH + "?user=ann", upgrade=True)
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert answer.text == "who are you, ann?"


async def test_an_async_endpoint_is_found_by_its_percent_encoded_path_and_not_by_a_malformed_request_line() -> None:
    # The guard finds the async endpoints' paths in the request line itself:
    # decoded as the router decodes them, the query left out.
    async def endpoint(req: Any, res: Any) -> None:
        await asyncio.sleep(0)
        res.status(401).write(f"{req.path} {req.query('user')}")

    async with running(relay_app(endpoint)) as gw:
        answer = await http_request(gw, "/ws/ch%61t?user=b%6Fb", upgrade=True)
        assert (answer.status, answer.text) == (401, "/ws/chat bob")
        # Two spaces where one belongs: not a request line the guard routes,
        # and picows refuses it (no handler runs).
        host, port = address(gw)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET  /ws/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert not status_line.startswith(b"HTTP/1.1 401"), status_line


async def test_an_async_endpoint_past_the_handler_timeout_is_answered_504_and_cancelled() -> None:
    cancelled = asyncio.Event()
    spawned: list[Any] = []

    async def endpoint(req: Any, res: Any) -> None:
        spawned.append(process.spawn("relay:recorder", None, process.self()))
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with running(relay_app(endpoint), handler_timeout=0.3) as gw:
        answer = await http_request(gw, PATH, upgrade=True)
        assert answer.status == 504, answer
        assert "did not finish within 0.3 s" in answer.text
        assert cancelled.is_set()
        _, target = await expect("ready")
        assert target == spawned[0]
        await until(lambda: not process.is_alive(target), what="the timed-out handler's process ending")
        assert gw.services["test:gateway"].handshakes.failures["handler_timeout"] == 1


async def test_an_async_endpoint_that_raises_is_answered_500() -> None:
    async def endpoint(req: Any, res: Any) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("the session store is down")

    async with running(relay_app(endpoint)) as gw:
        answer = await http_request(gw, PATH, upgrade=True)
        assert answer.status == 500
        assert "the handler failed" in answer.text
        assert gw.services["test:gateway"].handshakes.failures["handler_error"] == 1


async def test_a_client_that_leaves_while_its_handler_waits_costs_nothing_after() -> None:
    gate = asyncio.Event()
    spawned: list[Any] = []

    async def endpoint(req: Any, res: Any) -> None:
        await gate.wait()
        spawned.append(process.spawn("relay:recorder", None, process.self()))
        res.header("X-WS-Relay", _relay_to(spawned[0]))

    async with running(relay_app(endpoint)) as gw:
        handshakes = gw.services["test:gateway"].handshakes
        before = wsrelay.node().process_count()
        reader, writer = await asyncio.open_connection(*gw.address())
        writer.write(b"GET " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        await writer.drain()
        writer.close()
        await until(lambda: handshakes.failures.get("client_gone") == 1, what="the server noticing the client left")
        gate.set()
        await until(lambda: spawned and not process.is_alive(spawned[0]),
                    what="the abandoned handler's process ending")
        assert wsrelay.node().process_count() == before
        assert gw.connection_count() == 0


async def test_waiting_handlers_cost_established_connections_nothing() -> None:
    gate = asyncio.Event()

    async def endpoint(req: Any, res: Any) -> None:
        if req.query("wait"):
            await gate.wait()
        pid = process.spawn("relay:recorder", None, process.self())
        res.header("X-WS-Relay", _relay_to(pid))

    async with running(relay_app(endpoint)) as gw:
        ws = await RawWebSocket.connect(gw, PATH)
        await expect("ready")
        assert (await expect("target"))[0] == "ws.join"
        waiting = [asyncio.ensure_future(http_request(gw, PATH + "?wait=1", upgrade=True)) for _ in range(200)]
        for i in range(20):
            ws.send_text(f"m{i}")
            topic, payload, _ = await expect("target")
            assert (topic, payload["data"]) == ("ws.message", f"m{i}")
        assert not any(w.done() for w in waiting)
        gate.set()
        answers = await asyncio.gather(*waiting)
        assert {a.status for a in answers} == {101}
        await ws.close_handshake(1000)
        await until(lambda: gw.connection_count() == 0, what="every connection closing")


async def test_a_malformed_head_for_an_async_endpoint_is_answered_400_naming_the_problem() -> None:
    called: list[Any] = []

    async def endpoint(req: Any, res: Any) -> None:
        called.append(req)

    heads = {
        b"Sec-WebSocket-Version 13\r\n": "the name is not a token followed by ':'",
        b"Bad Name: x\r\n": "the name is not a token followed by ':'",
        b"X-Folded: a\r\n b\r\n": "the name is not a token followed by ':'",
        b"X-Bare-LF: a\nX-Next: b\r\n": "a line not ended by CRLF",
        b"X-Control: a\x01b\r\n": "a control character",
    }
    async with running(relay_app(endpoint)) as gw:
        for bad, problem in heads.items():
            reader, writer = await asyncio.open_connection(*gw.address())
            writer.write(b"GET " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n" + bad + b"Sec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
            assert problem.encode() in answer, answer
        assert gw.services["test:gateway"].handshakes.failures["bad_request"] == len(heads)
        # A well-formed head with the same headers, whitespace around values, reaches the handler.
        answer = await http_request(gw, PATH + "?user=ann", upgrade=True, headers={"X-Spaced": "  v  "})
        assert answer.status == 200 and [r.header("X-Spaced") for r in called] == ["v"]
        assert called[0].query("user") == "ann" and called[0].method == "GET"


async def test_an_async_endpoint_relays_a_browser_request_and_what_came_with_its_head() -> None:
    # picows is handed the head reduced to what it reads, Upgrade and
    # Connection as it wants them: a browser's "keep-alive, Upgrade", its
    # other headers, and a frame sent right behind the head all come through.
    async def endpoint(req: Any, res: Any) -> None:
        await asyncio.sleep(0)
        assert req.header("Cookie") == "session=abc; theme=dark" and req.header("Connection") == "Upgrade"
        pid = process.spawn("relay:recorder", None, process.self())
        res.header("X-WS-Relay", _relay_to(pid))

    async with running(relay_app(endpoint)) as gw:
        reader, writer = await asyncio.open_connection(*gw.address())
        writer.write(b"GET " + PATH.encode() + b"?x=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0\r\n"
                     b"Accept-Language: en\r\nConnection: keep-alive, Upgrade\r\nupgrade: WebSocket\r\n"
                     b"Cookie: session=abc; theme=dark\r\nsec-websocket-version: 13\r\nOrigin: http://x\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCache-Control: no-cache\r\n\r\n"
                     + encode_frame(0x1, b"early"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 "), head
        await expect("ready")
        assert (await expect("target"))[0] == "ws.join"
        topic, payload, _ = await expect("target")
        assert (topic, payload["data"]) == ("ws.message", "early")
        writer.write(encode_frame(0x8, close_payload(1000)))
        topic, payload, _ = await expect("target")
        assert topic == "ws.leave"
        writer.close()


async def test_an_async_endpoint_reads_repeated_headers_in_order_and_all_of_them_as_a_multidict() -> None:
    # An async endpoint's headers are read where the core parsed them; the
    # multidict of them all is made when the handler asks for it.
    seen: list[Any] = []

    async def endpoint(req: Any, res: Any) -> None:
        await asyncio.sleep(0)
        seen.append((req.header("x-twice"), req.header_values("X-TWICE"), req.header_values("x-none"),
                     req.header("X-None", "default"), req.cookie("b"), req.headers.getall("X-Twice"),
                     req.header("x-twice"), req.headers["upgrade"]))
        res.status(204)

    async with running(relay_app(endpoint)) as gw:
        reader, writer = await asyncio.open_connection(*gw.address())
        writer.write(b"GET " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Twice: one\r\nCookie: a=1\r\n"
                     b"Upgrade: websocket\r\nConnection: Upgrade\r\nx-twice: two\r\ncookie: b=2\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
    assert head.startswith(b"HTTP/1.1 204 "), head
    assert seen == [("one", ["one", "two"], [], "default", "2", ["one", "two"], "one", "websocket")]


async def test_an_async_endpoint_runs_as_a_task_that_asyncio_and_anyio_recognise() -> None:
    # Its task is the gateway's own (no asyncio.Task to register per
    # request): asyncio.current_task() returns it, and what reads the current
    # task to cancel it works in a handler, each request in a context of its own.
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def endpoint(req: Any, res: Any) -> None:
        before = var.get()
        var.set(req.query("n"))
        task = asyncio.current_task()
        try:
            async with asyncio.timeout(0.01):
                await asyncio.Event().wait()
            timeout = "not raised"
        except TimeoutError:
            timeout = "TimeoutError"
        try:
            await asyncio.wait_for(asyncio.Event().wait(), 0.01)
            wait_for = "not raised"
        except TimeoutError:
            wait_for = "TimeoutError"
        async with asyncio.TaskGroup() as tg:
            child = tg.create_task(asyncio.sleep(0, "child result"))
        with anyio.move_on_after(0.01) as scope:
            await anyio.sleep(10)
        with anyio.fail_after(10):
            await anyio.sleep(0)
        await asyncio.sleep(0)
        res.status(200).write(json.dumps({
            "task": type(task).__name__ == "RouteTask" and task is asyncio.current_task() and not task.done(),
            "before": before, "after": var.get(), "timeout": timeout, "wait_for": wait_for,
            "child": child.result(), "anyio": scope.cancelled_caught, "cancelling": task.cancelling(),
        }))

    async with running(relay_app(endpoint)) as gw:
        for n in ("1", "2"):
            answer = await http_request(gw, PATH + "?n=" + n, upgrade=True)
            assert answer.status == 200, answer
            assert json.loads(answer.text) == {
                "task": True, "before": "unset", "after": n, "timeout": "TimeoutError", "wait_for": "TimeoutError",
                "child": "child result", "anyio": True, "cancelling": 0,
            }
        assert gw.services["test:gateway"].handshakes.waiting == set()


async def test_a_handler_still_waiting_at_shutdown_is_cancelled_and_its_client_answered_503() -> None:
    cancelled = asyncio.Event()
    spawned: list[Any] = []

    async def endpoint(req: Any, res: Any) -> None:
        spawned.append(process.spawn("relay:recorder", None, process.self()))
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with running(relay_app(endpoint)) as gw:
        handshakes = gw.services["test:gateway"].handshakes
        answering = asyncio.ensure_future(http_request(gw, PATH, upgrade=True))
        _, target = await expect("ready")
        assert len(handshakes.waiting) == 1
        await gw.shutdown(drain_timeout=1)
        answer = await answering
        assert (answer.status, answer.text) == (503, "503 Service Unavailable: shutting down\n")
        assert cancelled.is_set() and handshakes.waiting == set()
        await until(lambda: not process.is_alive(target), what="the cancelled handler's process ending")
        assert target == spawned[0]


async def test_an_async_endpoint_awaits_process_call_every_way_a_call_ends() -> None:
    """process.call in an ``async def`` handler, where the gateway's own task
    waits for it without a future: the reply as it was sent (a tuple stays a
    tuple), the callee's end, the call's timeout, asyncio.timeout around it,
    and nothing of a call left behind."""
    server = process.spawn("test:call_server")

    async def endpoint(req: Any, res: Any) -> None:
        what = req.query("what")
        try:
            if what == "reply":
                value: Any = await process.call(server, "hello", [1, 2])
            elif what == "exit":
                value = await process.call(process.spawn("test:call_server"), "raise")
            elif what == "timeout":
                value = await process.call(server, "hold", None, timeout=0.05)
            else:
                async with asyncio.timeout(0.05):
                    value = await process.call(server, "hold", None, timeout=None)
        except wsrelay.CallError as exc:
            value = ("CallError", exc.reason)
        except TimeoutError as exc:
            value = ("TimeoutError", str(exc))
        res.status(200).write(repr(value))

    async with running(relay_app(endpoint)) as gw:
        node = wsrelay.node()
        before = node.process_count()
        got = {}
        for what in ("reply", "exit", "timeout", "outer"):
            answer = await http_request(gw, f"{PATH}?what={what}", upgrade=True)
            assert answer.status == 200, answer
            got[what] = answer.text
        assert got["reply"] == repr(("hello", [1, 2]))
        assert got["exit"] == repr(("CallError", "error"))
        assert got["timeout"].startswith("('TimeoutError', ") and "no reply from " in got["timeout"]
        assert got["outer"] == repr(("TimeoutError", ""))  # asyncio.timeout's own
        await until(lambda: node.process_count() == before, what="every call's waiter gone")
        assert process.is_alive(server)
    process.terminate(server, "done")
    await until(lambda: not process.is_alive(server), what="the server ending")


async def test_concurrent_async_endpoints_each_get_their_own_reply() -> None:
    """Handlers waiting side by side on calls to one process, answered in
    another order than they were made: each relays its own reply."""
    count = 40
    me = process.self()
    collector = process.spawn("test:call_collect", None, count, "shuffled", me)

    async def endpoint(req: Any, res: Any) -> None:
        answer = await process.call(collector, "q", int(req.query("i")))
        res.status(200).write(repr(answer[1]))

    async with running(relay_app(endpoint)) as gw:
        answers = await asyncio.gather(*(http_request(gw, f"{PATH}?i={i}", upgrade=True)
                                         for i in range(count)))
        assert [a.text for a in answers] == [repr(i) for i in range(count)]
        await expect("answered")


async def test_a_call_past_the_handler_timeout_ends_with_its_handler() -> None:
    server = process.spawn("test:call_server")

    async def endpoint(req: Any, res: Any) -> None:
        await process.call(server, "hold", process.self(), timeout=None)

    async with running(relay_app(endpoint), handler_timeout=0.3) as gw:
        before = wsrelay.node().process_count()
        answer = await http_request(gw, PATH, upgrade=True)
        assert answer.status == 504, answer
        await expect("holding")  # the call had reached its callee
        await until(lambda: wsrelay.node().process_count() == before, what="the call's waiter gone")
        assert process.is_alive(server)
    process.terminate(server, "done")
    await until(lambda: not process.is_alive(server), what="the server ending")
