"""process.call and msg.reply on one node (docs/guide.md, "Calls: a request
and its reply"): the reply, every way a call ends without one, and that
nothing of a call (its waiter, its monitor) outlives it."""

from __future__ import annotations

import asyncio
import random

import pytest

import wsrelay
from tests import procs  # noqa: F401  (registers test:ws_echo and test:sleeper)
from tests.support import expect, relay_app, relay_handler, running
from tests.wsclient import RawWebSocket
from wsrelay import EXIT, CallError, process


@wsrelay.register("call:server")
async def server() -> None:
    """Replies to every call with (topic, payload); ``raise`` raises,
    ``return`` returns without replying, ``hold`` is never answered, and a
    ``twice`` call is answered two times."""
    async for msg in process.inbox():
        if msg.topic == "raise":
            raise RuntimeError("the server fails on purpose")
        if msg.topic == "return":
            return
        if msg.topic == "hold":
            continue
        assert msg.reply((msg.topic, msg.payload)) is True
        if msg.topic == "twice":
            assert msg.reply("again") is False


@wsrelay.register("call:collect")
async def collect(count: int, order: str, observer) -> None:
    """Takes ``count`` calls, then answers them all in ``order`` (reversed
    or shuffled), each with its own payload; tells ``observer`` when done."""
    inbox = process.inbox()
    calls = [await inbox.receive() for _ in range(count)]
    if order == "reversed":
        calls.reverse()
    else:
        random.Random(7).shuffle(calls)
    for msg in calls:
        msg.reply(("answer", msg.payload, str(msg.sender)))
    process.send(observer, "answered", count)


@wsrelay.register("call:late")
async def late(delay: float, observer) -> None:
    """Answers its one call after ``delay`` s; tells ``observer`` what
    msg.reply returned."""
    msg = await process.inbox().receive()
    await asyncio.sleep(delay)
    process.send(observer, "replied", msg.reply("too late"))


@wsrelay.register("call:caller")
async def caller(dest, count: int, observer) -> None:
    """Makes ``count`` concurrent calls to ``dest`` from this one process
    (each on its own task) and sends ``observer`` what came back."""
    me = str(process.self())
    results = await asyncio.gather(*(process.call(dest, "q", (me, i)) for i in range(count)))
    process.send(observer, "results", results)


@wsrelay.register("call:busy_caller")
async def busy_caller(dest, observer) -> None:
    """Calls ``dest`` while other messages arrive in its inbox; then reports
    the reply and its inbox, in order."""
    process.send(observer, "ready", process.self())
    inbox = process.inbox()
    assert (await inbox.receive()).topic == "go"
    value = await process.call(dest, "hold", None)
    rest = [(msg.topic, msg.payload) for msg in await inbox.receive_many()]
    process.send(observer, "done", (value, rest))


@wsrelay.register("call:answer_after")
async def answer_after(signal_to) -> None:
    """Takes a call, asks ``signal_to`` for a go (a chance to fill the
    caller's inbox meanwhile), then answers."""
    msg = await process.inbox().receive()
    process.send(signal_to, "called")
    while (await process.inbox().receive()).topic != "answer":
        pass
    msg.reply("slow answer")


def table_size() -> int:
    return wsrelay.node().process_count()


async def receive(topic: str, timeout: float = 10.0):
    msg = await process.inbox().receive(timeout=timeout)
    assert msg.topic == topic, msg
    return msg


async def stop(pid) -> None:
    process.monitor(pid)
    process.terminate(pid, "done")
    await receive(EXIT)


async def test_a_call_returns_the_reply_and_leaves_nothing_behind():
    srv = process.spawn("call:server")
    before = table_size()
    assert await process.call(srv, "hello", {"x": [1, 2]}) == ("hello", {"x": [1, 2]})
    assert await process.call(str(srv), "text form", 3) == ("text form", 3)
    assert table_size() == before
    # No EXIT of the callee reaches anyone once the call is over.
    await stop(srv)
    assert process.inbox().receive_nowait() is None


