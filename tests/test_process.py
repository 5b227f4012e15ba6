"""The process runtime, behaviour by behaviour of docs/guide.md section 9,
"Processes"."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource

import pytest
import uvloop

import wsrelay
from tests.fake_transport import FakeTransport, joined_node
from tests.harness import expect
from wsrelay import EXIT, LINK_DOWN, MailboxFull, NoTransport, Pid, process
from wsrelay._core.runtime import _runtime_log


async def receive(topic: str | None = None, timeout: float = 5.0):
    """The caller's next message (skipping none); checks its topic."""
    msg = await process.inbox().receive(timeout=timeout)
    if topic is not None:
        assert msg.topic == topic, msg
    return msg


async def spawn_forwarder(trap: bool = False, link_to=None) -> Pid:
    pid = process.spawn("test:forward", None, process.self(), trap, link_to)
    ready = await receive("ready")
    assert ready.payload == pid
    return pid


async def seen(topic: str | None = None):
    msg = await receive("seen")
    if topic is not None:
        assert msg.payload[0] == topic, msg.payload
    return msg.payload


# -- spawn --------------------------------------------------------------------


async def test_spawn_returns_a_pid_on_the_host():
    wsrelay.node().add_host("app:processes")
    pid = process.spawn("test:who", "app:processes", process.self())
    assert isinstance(pid, Pid)
    assert pid.host == "app:processes"
    assert str(pid).startswith("{app:processes|0x")
    msg = await receive("self")
    assert msg.payload == pid and msg.sender == pid


async def test_spawn_passes_arguments():
    process.spawn("test:args", None, process.self(), 1, "two", [3])
    assert (await receive("args")).payload == (1, "two", [3])


async def test_spawn_unknown_id_is_a_lookup_error():
    with pytest.raises(LookupError, match="no process function is registered as 'test:nope'"):
        process.spawn("test:nope")


async def test_spawn_unknown_host_is_a_lookup_error():
    with pytest.raises(LookupError, match="unknown process host 'nowhere'"):
        process.spawn("test:returns", "nowhere")


def test_register_refuses_plain_functions_and_bad_ids():
    with pytest.raises(TypeError, match="async def"):
        wsrelay.register("test:sync")(lambda: None)
    with pytest.raises(ValueError, match="namespace:name"):

        @wsrelay.register("nocolon")
        async def f():
            pass


async def test_pids_are_never_reused():
    seen_ids = set()
    for _ in range(200):
        pid = process.spawn_monitored("test:returns")
        assert pid.id not in seen_ids
        seen_ids.add(pid.id)
        assert (await receive(EXIT)).payload["pid"] == pid


async def test_spawn_monitored_sees_even_an_immediate_exit():
    pid = process.spawn_monitored("test:crash", None, "at once")
    msg = await receive(EXIT)
    assert msg.sender == pid
    assert msg.payload["pid"] == pid
    assert msg.payload["reason"] == "error"
    assert isinstance(msg.payload["error"], RuntimeError)
    assert str(msg.payload["error"]) == "at once"


async def test_spawn_linked_links_atomically():
    # The caller is the system process, which traps exits: it gets LINK_DOWN
    # even though the new process crashes on its first step.
    pid = process.spawn_linked("test:crash", None, "linked")
    msg = await receive(LINK_DOWN)
    assert msg.payload["pid"] == pid and msg.payload["reason"] == "error"
    assert str(msg.payload["error"]) == "linked"


# -- send ----------------------------------------------------------------------


async def test_send_accepts_pid_text_and_registered_name():
    echo = process.spawn("test:echo")
    assert process.send(echo, "a", 1) is True
    assert (await receive("echo")).payload == 1
    assert process.send(str(echo), "b", 2) is True
    assert (await receive("echo")).payload == 2
    process.register("echo-service", echo)
    assert process.send("echo-service", "c", 3) is True
    assert (await receive("echo")).payload == 3
    process.send(echo, "stop")


async def test_message_has_topic_payload_sender():
    echo = process.spawn("test:echo")
    process.send(echo, "ping", {"k": [1, 2]})
    msg = await receive()
    assert (msg.topic, msg.payload, msg.sender) == ("echo", {"k": [1, 2]}, echo)
    process.send(echo, "stop")


