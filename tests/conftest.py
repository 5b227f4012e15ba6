"""Every ``async def`` test runs on a fresh uvloop loop, and must leave no
process behind (the node's table holds only the system process). Every
process function of tests/procs.py is registered for every test, and the
fixtures shared by several files are defined here, once.

How to start a gateway: tests/harness.py; the apps: tests/apps.py; the raw
client: tests/wsclient.py; the cluster's nodes: tests/cluster_support.py."""

from __future__ import annotations

import asyncio
import inspect
from typing import Iterator

import pytest
import uvloop

from tests import procs  # noqa: F401  (registers the process functions of every test)
from tests.harness import end_loop, leaked_processes
from wsrelay.cluster.broker import Broker

DEFAULT_TIMEOUT = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "timeout(seconds): time limit of an async test")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    marker = pyfuncitem.get_closest_marker("timeout")
    timeout = marker.args[0] if marker else DEFAULT_TIMEOUT
    loop = uvloop.new_event_loop()
    leaked: list = []
    try:
        loop.run_until_complete(asyncio.wait_for(fn(**kwargs), timeout))
        leaked = leaked_processes()
    finally:
        end_loop(loop)
    if leaked:
        pytest.fail(f"test left processes running: {leaked}")
    return True


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A private nats-server of the test's own (wsrelay/cluster/broker.py), for
    the cluster tests; stopped after the test."""
    with Broker() as b:
        yield b
