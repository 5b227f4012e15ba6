"""The request head an async endpoint's handler reads (the guard's
parse_request and its Head: each header's text made as it is asked for) and
the handlers' deadlines (HandlerDeadlines: one queue and one timer for a
service's handlers)."""

from __future__ import annotations

import asyncio

import pytest

from wsrelay._core.handshake import HandlerDeadlines, Head, parse_head, parse_request
from wsrelay.http import Request

HEAD = (b"GET /ws/a%20b?x=1&y=2 HTTP/1.1\r\n"
        b"Host: example.com\r\n"
        b"Connection: keep-alive, Upgrade\r\n"
        b"Cookie: a=1\r\n"
        b"cookie:  b=2 \t\r\n"
        b"Upgrade: WebSocket\r\n"
        b"X-Empty:\r\n"
        b"\r\n")


def test_the_head_gives_each_header_by_name_in_any_case():
    method, path, query, head = parse_request(HEAD)
    assert (method, path, query) == ("GET", "/ws/a b", "x=1&y=2")
    assert len(head) == 6
    assert head.get("HOST") == head.get("host") == "example.com"
    assert head.getall("Cookie") == ["a=1", "b=2"]  # in order, whitespace around a value dropped
    assert head.get("X-Empty") == ""
    assert head.get("Missing") is None and head.get("Missing", "d") == "d" and head.getall("Missing") == []
    # A name that is not a token (not ASCII) names no header, whatever lower() makes of it.
    assert head.get("\u212aookie") is None
    assert head.items() == [("Host", "example.com"), ("Connection", "keep-alive, Upgrade"),
                            ("Cookie", "a=1"), ("cookie", "b=2"), ("Upgrade", "WebSocket"), ("X-Empty", "")]
    # parse_head reads the same headers.
    assert list(parse_head(HEAD)[2].items()) == head.items()


def test_normalize_upgrade_says_upgrade_and_connection_as_picows_reads_them():
    _, _, _, head = parse_request(HEAD + b"")
    head.normalize_upgrade()
    assert head.get("connection") == "Upgrade" and head.get("UPGRADE") == "websocket"
    assert head.getall("Connection") == ["Upgrade"]
    assert head.items() == [("Host", "example.com"), ("Connection", "Upgrade"), ("Cookie", "a=1"),
                            ("cookie", "b=2"), ("Upgrade", "websocket"), ("X-Empty", "")]
    # Repeated headers: the first replaced, the others gone; missing ones added at the end.
    _, _, _, repeated = parse_request(b"GET / HTTP/1.1\r\nconnection: a\r\nA: 1\r\nConnection: b\r\n\r\n")
    repeated.normalize_upgrade()
    assert repeated.items() == [("connection", "Upgrade"), ("A", "1"), ("Upgrade", "websocket")]
    assert len(repeated) == 3


def test_a_request_from_the_head_reads_headers_cookies_and_the_whole_set():
    req = Request.from_head(HEAD)
    assert req.header("cookie") == "a=1" and req.header_values("COOKIE") == ["a=1", "b=2"]
    assert req.cookie("b") == "2" and req.query("y") == "2"
    req.normalize_upgrade()
    assert req.header("Connection") == "Upgrade"
    headers = req.headers
    assert headers["upgrade"] == "websocket" and headers.getall("Cookie") == ["a=1", "b=2"]
    assert req.header("Host") == "example.com"


def test_a_head_is_only_made_from_the_bytes_it_reads():
    with pytest.raises(TypeError, match="parse_request"):
        Head()


@pytest.mark.parametrize("head, problem", [
    (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", "line 2"),
    (b"GET / HTTP/1.1\r\nA: x\x01\r\n\r\n", "control character"),
    (b"GET / HTTP/1.1\r\nA: x\r\n", "incomplete"),
])
def test_a_malformed_head_is_refused_naming_the_problem(head, problem):
    with pytest.raises(ValueError, match=problem):
        parse_request(head)


async def test_handler_deadlines_cancel_what_runs_past_them_in_order_and_nothing_else():
    loop = asyncio.get_running_loop()
    deadlines = HandlerDeadlines(loop, 0.2)
    release = asyncio.Event()
    finished: list[int] = []
    expired: list[int] = []

    async def handler(i: int) -> None:
        d = deadlines.start()
        try:
            await release.wait()
            finished.append(i)
        finally:
            if d.expired:
                expired.append(i)
            d.finish()

    # Many more than the queue keeps before compacting what has finished.
    first = [asyncio.ensure_future(handler(i)) for i in range(150)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*first)
    release.clear()
    late = [asyncio.ensure_future(handler(1000 + i)) for i in range(100)]
    await asyncio.sleep(0)
    # Half of them are cancelled from outside before their deadline; the
    # rest, past it, by the one timer.
    for task in late[:50]:
        task.cancel()
    results = await asyncio.gather(*late, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert sorted(finished) == list(range(150))
    assert sorted(expired) == list(range(1050, 1100))
    # A deadline after them starts a new round of the timer.
    again = asyncio.ensure_future(handler(2000))
    with pytest.raises(asyncio.CancelledError):
        await again
    assert expired[-1] == 2000 and 2000 not in finished