async def test_a_call_by_name():
    srv = process.spawn("call:server")
    process.register("call_server", srv)
    assert await process.call("call_server", "by name") == ("by name", None)
    await stop(srv)


async def test_a_callee_that_raises_gives_its_reason_and_error():
    srv = process.spawn("call:server")
    before = table_size()
    with pytest.raises(CallError) as info:
        await process.call(srv, "raise")
    assert info.value.reason == "error" and info.value.pid == srv
    assert isinstance(info.value.error, RuntimeError)
    assert info.value.__cause__ is info.value.error
    assert table_size() == before - 1


async def test_a_callee_that_returns_without_replying_is_a_normal_exit():
    srv = process.spawn("call:server")
    with pytest.raises(CallError, match="normal") as info:
        await process.call(srv, "return")
    assert info.value.reason == "normal"


async def test_a_terminated_callee_gives_the_termination_reason():
    srv = process.spawn("call:server")
    task = asyncio.ensure_future(process.call(srv, "hold"))
    await asyncio.sleep(0.01)
    process.terminate(srv, "shut down")
    with pytest.raises(CallError) as info:
        await task
    assert info.value.reason == "shut down"


async def test_a_dead_pid_or_an_unknown_name_is_noproc():
    srv = process.spawn_monitored("call:server")
    process.send(srv, "return")
    await receive(EXIT)
    before = table_size()
    with pytest.raises(CallError, match="noproc") as info:
        await process.call(srv, "t")
    assert (info.value.reason, info.value.pid) == ("noproc", srv)
    with pytest.raises(CallError, match="noproc") as info:
        await process.call(str(srv), "t")
    assert (info.value.reason, info.value.pid) == ("noproc", srv)
    # As a send to an unknown name returns False, a call to one is noproc.
    assert process.send("nobody_has_this_name", "t") is False
    with pytest.raises(CallError) as info:
        await process.call("nobody_has_this_name", "t")
    assert (info.value.reason, info.value.pid) == ("noproc", "nobody_has_this_name")
    assert table_size() == before


async def test_a_timeout_then_the_late_reply_is_dropped_and_counted():
    node = wsrelay.node()
    me = process.self()
    slow = process.spawn("call:late", None, 0.2, me)
    before, dropped = table_size(), node.counters.call_replies_dropped
    with pytest.raises(TimeoutError, match="within 0.05 s"):
        await process.call(slow, "t", timeout=0.05)
    assert table_size() == before
    assert (await receive("replied")).payload is False
    assert node.counters.call_replies_dropped == dropped + 1
    # The late reply is in nobody's inbox.
    await asyncio.sleep(0.01)
    assert process.inbox().receive_nowait() is None


async def test_a_second_reply_is_dropped_and_counted():
    node = wsrelay.node()
    srv = process.spawn("call:server")
    dropped = node.counters.call_replies_dropped
    assert await process.call(srv, "twice") == ("twice", None)
    assert await process.call(srv, "after") == ("after", None)
    assert node.counters.call_replies_dropped == dropped + 1
    assert process.inbox().receive_nowait() is None
    await stop(srv)


async def test_a_cancelled_caller_leaves_no_waiter_and_no_monitor():
    srv = process.spawn("call:server")
    before = table_size()
    task = asyncio.ensure_future(process.call(srv, "hold", timeout=None))
    await asyncio.sleep(0.01)
    assert table_size() == before + 1  # the waiter, for the call's duration
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert table_size() == before
    # Its monitor went with it: the callee's end tells the system process nothing.
    process.terminate(srv, "done")
    await asyncio.sleep(0.01)
    assert process.inbox().receive_nowait() is None