async def test_reserved_topics_are_refused():
    echo = process.spawn("test:echo")
    for topic in ["@exit", "@anything"]:
        with pytest.raises(ValueError, match="reserved"):
            process.send(echo, topic)
    with pytest.raises(TypeError, match="topic must be a str"):
        process.send(echo, 5)
    with pytest.raises(ValueError, match="must not be empty"):
        process.send(echo, "")
    process.send(echo, "stop")


async def test_send_to_an_exited_pid_is_a_no_op():
    pid = process.spawn_monitored("test:returns")
    await receive(EXIT)
    assert process.send(pid, "hello") is False
    assert process.send(str(pid), "hello") is False
    assert process.send("nobody-has-this-name", "hello") is False


async def test_send_to_malformed_pid_text_raises():
    with pytest.raises(ValueError, match="malformed PID"):
        process.send("{broken|0x1}", "hello")
    with pytest.raises(TypeError, match="expected a Pid"):
        process.send(12345, "hello")


async def test_order_per_sender_is_preserved():
    me = process.self()
    process.spawn("test:burst", None, me, 1000)
    got = [(await receive("n")).payload for _ in range(1000)]
    assert got == list(range(1000))
    # Two interleaved senders: each one's order holds.
    process.spawn("test:burst", None, me, 500)
    process.spawn("test:burst", None, me, 500)
    by_sender: dict = {}
    for _ in range(1000):
        msg = await receive("n")
        by_sender.setdefault(msg.sender, []).append(msg.payload)
    assert len(by_sender) == 2
    for values in by_sender.values():
        assert values == list(range(500))


async def test_full_mailbox_refuses_with_mailbox_full_and_counts():
    node = wsrelay.node()
    capacity = node.mailbox_capacity
    sleeper = process.spawn("test:sleeper")
    before = node.counters.mailbox_full
    for i in range(capacity):
        assert process.send(sleeper, "fill", i)
    with pytest.raises(MailboxFull) as info:
        process.send(sleeper, "one-too-many")
    assert info.value.pid == sleeper and info.value.capacity == capacity
    assert str(sleeper) in str(info.value)
    assert node.counters.mailbox_full == before + 1
    process.terminate(sleeper)


async def test_system_events_pass_a_full_mailbox():
    capacity = wsrelay.node().mailbox_capacity
    target = process.spawn("test:sleeper")
    gate = asyncio.Event()
    watcher = process.spawn_monitored("test:gated", None, process.self(), gate, target)
    await receive("ready")
    for i in range(capacity):
        process.send(watcher, "fill", i)
    with pytest.raises(MailboxFull):
        process.send(watcher, "refused")
    process.terminate(target)
    gate.set()
    topics = (await receive("batch")).payload
    assert topics == ["fill"] * capacity + [EXIT]
    await receive(EXIT)


def test_calling_the_runtime_without_a_running_loop_is_an_error():
    # A plain (not async) test: the runtime's own thread, and no loop running.
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        process.send("{local|0x00001}", "x")
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        process.spawn("test:returns")
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        process.self()
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        process.monitor("{local|0x00001}")


async def test_calling_the_runtime_from_another_thread_is_an_error():
    def outside():
        for call in (lambda: process.send("{local|0x00001}", "x"), lambda: process.spawn("test:returns"),
                     process.self, lambda: process.monitor("{local|0x00001}"), lambda: wsrelay.Group().add("x")):
            with pytest.raises(wsrelay.WrongThread, match="call_soon_threadsafe"):
                call()

    process.self()  # bind the runtime to this thread, as a gateway's start does
    await asyncio.get_running_loop().run_in_executor(None, outside)
    assert wsrelay.node().process_count() == 1


# -- receive -------------------------------------------------------------------


async def test_receive_timeout_raises_timeout_error():
    with pytest.raises(TimeoutError, match="within 0.05 s"):
        await process.inbox().receive(timeout=0.05)


async def test_receive_wakes_on_a_message_without_polling():
    echo = process.spawn("test:echo")
    waiting = asyncio.ensure_future(process.inbox().receive(timeout=5))
    await asyncio.sleep(0)
    assert not waiting.done()
    process.send(echo, "x", 42)
    assert (await waiting).payload == 42
    process.send(echo, "stop")


