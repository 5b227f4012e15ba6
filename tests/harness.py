"""How a test starts a gateway: one way in the test's own process, one in a
child process.

- ``async with running(app, **settings) as gateway``: the Gateway of an App
  (tests/apps.relay_app) in this process, on an ephemeral port, drained on
  the way out. The test's own process is the node's system process: it
  spawns, monitors and reads its inbox (expect(), until()).
- ``with ServerProcess(serve_command(app_file))`` (or ``async with``):
  ``wsrelay serve FILE``, or any program, in a child process with a clean
  environment, run from the repository's root. Its output is collected line
  by line as it comes (by threads, so the same object serves synchronous
  tests, such as the selenium one, and async tests alike), and the address
  it serves on is read from its serving line: a port of 0 lets the kernel
  pick one with no race against other test runs on the machine. The cluster
  tests' nodes (tests/cluster_support.py) are ServerProcesses too.

Both are targets of tests/wsclient.py, and scrape() reads either's /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal as signals
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, AsyncIterator, Callable, Mapping, Optional, Sequence, Union

from prometheus_client.parser import text_string_to_metric_families

import wsrelay
from tests.procs import REPORT_ENV
from tests.wsclient import http_request
from wsrelay import App, Gateway, Pid, process
from wsrelay.cluster.supervisor import SERVING as SERVING_LINE
from wsrelay.settings import Settings
from wsrelay.settings import settings as current_settings

REPO = Path(__file__).resolve().parent.parent
# The console script next to this interpreter (the venv's).
WSRELAY = Path(sys.executable).with_name("wsrelay")
# The serving line, the contract between a gateway and whoever waits for it:
# `wsrelay serve` (and the supervisor of its workers) prints SERVING_LINE and
# its URLs, "wsrelay: serving http://HOST:PORT[, ...]"; an app run by
# wsrelay.run() the same, and examples/guide/python_app.py "serving URL".
# SERVING finds the line and its first address (groups: host, port).
SERVING = re.escape(SERVING_LINE.split(": ", 1)[1]) + r"\w+://([^\s:/,]+):(\d+)"
# The machine has 2 shared cores: generous bounds, strict conditions.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


# -- a gateway in this process -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(app: App, **overrides: Any) -> AsyncIterator[Gateway]:
    """The gateway of ``app``, started with the current settings changed by
    ``overrides`` (Settings field names), and drained on exit."""
    settings: Settings = dataclasses.replace(current_settings(), **overrides)
    gateway = Gateway(app, settings)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.shutdown(drain_timeout=5)


async def expect(topic: str, timeout: float = 30.0) -> Any:
    """The payload of the next message of the test's (system) inbox, which
    must have ``topic``."""
    msg = await process.inbox().receive(timeout=timeout)
    assert msg.topic == topic, f"expected {topic!r}, got {msg.topic!r}: {msg.payload!r}"
    return msg.payload


async def until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "the condition") -> None:
    """Wait until ``condition()`` is true, checking every 10 ms: for state
    inside the gateway that announces no event of its own (a connection
    pausing, a counter moving)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.01)


async def drain_inbox() -> None:
    """Drop what is left in the test's (system) inbox."""
    inbox = process.inbox()
    while inbox.receive_nowait() is not None:
        pass


def leaked_processes() -> list[Pid]:
    """The processes running besides the node's system process (the test's own)."""
    node = wsrelay.node()
    return [pid for pid in node.pids() if pid != node.system.pid]


def end_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Tear down a test's loop: every process but the system one terminated,
    every task left cancelled, the test's inbox emptied, the loop closed."""
    wsrelay.node().terminate_all("test_teardown")
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(drain_inbox())
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


# -- what a gateway says of itself (either kind) -------------------------------------------------


async def health(target: Any) -> dict[str, Any]:
    """GET /health of a gateway (a tests.wsclient target), which must answer 200."""
    res = await http_request(target, "/health")
    assert res.status == 200, (res.status, res.body)
    return json.loads(res.body)