async def test_a_terminated_calling_process_leaves_nothing_behind():
    srv = process.spawn("call:server")
    before = table_size()
    holder = process.spawn_monitored("call:busy_caller", None, srv, process.self())
    await receive("ready")
    process.send(holder, "go")
    await asyncio.sleep(0.01)
    assert table_size() == before + 2  # the caller and its waiter
    process.terminate(holder, "bye")
    assert (await receive(EXIT)).payload["reason"] == "bye"
    await asyncio.sleep(0)
    assert table_size() == before
    await stop(srv)


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
async def test_many_concurrent_calls_from_the_system_process_each_get_their_own_reply(order):
    count = 200
    me = process.self()
    coll = process.spawn("call:collect", None, count, order, me)
    before = table_size()
    results = await asyncio.gather(*(process.call(coll, "q", i) for i in range(count)))
    assert results == [("answer", i, str(me)) for i in range(count)]
    assert (await receive("answered")).payload == count
    assert table_size() == before - 1  # the collector ended; no waiter is left


async def test_many_concurrent_calls_from_several_processes_each_get_their_own_reply():
    callers, per = 5, 40
    me = process.self()
    coll = process.spawn("call:collect", None, callers * per, "shuffled", me)
    pids = [process.spawn("call:caller", None, coll, per, me) for _ in range(callers)]
    got = {}
    for _ in range(callers + 1):
        msg = await process.inbox().receive(timeout=10)
        if msg.topic == "results":
            got[str(msg.sender)] = msg.payload
        else:
            assert (msg.topic, msg.payload) == ("answered", callers * per)
    assert len(got) == callers
    for pid in pids:
        assert got[str(pid)] == [("answer", (str(pid), i), str(pid)) for i in range(per)]


async def test_other_messages_stay_in_the_callers_inbox_in_order():
    me = process.self()
    callee = process.spawn("call:answer_after", None, me)
    caller_pid = process.spawn("call:busy_caller", None, callee, me)
    assert (await receive("ready")).payload == caller_pid
    process.send(caller_pid, "go")
    await receive("called")
    for i in range(5):
        process.send(caller_pid, "other", i)
    process.send(callee, "answer")
    value, rest = (await receive("done")).payload
    assert value == "slow answer"
    assert rest == [("other", i) for i in range(5)]


async def test_reply_to_a_message_that_is_not_a_call():
    srv = process.spawn("call:server")
    process.send(process.self(), "plain")
    msg = await receive("plain")
    with pytest.raises(ValueError, match="not a call"):
        msg.reply(1)
    with pytest.raises(ValueError, match="not a call"):
        wsrelay.Message("t", 1).reply(2)
    await stop(srv)


async def test_calls_that_are_refused_at_once():
    srv = process.spawn("call:server")
    before = table_size()
    with pytest.raises(ValueError, match="reserved"):
        await process.call(srv, "@reply")
    with pytest.raises(ValueError, match="timeout"):
        await process.call(srv, "t", timeout=-1)
    assert table_size() == before
    await stop(srv)


@wsrelay.register("call:self")
async def call_self(observer) -> None:
    try:
        await process.call(process.self(), "t")
    except ValueError as exc:
        process.send(observer, "refused", str(exc))


async def test_a_process_cannot_call_itself():
    process.spawn("call:self", None, process.self())
    assert "cannot call itself" in (await receive("refused")).payload


async def test_a_websocket_connection_takes_no_calls():
    async with running(relay_app(relay_handler("test:ws_echo", process.self()))) as gw:
        ws = await RawWebSocket.connect(gw, "/ws/chat")
        client = (await expect("ws.join"))["client_pid"]
        before = table_size()
        with pytest.raises(ValueError, match="takes no calls"):
            await process.call(client, "ws.send", {"type": "text", "data": "x"})
        assert table_size() == before
        ws.close()
        await expect("ws.leave")


async def test_a_full_mailbox_refuses_the_request_with_mailbox_full():
    node = wsrelay.node()
    sleeper = process.spawn("test:sleeper")  # reads nothing
    for i in range(node.mailbox_capacity):
        process.send(sleeper, "fill", i)
    before, refused = table_size(), node.counters.mailbox_full
    with pytest.raises(wsrelay.MailboxFull):
        await process.call(sleeper, "t")
    assert table_size() == before
    assert node.counters.mailbox_full == refused + 1
    await stop(sleeper)
