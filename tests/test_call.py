"""process.call and msg.reply on one node (docs/guide.md, "Calls: a request
and its reply"): the reply, every way a call ends without one, and that
nothing of a call (its waiter, its monitor) outlives it."""

from __future__ import annotations

import asyncio

import pytest

import wsrelay
from tests.apps import relay_app, relay_handler
from tests.harness import expect, running
from tests.wsclient import RawWebSocket
from wsrelay import EXIT, CallError, process


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
    srv = process.spawn("test:call_server")
    before = table_size()
    assert await process.call(srv, "hello", {"x": [1, 2]}) == ("hello", {"x": [1, 2]})
    assert await process.call(str(srv), "text form", 3) == ("text form", 3)
    assert table_size() == before
    # No EXIT of the callee reaches anyone once the call is over.
    await stop(srv)
    assert process.inbox().receive_nowait() is None


async def test_a_call_is_a_coroutine_sent_when_first_awaited():
    srv = process.spawn("test:call_server")
    before = table_size()
    pending = process.call(srv, "later", 1)
    assert asyncio.iscoroutine(pending)
    assert table_size() == before  # nothing sent yet: no waiter
    assert await asyncio.create_task(pending) == ("later", 1)
    with pytest.raises(RuntimeError, match="already awaited"):
        await pending
    assert await asyncio.wait_for(process.call(srv, "within", None), 5) == ("within", None)
    never = process.call(srv, "never awaited")
    never.close()
    assert table_size() == before
    await stop(srv)


async def test_a_call_by_name():
    srv = process.spawn("test:call_server")
    process.register("call_server", srv)
    assert await process.call("call_server", "by name") == ("by name", None)
    await stop(srv)


async def test_a_callee_that_raises_gives_its_reason_and_error():
    srv = process.spawn("test:call_server")
    before = table_size()
    with pytest.raises(CallError) as info:
        await process.call(srv, "raise")
    assert info.value.reason == "error" and info.value.pid == srv
    assert isinstance(info.value.error, RuntimeError)
    assert info.value.__cause__ is info.value.error
    assert table_size() == before - 1


async def test_a_callee_that_returns_without_replying_is_a_normal_exit():
    srv = process.spawn("test:call_server")
    with pytest.raises(CallError, match="normal") as info:
        await process.call(srv, "return")
    assert info.value.reason == "normal"


async def test_a_terminated_callee_gives_the_termination_reason():
    srv = process.spawn("test:call_server")
    task = asyncio.ensure_future(process.call(srv, "hold", process.self()))
    await receive("holding")
    process.terminate(srv, "shut down")
    with pytest.raises(CallError) as info:
        await task
    assert info.value.reason == "shut down"


async def test_a_dead_pid_or_an_unknown_name_is_noproc():
    srv = process.spawn_monitored("test:call_server")
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
    slow = process.spawn("test:call_late", None, 0.2, me)
    before, dropped = table_size(), node.counters.call_replies_dropped
    with pytest.raises(TimeoutError, match="within 0.05 s"):
        await process.call(slow, "t", timeout=0.05)
    assert table_size() == before
    assert (await receive("replied")).payload is False
    assert node.counters.call_replies_dropped == dropped + 1
    # The late reply is in nobody's inbox (msg.reply dropped it, and said so).
    assert process.inbox().receive_nowait() is None


async def test_calls_with_different_timeouts_each_time_out_at_their_own():
    # The calls of a loop share one timer, at the first deadline that still
    # has calls: a shorter timeout set after a longer one is not kept waiting
    # for it, and calls that came and went before leave it nothing to wait for.
    srv = process.spawn("test:call_server")
    before = table_size()
    for i in range(20):
        assert await process.call(srv, "quick", i, timeout=0.05) == ("quick", i)
    loop = asyncio.get_running_loop()
    long = asyncio.ensure_future(process.call(srv, "hold", process.self(), timeout=30))
    await receive("holding")
    started = loop.time()
    with pytest.raises(TimeoutError, match="within 0.2 s"):
        await process.call(srv, "hold", None, timeout=0.2)
    # Not before its timeout; 1e-9 s for the subtraction's rounding (the loop's
    # clock counts milliseconds: 4315.355 - 4315.155 is 0.19999999999982 as floats).
    assert 0.2 - 1e-9 <= loop.time() - started < 5
    with pytest.raises(TimeoutError, match="within 0.1 s"):
        await process.call(srv, "hold", None, timeout=0.1)
    assert not long.done()
    long.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long
    assert table_size() == before
    await stop(srv)


async def test_a_second_reply_is_dropped_and_counted():
    node = wsrelay.node()
    srv = process.spawn("test:call_server")
    dropped = node.counters.call_replies_dropped
    assert await process.call(srv, "twice") == ("twice", None)
    assert await process.call(srv, "after") == ("after", None)
    assert node.counters.call_replies_dropped == dropped + 1
    assert process.inbox().receive_nowait() is None
    await stop(srv)


async def test_a_cancelled_caller_leaves_no_waiter_and_no_monitor():
    srv = process.spawn("test:call_server")
    before = table_size()
    task = asyncio.ensure_future(process.call(srv, "hold", process.self(), timeout=None))
    await receive("holding")
    assert table_size() == before + 1  # the waiter, for the call's duration
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert table_size() == before
    # Its monitor went with it: the callee's end tells the system process
    # nothing (a monitor of our own, set after, is the one EXIT that comes).
    process.terminate(srv, "done")
    process.monitor(srv)
    assert (await receive(EXIT)).payload["pid"] == srv
    assert process.inbox().receive_nowait() is None


async def test_a_terminated_calling_process_leaves_nothing_behind():
    srv = process.spawn("test:call_server")
    before = table_size()
    holder = process.spawn_monitored("test:busy_caller", None, srv, process.self(), True)
    await receive("ready")
    process.send(holder, "go")
    await receive("holding")
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
    coll = process.spawn("test:call_collect", None, count, order, me)
    before = table_size()
    results = await asyncio.gather(*(process.call(coll, "q", i) for i in range(count)))
    assert results == [("answer", i, str(me)) for i in range(count)]
    assert (await receive("answered")).payload == count
    assert table_size() == before - 1  # the collector ended; no waiter is left


async def test_many_concurrent_calls_from_several_processes_each_get_their_own_reply():
    callers, per = 5, 40
    me = process.self()
    coll = process.spawn("test:call_collect", None, callers * per, "shuffled", me)
    pids = [process.spawn("test:caller", None, coll, per, me) for _ in range(callers)]
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
    callee = process.spawn("test:answer_after", None, me)
    caller_pid = process.spawn("test:busy_caller", None, callee, me)
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
    srv = process.spawn("test:call_server")
    process.send(process.self(), "plain")
    msg = await receive("plain")
    with pytest.raises(ValueError, match="not a call"):
        msg.reply(1)
    with pytest.raises(ValueError, match="not a call"):
        wsrelay.Message("t", 1).reply(2)
    await stop(srv)


async def test_calls_that_are_refused_at_once():
    srv = process.spawn("test:call_server")
    before = table_size()
    with pytest.raises(ValueError, match="reserved"):
        await process.call(srv, "@reply")
    with pytest.raises(ValueError, match="timeout"):
        await process.call(srv, "t", timeout=-1)
    assert table_size() == before
    await stop(srv)


async def test_a_process_cannot_call_itself():
    process.spawn("test:call_self", None, process.self())
    assert "cannot call itself" in (await receive("refused")).payload


async def test_a_websocket_connection_takes_no_calls():
    async with running(relay_app(relay_handler("relay:tagged_echo", process.self()))) as gw:
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
