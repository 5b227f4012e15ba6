"""wsrelay.client (docs/api.md, "The Python client"): Client and AsyncClient
against a real gateway: every method, errors as APIError, one keep-alive
connection reused, sent again once when the server has closed it, timeouts,
and an import that loads nothing of the core."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
import websockets

from tests.apps import relay_app
from tests.harness import REPO, clean_env, expect, running
from tests.test_api import KEY, LOBBY, envelope, recv_json, served
from wsrelay import process
from wsrelay.client import APIError, AsyncClient, Client


def test_importing_the_client_loads_no_core_and_no_gateway():
    code = (
        "import sys, wsrelay.client, wsrelay\n"
        "from wsrelay.client import Client, AsyncClient, APIError\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('wsrelay.') and m != 'wsrelay.client')\n"
        "print(loaded, 'picows' in sys.modules, 'uvloop' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] False False"


def test_a_public_name_still_loads_the_runtime_on_first_use():
    code = ("import sys, wsrelay\n"
            "assert 'wsrelay._core.runtime' not in sys.modules\n"
            "pid = wsrelay.Pid('n', 1)\n"
            "print(wsrelay.node().name, 'wsrelay.relay' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env(WSRELAY_NODE="lazy1"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # The node was made from the settings (WSRELAY_NODE), the middleware registered.
    assert out.stdout.strip() == "lazy1 True"


def test_a_url_that_is_no_http_url_is_refused():
    for url in ("ws://h:1", "h:1", "http://"):
        with pytest.raises(ValueError, match="http://host:port"):
            Client(url, KEY)


def http_url(gw: Any) -> str:
    return gw.url("", scheme="http")


async def test_the_sync_client_calls_every_method():
    async with served() as gw, websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}&user=ann")) as ws:
        conn = str(await expect("joined"))
        me = str(process.self())

        def calls() -> list[Any]:
            with Client(http_url(gw), KEY, timeout=10) as client:
                results = [
                    client.publish(LOBBY, {"text": "hi"}),
                    client.broadcast([LOBBY, "other"], 2, idempotency_key="b1"),
                    client.broadcast([LOBBY, "other"], 2, idempotency_key="b1"),
                    client.send(me, "hello", [1]),
                    client.subscribe(conn, "news", info={"n": 1}),
                    client.channels(),
                    client.channels(pattern="news"),
                    client.unsubscribe(conn, "news"),
                ]
                for method in (client.history, client.presence, client.presence_stats):
                    try:
                        method(LOBBY)
                    except APIError as exc:
                        results.append((exc.code, exc.status))
                results.append(client.disconnect(user="ann", code=4000, reason="done"))
                return results

        results = await asyncio.to_thread(calls)
        assert results == [
            {}, [{}, {}], [{}, {}], {"sent": True}, {},
            {"channels": {LOBBY: {"subscribers": 1}, "news": {"subscribers": 1}}},
            {"channels": {"news": {"subscribers": 1}}}, {},
            ("history_not_enabled", 400), ("presence_not_enabled", 400), ("presence_not_enabled", 400),
            {"closed": 1},
        ]
        assert await expect("hello") == [1]
        assert await recv_json(ws) == envelope(LOBBY, {"text": "hi"})
        assert await recv_json(ws) == envelope(LOBBY, 2)  # once: the repeat was not published
        assert await recv_json(ws) == {"channel": "news", "event": "unsubscribed"}
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 4000
        await expect("left")
        assert len(gw.api.requests) > 0


async def test_the_async_client_calls_every_method_on_one_connection():
    async with served() as gw, websockets.connect(gw.url(f"/ws/chat?ch={LOBBY}&user=bob")) as ws:
        conn = str(await expect("joined"))
        async with AsyncClient(http_url(gw), KEY) as client:
            assert await client.publish(LOBBY, "a", idempotency_key="k") == {}
            assert await client.publish(LOBBY, "a", idempotency_key="k") == {}
            assert await client.broadcast([LOBBY], "b") == [{}]
            assert await client.send("nobody", "t", None) == {"sent": False}
            assert await client.subscribe(conn, "news") == {}
            assert await client.channels("news") == {"channels": {"news": {"subscribers": 1}}}
            assert await client.unsubscribe(conn, "news") == {}
            for method, code in ((client.history, "history_not_enabled"), (client.presence, "presence_not_enabled"),
                                 (client.presence_stats, "presence_not_enabled")):
                with pytest.raises(APIError) as info:
                    await method(LOBBY)
                assert (info.value.code, info.value.status) == (code, 400)
            # Concurrent calls take turns on the one connection.
            results = await asyncio.gather(*(client.publish(LOBBY, i) for i in range(20)))
            assert results == [{}] * 20
            assert len(gw.api.connections) == 1
            assert await client.disconnect(client=conn) == {"closed": 1}
        assert [await recv_json(ws) for _ in range(3)] == [envelope(LOBBY, "a"), envelope(LOBBY, "b"),
                                                           {"channel": "news", "event": "unsubscribed"}]
        assert [await recv_json(ws) for _ in range(20)] == [envelope(LOBBY, i) for i in range(20)]
        await expect("left")


async def test_errors_are_api_errors_with_the_servers_code_and_message():
    async with served() as gw:
        async with AsyncClient(http_url(gw), KEY) as client:
            with pytest.raises(APIError) as info:
                await client.publish("a b", 1)
            assert (info.value.code, info.value.status) == ("bad_request", 400)
            assert info.value.message.startswith("channel: channel name 'a b'")
            assert str(info.value).startswith("400 bad_request: channel:")
        async with AsyncClient(http_url(gw), "wrong") as client:
            for _ in range(2):  # the server closes after a 401: the next call connects again
                with pytest.raises(APIError) as info:
                    await client.channels()
                assert (info.value.code, info.value.status) == ("unauthorized", 401)

        def sync_errors() -> list[tuple[str, int]]:
            out = []
            with Client(http_url(gw), "wrong") as client:
                for _ in range(2):
                    try:
                        client.channels()
                    except APIError as exc:
                        out.append((exc.code, exc.status))
            with Client(http_url(gw), KEY) as client:
                try:
                    client.subscribe("nope", "a")
                except APIError as exc:
                    out.append((exc.code, exc.status))
            return out

        assert await asyncio.to_thread(sync_errors) == [("unauthorized", 401)] * 2 + [("bad_request", 400)]


async def test_an_api_that_is_off_is_an_api_error():
    async with running(relay_app(lambda req, res: None)) as gw:
        async with AsyncClient(http_url(gw), KEY) as client:
            with pytest.raises(APIError) as info:
                await client.channels()
            assert (info.value.code, info.value.status) == ("not_found", 404)
            assert "WSRELAY_API_KEY" in info.value.message


async def test_a_connection_closed_by_the_server_is_replaced_once():
    async with served() as gw:
        async with AsyncClient(http_url(gw), KEY) as client:
            assert await client.channels() == {"channels": {}}
            gw.api.close_all()  # as an idle timeout or a restart would
            await asyncio.sleep(0.05)
            assert await client.channels() == {"channels": {}}

        def sync_calls() -> list[Any]:
            with Client(http_url(gw), KEY) as client:
                first = client.channels()
                gw.api.loop.call_soon_threadsafe(gw.api.close_all)
                return [first, client.channels()]

        assert await asyncio.to_thread(sync_calls) == [{"channels": {}}] * 2
        assert gw.api.requests["channels", 200] == 4


async def test_a_server_that_does_not_answer_times_out():
    # A listener that accepts and never answers.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        async with AsyncClient(f"http://{host}:{port}", KEY, timeout=0.3) as client:
            with pytest.raises(asyncio.TimeoutError):
                await client.channels()

        def sync_call() -> None:
            with Client(f"http://{host}:{port}", KEY, timeout=0.3) as client:
                client.channels()

        with pytest.raises(TimeoutError):
            await asyncio.to_thread(sync_call)
    finally:
        server.close()


async def test_a_base_path_in_the_url_is_kept():
    async with served() as gw:
        client = AsyncClient(http_url(gw) + "/", KEY)
        assert client.base == "/api/"
        assert await client.channels() == {"channels": {}}
        await client.close()
        assert Client(http_url(gw) + "/relay", KEY).base == "/relay/api/"


def test_the_results_are_json_as_the_server_sent_them():
    from wsrelay.client import _result

    assert _result(200, json.dumps({"result": [1, {"a": None}]}).encode()) == [1, {"a": None}]
    with pytest.raises(APIError) as info:
        _result(502, b"<html>bad gateway</html>")
    assert (info.value.code, info.value.status) == ("http_error", 502)
