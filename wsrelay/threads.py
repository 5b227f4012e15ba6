"""Reaching wsrelay from another thread.

The runtime belongs to the thread that runs its event loop (docs/guide.md,
"One thread"); a call from any other thread raises ``WrongThread``. Code in
another thread (a FastAPI ``def`` endpoint, which runs in a thread pool,
``asyncio.to_thread``, an executor) hands its calls to that loop with these:

- ``send(dest, topic, payload=None)``: ``process.send`` on the loop; its result;
- ``call(fn, *args)``: ``fn(*args)`` on the loop, and its result (awaited
  there when it is a coroutine, e.g. ``process.call``);
- ``call_soon(fn, *args)``: the same without waiting, a
  ``concurrent.futures.Future``.

The loop is the one a ``Gateway`` runs on (it attaches it when it starts);
code that runs processes without a gateway calls ``attach()`` once, on that
loop. Keyword arguments go through ``functools.partial``, as with asyncio's
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from typing import Any, Callable, Optional

from . import process

__all__ = ["attach", "call", "call_soon", "send"]

_loop: Optional[asyncio.AbstractEventLoop] = None


def attach(loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
    """Make ``loop`` (default: the running one, so call it on its thread)
    the loop other threads' calls go to."""
    global _loop
    _loop = loop if loop is not None else asyncio.get_running_loop()


def call_soon(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
    """Run ``fn(*args)`` on the runtime's loop; a future of its result (of
    the coroutine's, when ``fn`` returns one), or of what it raised.
    Cancelling the future before ``fn`` ran means it never runs."""
    loop = _attached()
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        # The future stays pending until the result is in, so that the
        # waiting thread can still cancel it (a running one cannot be).
        if future.cancelled():
            return
        try:
            result = fn(*args)
        except Exception as exc:
            _settle(future, None, exc)
            return
        if not inspect.isawaitable(result):
            _settle(future, result, None)
            return
        task = asyncio.ensure_future(result)

        def finished(task: asyncio.Future) -> None:
            if task.cancelled():
                _settle(future, None, concurrent.futures.CancelledError())
            else:
                error = task.exception()
                _settle(future, None if error is not None else task.result(), error)

        task.add_done_callback(finished)
        future.add_done_callback(lambda f: f.cancelled() and loop.call_soon_threadsafe(task.cancel))

    try:
        loop.call_soon_threadsafe(run)
    except RuntimeError:
        raise RuntimeError("wsrelay.threads: the runtime's event loop is closed") from None
    return future


def call(fn: Callable[..., Any], *args: Any, timeout: Optional[float] = None) -> Any:
    """``fn(*args)`` run on the runtime's loop, waited for from this thread:
    its result, or what it raised. ``TimeoutError`` after ``timeout``
    seconds (``fn`` then does not run if it has not yet, and its coroutine
    is cancelled if it has one)."""
    if _running_loop() is _attached():
        raise RuntimeError("wsrelay.threads.call() was called on the runtime's own thread, where it would wait "
                           "for itself: call the function directly")
    future = call_soon(fn, *args)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"wsrelay.threads.call({_name(fn)}) took more than {timeout} s") from None


def send(dest: Any, topic: str, payload: Any = None, *, timeout: Optional[float] = None) -> bool:
    """``process.send(dest, topic, payload)`` from any thread: True when
    queued, False when ``dest`` is gone; ``MailboxFull`` and ``ValueError``
    as ``process.send``."""
    return call(process.send, dest, topic, payload, timeout=timeout)


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None  # this thread runs no loop: the usual caller of call()


def _attached() -> asyncio.AbstractEventLoop:
    if _loop is None:
        raise RuntimeError("wsrelay.threads: no event loop is attached: start a Gateway, or call "
                           "wsrelay.threads.attach() on the loop that runs the processes")
    return _loop


def _settle(future: concurrent.futures.Future, result: Any, error: Optional[BaseException]) -> None:
    if not future.set_running_or_notify_cancel():
        return  # cancelled by the waiting thread meanwhile: nobody wants the result
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
