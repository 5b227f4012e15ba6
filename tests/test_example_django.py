"""examples/django, run as its README says: `wsrelay serve
examples/django/gateway/app.yaml` with WSRELAY_API_KEY, the Django
development server (`manage.py runserver --noreload`) and the task's script
(`python -m notify_site.tasks`), each in a process of its own; real
WebSocket subscribers, real HTTP requests to the Django view.

Nothing sleeps: every wait is for a line a process prints, a frame, an HTTP
answer or the end of a process, with a generous upper bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from typing import Any, Iterator

import httpx
import websockets

from tests.harness import REPO, WSRELAY, ServerProcess
from wsrelay import Pid
from wsrelay.client import Client

# The machine has 2 shared cores: generous bounds, strict conditions.
TIMEOUT = 20.0
EXAMPLE = REPO / "examples" / "django"
KEY = "django-example-key"
# runserver prints the address it was given: the test picks the port.
DJANGO_READY = r"Starting development server at http://(127\.0\.0\.1):(\d+)/"


@contextlib.contextmanager
def gateway(**env: str) -> Iterator[ServerProcess]:
    """The example's wsrelay side, its server API on; SIGTERM must exit 0."""
    command = [WSRELAY, "serve", "examples/django/gateway/app.yaml", "--addr", "127.0.0.1:0"]
    with ServerProcess(command, env={"WSRELAY_API_KEY": KEY, **env}) as server:
        yield server
        code = server.stop()
        assert code == 0, server.output()


def site_env(relay: ServerProcess, key: str = KEY) -> dict[str, str]:
    """What the README's Django commands are given: the gateway and its key."""
    return {"WSRELAY_URL": relay.url("", "http"), "WSRELAY_API_KEY": key}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def django_site(relay: ServerProcess, key: str = KEY) -> Iterator[str]:
    """`python manage.py runserver --noreload 127.0.0.1:PORT` in
    examples/django; its base URL."""
    command = [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{free_port()}"]
    with ServerProcess(command, env=site_env(relay, key), cwd=EXAMPLE, ready=DJANGO_READY) as site:
        yield f"http://{site.host}:{site.port}"


async def run_task(relay: ServerProcess, user: str, text: str) -> None:
    """`python -m notify_site.tasks USER TEXT`, to its end."""
    command = [sys.executable, "-m", "notify_site.tasks", user, text]
    task = ServerProcess(command, env=site_env(relay), cwd=EXAMPLE, ready=None)
    try:
        code = await task.exited(TIMEOUT)
    finally:
        task.kill()
    assert code == 0, task.output()
    assert task.stdout == [f"notified {user}"], task.output()


async def notify(site: str, user: str, text: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=site, timeout=TIMEOUT) as http:
        return await http.post(f"/notify/{user}", content=json.dumps({"text": text}))


async def subscribe(relay: ServerProcess, user: str) -> tuple[Any, Pid]:
    """A socket of ``user``'s, and its connection's PID, which the gateway's
    process tells it first."""
    ws = await websockets.connect(relay.url(f"/ws/notifications?user={user}"), open_timeout=TIMEOUT)
    hello = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    return ws, Pid.parse(hello["connected"])


async def publication(ws: Any) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


def envelope(user: str, text: str, source: str) -> dict[str, Any]:
    return {"channel": f"user:{user}", "event": "publication", "data": {"text": text, "from": source}}


async def test_the_view_and_the_task_reach_the_users_sockets_and_no_other():
    with gateway() as relay, django_site(relay) as site:
        first, _ = await subscribe(relay, "42")
        second, _ = await subscribe(relay, "42")
        other, _ = await subscribe(relay, "43")
        async with first, second, other:
            res = await notify(site, "42", "your order has shipped")
            assert (res.status_code, res.json()) == (200, {"notified": "42"})
            shipped = envelope("42", "your order has shipped", "django")
            assert await publication(first) == shipped
            assert await publication(second) == shipped

            await run_task(relay, "42", "your invoice is ready")
            invoice = envelope("42", "your invoice is ready", "task")
            assert await publication(first) == invoice
            assert await publication(second) == invoice

            # user 43 heard nothing of 42's: the first thing it gets is its own.
            res = await notify(site, "43", "welcome")
            assert res.status_code == 200, res.text
            assert await publication(other) == envelope("43", "welcome", "django")

            # The view's own refusals; nothing is published.
            res = await notify(site, "a b", "x")
            assert res.status_code == 404, res.text
            async with httpx.AsyncClient(base_url=site, timeout=TIMEOUT) as http:
                assert (await http.post("/notify/42", content=b"not json")).status_code == 400
                assert (await http.get("/notify/42")).status_code == 405


async def test_a_wrong_key_is_a_502_naming_wsrelays_refusal():
    with gateway() as relay, django_site(relay, key="not-the-key") as site:
        res = await notify(site, "42", "hello")
        assert res.status_code == 502, res.text
        assert "unauthorized" in res.json()["error"], res.text


async def test_two_workers_each_subscriber_gets_each_publication_once():
    with gateway(WSRELAY_WORKERS="2", WSRELAY_NODE="web") as relay, django_site(relay) as site:
        sockets: dict[str, Any] = {}
        opened = []
        try:
            # New sockets until both workers hold one (the kernel's choice is
            # a hash of each connection).
            for _ in range(20):
                ws, pid = await subscribe(relay, "7")
                opened.append(ws)
                sockets.setdefault(pid.node, ws)
                if len(sockets) == 2:
                    break
            assert len(sockets) == 2 and all(node.startswith("web-") for node in sockets), sorted(sockets)

            res = await notify(site, "7", "from the view")
            assert res.status_code == 200, res.text
            await run_task(relay, "7", "from the task")
            # The view's and the task's requests may have reached different
            # workers: between them, no order is promised.
            expected = [envelope("7", "from the view", "django"), envelope("7", "from the task", "task")]
            for ws in opened:
                got = [await publication(ws), await publication(ws)]
                assert sorted(got, key=json.dumps) == sorted(expected, key=json.dumps), got

            # One client, one connection, one worker: one publisher, whose
            # publications arrive in order. The last one arrives next, with
            # no second copy of the first before it.
            with Client(relay.url("", "http"), KEY) as client:
                for text in ("once", "last"):
                    await asyncio.to_thread(client.publish, "user:7", {"text": text, "from": "test"})
            for ws in opened:
                assert await publication(ws) == envelope("7", "once", "test")
                assert await publication(ws) == envelope("7", "last", "test")
        finally:
            for ws in opened:
                await ws.close()
