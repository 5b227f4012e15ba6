"""A connection's life as a state machine (wsrelay/_core/relay.pyx): the table
of legal moves, checked without sockets through the core's test hooks. Every
move the table has is made through Connection._enter; every other one is
refused and leaves the state as it was. One real connection is then walked
along the main path; the behaviour along every move is tested over real
sockets elsewhere (test_relay_ws, test_core_regressions, test_hostile)."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque

import pytest

import wsrelay
from tests.apps import relay_app, relay_handler
from tests.harness import expect, running, until
from tests.wsclient import RawWebSocket
from wsrelay import process
from wsrelay._core.relay import STATES, Connection, _enter_for_test, _legal_moves

# The life as the top of relay.pyx draws it, written out again here so that a
# change to the table is a change this test must be told about.
LIFE = {
    "prepared": {"open"},
    "open": {"paused", "closing", "disconnecting"},
    "paused": {"open", "closing", "disconnecting"},
    "closing": {"disconnecting", "closed"},
    "disconnecting": {"closed"},
    "closed": set(),
}

ALL_MOVES = list(itertools.product(STATES, STATES))
LEGAL = [(a, b) for a, b in ALL_MOVES if b in LIFE[a]]
ILLEGAL = [(a, b) for a, b in ALL_MOVES if b not in LIFE[a]]


def path_to(state: str) -> list[str]:
    """The shortest run of legal moves from PREPARED to ``state``."""
    paths = {"prepared": []}
    todo = deque(["prepared"])
    while todo:
        here = todo.popleft()
        for there in sorted(LIFE[here]):
            if there not in paths:
                paths[there] = [*paths[here], there]
                todo.append(there)
    return paths[state]


def connection_in(state: str) -> Connection:
    """A connection with no socket, moved to ``state`` by legal moves."""
    conn = Connection.__new__(Connection)
    assert conn.state_name == "prepared"
    for step in path_to(state):
        assert _enter_for_test(conn, step) == step
    return conn


def test_the_states_are_the_life_in_order():
    assert STATES == ("prepared", "open", "paused", "closing", "disconnecting", "closed")


def test_the_core_table_is_the_life():
    assert _legal_moves() == LIFE


def test_every_state_is_reached_and_only_closed_ends_the_life():
    for state in STATES:
        assert connection_in(state).state_name == state
    assert [s for s in STATES if not LIFE[s]] == ["closed"]


def test_no_state_moves_to_itself_or_back_to_prepared():
    for state in STATES:
        assert state not in LIFE[state]
        assert "prepared" not in LIFE[state]


@pytest.mark.parametrize("before, after", LEGAL)
def test_a_legal_move_is_made(before, after):
    conn = connection_in(before)
    assert _enter_for_test(conn, after) == after
    assert conn.state_name == after


@pytest.mark.parametrize("before, after", ILLEGAL)
def test_an_illegal_move_is_refused_and_the_state_kept(before, after):
    conn = connection_in(before)
    with pytest.raises(RuntimeError, match=f"no move from {before} to {after}"):
        _enter_for_test(conn, after)
    assert conn.state_name == before


def test_an_unknown_state_name_is_refused():
    with pytest.raises(ValueError):
        _enter_for_test(Connection.__new__(Connection), "half-open")


async def test_a_connection_over_a_socket_goes_open_paused_open_closing_closed():
    gate = asyncio.Event()
    counters = wsrelay.node().counters
    app = relay_app(relay_handler("relay:gated", process.self(), gate))
    async with running(app, close_timeout=30) as gw:
        ws = await RawWebSocket.connect(gw, "/ws/chat")
        _, target = await expect("ready")
        (conn,) = gw.services["test:gateway"].relay.connections
        assert conn.state_name == "open"
        # Its ws.join takes a slot of the stuck target's mailbox; one more message than fits.
        pauses = counters.relay_backpressure_pauses
        for n in range(wsrelay.node().mailbox_capacity):
            ws.send_text(str(n))
        await ws.drain()
        await until(lambda: counters.relay_backpressure_pauses > pauses, what="the connection pausing")
        assert conn.state_name == "paused"
        gate.set()
        await expect("backlog")
        await until(lambda: conn.state_name == "open", what="the connection resuming")
        client = conn.pid
        process.monitor(client)
        assert process.send(client, "ws.close", {"code": 1000}) is True
        assert conn.state_name == "closing"
        close = await ws.answer_close()
        assert close.close_code == 1000
        assert (await expect(wsrelay.EXIT))["reason"] == "server_closed"
        await until(lambda: conn.state_name == "closed", what="the socket going")
        process.send(target, "exit")