async def test_async_iteration_and_batch_draining():
    me = process.self()
    process.spawn_monitored("test:burst", None, me, 500)
    inbox = process.inbox()
    # The burst runs in one step, so one wake-up takes all 500 and the EXIT.
    batch = await inbox.receive_many()
    assert [m.payload for m in batch[:-1]] == list(range(500))
    assert batch[-1].topic == EXIT
    process.spawn("test:burst", None, me, 10)
    got = []
    async for msg in inbox:
        got.append(msg.payload)
        if len(got) == 10:
            break
    assert got == list(range(10))
    process.spawn("test:burst", None, me, 10)
    first = await inbox.receive_many(limit=4)
    assert [m.payload for m in first] == [0, 1, 2, 3]
    rest = await inbox.receive_many()
    assert [m.payload for m in rest] == list(range(4, 10))
    with pytest.raises(TimeoutError):
        await inbox.receive_many(timeout=0.01)


async def test_one_receiver_at_a_time():
    inbox = process.inbox()
    first = asyncio.ensure_future(inbox.receive(timeout=5))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already receiving"):
        await inbox.receive(timeout=1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_long_backlog_does_not_starve_other_processes():
    log: list = []
    gate = asyncio.Event()
    a = process.spawn_monitored("test:log_order", None, "a", 1000, log, gate)
    b = process.spawn_monitored("test:log_order", None, "b", 1000, log, gate)
    for i in range(1000):
        process.send(a, "n", i)
        process.send(b, "n", i)
    gate.set()
    await receive(EXIT)
    await receive(EXIT)
    assert sorted(log) == ["a"] * 1000 + ["b"] * 1000
    # Each process yields after a bounded run of messages: b starts long
    # before a has worked through its whole backlog.
    assert log.index("b") < 200, log.index("b")
    longest = max(len(run) for run in "".join(log).replace("ab", "a b").replace("ba", "b a").split())
    assert longest <= 65, longest


# -- monitors ------------------------------------------------------------------


async def test_monitor_gets_exit_with_reason():
    echo = process.spawn("test:echo")
    process.monitor(echo)
    process.send(echo, "stop")
    msg = await receive(EXIT)
    assert msg.payload == {"pid": echo, "reason": "normal", "error": None}
    assert msg.sender == echo


async def test_monitoring_a_dead_pid_gives_exit_at_once():
    pid = process.spawn_monitored("test:returns")
    await receive(EXIT)
    process.monitor(pid)
    msg = process.inbox().receive_nowait()
    assert msg is not None and msg.topic == EXIT
    assert msg.payload["pid"] == pid and msg.payload["reason"] == "noproc"
    process.monitor("{local|0xfffff0}")
    assert process.inbox().receive_nowait().payload["reason"] == "noproc"


async def test_unmonitor_stops_exit_events():
    echo = process.spawn("test:echo")
    process.monitor(echo)
    process.unmonitor(echo)
    process.send(echo, "stop")
    watcher = process.spawn_monitored("test:returns")
    msg = await receive(EXIT)
    assert msg.payload["pid"] == watcher  # the only EXIT: none for echo


async def test_exit_events_arrive_in_order_with_messages():
    target = process.spawn("test:sleeper")
    gate = asyncio.Event()
    watcher = process.spawn("test:gated", None, process.self(), gate, target)
    await receive("ready")
    process.send(watcher, "before")
    process.terminate(target)
    process.send(watcher, "after")
    gate.set()
    assert (await receive("batch")).payload == ["before", EXIT, "after"]
    assert not process.is_alive(watcher) or process.terminate(watcher)


async def test_exit_is_queued_behind_earlier_messages():
    me = process.self()
    pid = process.spawn_monitored("test:burst", None, me, 3)
    topics = [(await receive()).topic for _ in range(4)]
    assert topics == ["n", "n", "n", EXIT]
    assert pid


# -- links ---------------------------------------------------------------------


async def test_abnormal_exit_kills_a_linked_process():
    crasher = process.spawn("test:crash_on")
    victim = process.spawn_monitored("test:link_sleeper", None, process.self(), crasher)
    await receive("ready")
    process.send(crasher, "crash", "bad")
    msg = await receive(EXIT)
    assert msg.payload["pid"] == victim
    # Erlang semantics: the linked process ends with the same reason.
    assert msg.payload["reason"] == "error"
    assert str(msg.payload["error"]) == "bad"
    assert not process.is_alive(crasher)


async def test_trapping_process_gets_link_down_instead():
    crasher = process.spawn("test:crash_on")
    fwd = await spawn_forwarder(True, crasher)
    process.send(crasher, "crash", "bad")
    topic, payload, sender = await seen(LINK_DOWN)
    assert payload["pid"] == crasher and payload["reason"] == "error"
    assert isinstance(payload["error"], RuntimeError)
    assert sender == crasher
    assert process.is_alive(fwd)
    process.send(fwd, "stop")


async def test_normal_exit_does_not_kill_links():
    peer = process.spawn_monitored("test:crash_on")
    victim = process.spawn("test:link_sleeper", None, process.self(), peer)
    await receive("ready")
    process.send(peer, "stop")
    msg = await receive(EXIT)
    assert msg.payload["pid"] == peer and msg.payload["reason"] == "normal"
    assert process.is_alive(victim)
    process.terminate(victim)


async def test_unlink_stops_propagation():
    crasher = process.spawn_monitored("test:crash_on")
    fwd = await spawn_forwarder(False, crasher)
    process.send(fwd, "unlink", crasher)
    assert (await receive("unlinked")).payload == crasher
    process.send(crasher, "crash")
    assert (await receive(EXIT)).payload["pid"] == crasher
    assert process.is_alive(fwd)
    process.send(fwd, "stop")


async def test_link_to_a_dead_pid_raises():
    pid = process.spawn_monitored("test:returns")
    await receive(EXIT)
    with pytest.raises(ProcessLookupError, match="not alive"):
        process.link(pid)


async def test_links_cascade_through_chains():
    first = process.spawn("test:crash_on")
    chain = [first]
    for _ in range(2000):
        chain.append(process.spawn("test:link_sleeper", None, process.self(), chain[-1]))
        await receive("ready")
    process.monitor(chain[-1])
    process.send(first, "crash")
    msg = await receive(EXIT)
    assert msg.payload["pid"] == chain[-1]
    assert not any(process.is_alive(p) for p in chain)


async def test_an_exception_is_contained_to_its_process():
    node = wsrelay.node()
    bystander = process.spawn("test:echo")
    before = node.counters.processes_crashed
    pid = process.spawn_monitored("test:crash", None, "contained")
    msg = await receive(EXIT)
    assert msg.payload["pid"] == pid and str(msg.payload["error"]) == "contained"
    assert node.counters.processes_crashed == before + 1
    process.send(bystander, "still-there", 1)
    assert (await receive("echo")).payload == 1
    process.send(bystander, "stop")


# -- terminate / trap_exits / self ------------------------------------------------


async def test_terminate_with_reason():
    pid = process.spawn_monitored("test:sleeper")
    assert process.terminate(pid, reason="shutdown") is True
    msg = await receive(EXIT)
    assert msg.payload == {"pid": pid, "reason": "shutdown", "error": None}
    assert process.terminate(pid) is False
    with pytest.raises(ValueError, match="system process"):
        process.terminate(process.self())


async def test_trap_exits_returns_previous_setting():
    process.spawn("test:trap_report", None, process.self())
    assert (await receive("trap")).payload == (False, True)
    # The system process always traps.
    assert process.trap_exits(False) is True


async def test_self_outside_any_process_is_the_system_process():
    me = process.self()
    assert me == wsrelay.node().system.pid
    assert me.host == "system"
    process.spawn("test:who", None, me)
    assert (await receive("self")).payload != me


# -- names ---------------------------------------------------------------------


async def test_register_lookup_and_release_on_exit():
    pid = process.spawn_monitored("test:echo")
    process.register("room:lobby", pid)
    assert process.registry.lookup("room:lobby") == pid
    with pytest.raises(ValueError, match="already registered"):
        process.register("room:lobby", process.spawn("test:returns"))
    process.send("room:lobby", "stop")
    await receive(EXIT)
    assert process.registry.lookup("room:lobby") is None
    with pytest.raises(ValueError, match="invalid process name"):
        process.register("{bad")
    with pytest.raises(ProcessLookupError):
        process.register("ghost", pid)


# -- cluster seam ------------------------------------------------------------------


async def test_send_to_another_node_goes_to_the_transport():
    remote = Pid("app:processes", 5, "node2")
    with pytest.raises(NoTransport, match="node2"):
        process.send(remote, "hello")
    with joined_node(transport=FakeTransport(up={"node2": 0})) as (_, fake):
        assert process.send(str(remote), "hello", 1) is True
        assert fake.sent == [(remote, "hello", 1, process.self())]


# -- resources -----------------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() // 1024


@pytest.mark.timeout(120)
async def test_100k_spawn_exit_cycles_leave_table_and_memory_where_they_were():
    node = wsrelay.node()
    inbox = process.inbox()

    async def cycles(n: int) -> None:
        for _batch in range(n // 1000):
            for _ in range(1000):
                process.spawn_monitored("test:returns")
            for _ in range(1000):
                await inbox.receive(timeout=5)

    await cycles(10_000)  # warm up allocator pools and freelists
    gc.collect()
    table_before = node.process_count()
    rss_before = _rss_kib()
    await cycles(100_000)
    gc.collect()
    assert node.process_count() == table_before == 1
    growth = _rss_kib() - rss_before
    assert growth < 2048, f"RSS grew by {growth} KiB over 100k spawn/exit cycles"


# -- failures while telling of an exit; refusals counted ------------------------------------------


def test_an_error_while_signalling_one_monitor_does_not_stop_the_exit_cascade(caplog):
    """A monitor whose loop was closed under it cannot be woken (its loop
    refuses the callback). That error must not end the exit cascade, or the
    monitors and links after it would never hear of the exit: it is logged,
    counted, and the cascade goes on."""
    caplog.set_level(logging.ERROR, logger="wsrelay.runtime")
    main, doomed = uvloop.new_event_loop(), uvloop.new_event_loop()
    errors = wsrelay.node().counters.runtime_errors

    async def start():
        target = process.spawn("test:sleeper")
        linked = process.spawn("test:link_sleeper", None, process.self(), target)
        assert await expect("ready") == linked
        watcher = process.spawn("test:waiting", None, target)
        await asyncio.sleep(0)  # it starts and monitors
        process.monitor(target)
        return target, linked, watcher

    async def orphan(target):
        pid = process.spawn("test:waiting", None, target)
        await asyncio.sleep(0)  # it monitors the target and waits on this loop
        return pid

    async def end(target, linked, watcher):
        process.monitor(linked)
        process.monitor(watcher)
        process.terminate(target, "ended")
        events = {}
        for _ in range(3):
            msg = await process.inbox().receive(timeout=5)
            events[msg.payload["pid"]] = msg.payload["reason"]
        return events

    try:
        target, linked, watcher = main.run_until_complete(start())
        stranded = doomed.run_until_complete(orphan(target))
        doomed.close()
        events = main.run_until_complete(end(target, linked, watcher))
        # The test's own monitor, the watcher's (it got EXIT and returned)
        # and the link (it killed the linked process) all went through.
        assert events == {target: "ended", linked: "ended", watcher: "normal"}
        assert wsrelay.node().counters.runtime_errors - errors == 1
        assert any("runtime error while telling" in r.getMessage() for r in caplog.records)
    finally:
        async def strand_ends():
            process.terminate(stranded)
            assert not process.is_alive(stranded)

        main.run_until_complete(strand_ends())
        main.run_until_complete(main.shutdown_asyncgens())
        main.close()


async def test_refused_sends_are_counted_each_and_logged_at_most_once_a_second(caplog):
    """Not a WARNING for every refused send: that would flood the log."""
    caplog.set_level(logging.WARNING, logger="wsrelay.runtime")
    # An earlier test's refusal within the last second would hold this
    # test's first line back: the interval starts afresh here.
    _runtime_log().forget()
    sleeper = process.spawn("test:sleeper")
    for n in range(wsrelay.node().mailbox_capacity):
        process.send(sleeper, "fill", n)
    refused = wsrelay.node().counters.mailbox_full
    for n in range(1000):
        with pytest.raises(wsrelay.MailboxFull):
            process.send(sleeper, "more", n)
    assert wsrelay.node().counters.mailbox_full - refused == 1000
    lines = [r for r in caplog.records if "is full" in r.getMessage()]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]
    process.terminate(sleeper)