class Metrics:
    """One scrape of /metrics, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        """The value of sample ``name`` with exactly ``labels``; 0 when absent
        (a labelled counter has no sample until it is first counted)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def has(self, name: str) -> bool:
        return any(key[0] == name for key in self.samples)


async def scrape(target: Any, path: str = "/metrics") -> Metrics:
    """GET /metrics (or ``path``) of a gateway (a tests.wsclient target), parsed."""
    res = await http_request(target, path)
    assert res.status == 200, (res.status, res.body)
    assert res.headers["Content-Type"].startswith("text/plain"), res.headers
    return Metrics(res.text)


# -- a gateway, or any program, in a child process -----------------------------------------------


def clean_env(**overrides: str) -> dict[str, str]:
    """The environment of a child: no inherited WSRELAY_* variable (nor the
    REPORT_ENV of tests/procs.py), the repository importable, output
    unbuffered, and ``overrides`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSRELAY_") and k != REPORT_ENV}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def serve_command(app_file: Union[str, Path], *args: str) -> list[str]:
    """``python -m wsrelay serve APP_FILE ARGS`` with this interpreter."""
    return [sys.executable, "-m", "wsrelay", "serve", str(app_file), *args]


def run_to_exit(argv: Sequence[Union[str, Path]], *, env: Optional[Mapping[str, str]] = None,
                timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ServerProcess runs it (``env`` added to clean_env(),
    from the repository's root) until it exits by itself: ``wsrelay check``,
    or a gateway refused at start. Its exit code and whole output."""
    return subprocess.run([str(arg) for arg in argv], cwd=REPO, env=clean_env(**(env or {})),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


class ServerProcess:
    """A child process started at once; ``with`` or ``async with`` waits for
    its ``ready`` line (a regex whose groups are the host and the port; None:
    a program that serves nothing) and kills it on the way out.

    ``env`` is added to clean_env(). With ``stdin``, write_line() talks to
    the child's standard input (otherwise it reads nothing). The async
    methods run the blocking ones in a thread, which wakes on the child's
    output or exit, never on a timer.
    """

    def __init__(self, argv: Sequence[Union[str, Path]], *, env: Optional[Mapping[str, str]] = None,
                 cwd: Union[str, Path] = REPO, ready: Optional[str] = SERVING, stdin: bool = False) -> None:
        self.argv = [str(arg) for arg in argv]
        self.ready = ready
        self.host = ""
        self.port = 0
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._closed: set[str] = set()
        self.proc = subprocess.Popen(
            self.argv, cwd=cwd, env=clean_env(**(env or {})), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream: IO[str], lines: list[str]) -> None:
        with stream:
            for line in stream:
                with self._changed:
                    lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self._closed.add("stdout" if lines is self.stdout else "stderr")
            self._changed.notify_all()

    # -- what it says ----------------------------------------------------------------------

    def wait_line(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first stdout line matching ``pattern``, once printed; an
        AssertionError with the output when stdout ends or time runs out first."""
        regex = re.compile(pattern)
        found: Optional[re.Match[str]] = None
        scanned = 0

        def seen() -> bool:
            nonlocal found, scanned
            for line in self.stdout[scanned:]:
                found = regex.search(line)
                if found:
                    return True
            scanned = len(self.stdout)
            return "stdout" in self._closed

        with self._changed:
            self._changed.wait_for(seen, timeout)
        if found is None:
            raise self._missing(f"no line matching {pattern!r}")
        return found

    def next_line(self, index: int, timeout: float = START_TIMEOUT) -> str:
        """Stdout line number ``index`` (from 0), once printed: for a child
        that reports one event a line; an AssertionError with the output
        when stdout ends or time runs out first."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.stdout) > index or "stdout" in self._closed, timeout)
            if len(self.stdout) > index:
                return self.stdout[index]
        raise self._missing(f"no line {index} within {timeout} s")

    def wait_text(self, pattern: str, stream: str = "stderr", start: int = 0,
                  timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first match of ``pattern`` (a multi-line regex) in everything
        ``stream`` printed, from character ``start`` on (a match's ``end()``
        is where to look for the next); an AssertionError with the output
        when the stream ends or time runs out first."""
        regex = re.compile(pattern, re.M)
        found: Optional[re.Match[str]] = None

        def seen() -> bool:
            nonlocal found
            found = regex.search(self._text(stream), start)
            return found is not None or stream in self._closed

        with self._changed:
            self._changed.wait_for(seen, timeout)
        if found is None:
            raise self._missing(f"no {pattern!r} in its {stream}")
        return found

    def _missing(self, what: str) -> AssertionError:
        """The error of a wait for output that did not come: ``what``, whether
        the child still runs, and all it printed."""
        state = "running" if self.proc.poll() is None else f"exit {self.proc.returncode}"
        return AssertionError(f"{self.argv}: {what} ({state}):\n{self.output()}")

    def text(self, stream: str = "stderr") -> str:
        """Everything ``stream`` printed so far."""
        with self._changed:
            return self._text(stream)

    def _text(self, stream: str) -> str:
        return "".join(line + "\n" for line in (self.stdout if stream == "stdout" else self.stderr))

    def output(self) -> str:
        with self._changed:
            return "stdout:\n" + "\n".join(self.stdout) + "\nstderr:\n" + "\n".join(self.stderr)

    def write_line(self, line: str) -> None:
        """``line`` and a newline to the child's standard input (``stdin=True``)."""
        assert self.proc.stdin is not None, "started without stdin=True"
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    # -- where it serves ---------------------------------------------------------------------

    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def url(self, path: str = "", scheme: str = "ws") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"

    # -- its life ----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> Optional[int]:
        """None while it runs."""
        return self.proc.poll()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for the ready line and take the address from it; kill the
        child when it does not come."""
        if self.ready is None:
            return
        try:
            match = self.wait_line(self.ready, timeout)
        except AssertionError:
            self.kill()  # its output is complete after this
            raise AssertionError(f"{self.argv} did not start (exit {self.proc.returncode}):\n{self.output()}") \
                from None
        except BaseException:
            self.kill()
            raise
        self.host, self.port = match.group(1), int(match.group(2))

    def signal(self, sig: int = signals.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Its exit code, once it has exited and all its output is read."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.argv} still running after {timeout} s:\n{self.output()}") from None
        self._join()
        return code

    def stop(self, sig: int = signals.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """``sig`` (as a service manager would), then wait(): the exit code."""
        if self.proc.poll() is None:
            self.signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL unless it has exited; then its output is complete."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._join()

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(STOP_TIMEOUT)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()

    async def exited(self, timeout: float = STOP_TIMEOUT) -> int:
        return await asyncio.to_thread(self.wait, timeout)

    async def stopped(self, sig: int = signals.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        return await asyncio.to_thread(self.stop, sig, timeout)

    async def __aenter__(self) -> ServerProcess:
        try:
            await asyncio.to_thread(self.start)
        except BaseException:
            # Cancelled while the thread waits: the kill ends that wait too.
            self.kill()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        # SIGKILL takes effect at once: no need for a thread.
        self.kill()

    # -- what it costs -----------------------------------------------------------------------

    def rss(self) -> int:
        """Resident set size now, in bytes."""
        return _status_field(self.pid, "VmRSS")

    def peak_rss(self) -> int:
        """The kernel's high-water mark of the RSS since it started, in bytes."""
        return _status_field(self.pid, "VmHWM")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def _status_field(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread (a
    measurement, not synchronisation), so a blocked event loop cannot hide a peak."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = _status_field(self.pid, "VmRSS")
            except (OSError, LookupError):  # the process has exited: nothing more to sample
                return
            self.samples += 1
            if rss > self.peak:
                self.peak = rss
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
