"""A private ``nats-server``: 127.0.0.1, a free port, a random token and
JetStream in a private directory, started and stopped by the supervisor (and
by the tests).

The token and the store are in a configuration file readable by us alone, so
the token never shows in ``ps``. The server dies with the process that
started it (lifeline.die_with_parent), even when that process is SIGKILLed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Optional

from .errors import BrokerError, BrokerNotFound
from .lifeline import die_with_parent

# Where Debian and upstream installers put the binary, for users whose PATH
# lacks the sbin directories.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin")
_READY_POLL = 0.01
_DIR_PREFIX = "wsrelay-nats-"
_PID_FILE = "nats.pid"
# A private directory younger than this may belong to a broker still starting.
_STALE_AFTER = 60.0


def find_nats_server(name: str = "nats-server") -> str:
    """The path of the nats-server binary ``name`` (a path or a command name);
    BrokerNotFound, naming the install command, when there is none."""
    if os.sep in name:
        if os.access(name, os.X_OK) and os.path.isfile(name):
            return name
        raise BrokerNotFound(f"{name} is not an executable file")
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_EXTRA_DIRS])
    found = shutil.which(name, path=search)
    if found is None:
        raise BrokerNotFound(f"no {name!r} on PATH nor in {', '.join(_EXTRA_DIRS)}")
    return found


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _sweep_stale_dirs() -> None:
    """Remove the private directories of brokers that are gone. A supervisor
    killed by SIGKILL takes its broker with it, but cannot remove the
    directory: the next broker started on the machine does."""
    root = tempfile.gettempdir()
    now = time.time()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if not name.startswith(_DIR_PREFIX) or not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            info = os.stat(path)
            if info.st_uid != os.getuid() or now - info.st_mtime < _STALE_AFTER:
                continue
            if _serving(path):
                continue
        except OSError:
            continue  # removed meanwhile, or not ours to look into
        shutil.rmtree(path, ignore_errors=True)


def _serving(path: str) -> bool:
    """Whether the nats-server whose pid file is in ``path`` still runs (and
    is that server, not another process given the same pid since)."""
    try:
        with open(os.path.join(path, _PID_FILE)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return path.encode() in f.read()
    except OSError:
        return True  # no /proc to tell: alive is enough to keep it


class Broker:
    """A nats-server of our own. ``start()`` returns once it accepts clients;
    ``stop()`` ends the server and keeps its state (a later ``start()`` is a
    restart on the same port, token and store); ``close()`` also removes the
    private directory. Usable as a context manager (start, then close)."""

    def __init__(self, *, binary: str = "nats-server", host: str = "127.0.0.1", port: int = 0,
                 token: Optional[str] = None, max_payload: Optional[int] = None,
                 store_dir: Optional[str] = None) -> None:
        self.binary = find_nats_server(binary)
        self.host = host
        self.port = port
        self.token = token or secrets.token_hex(24)
        self.max_payload = max_payload
        # JetStream's data (WSRELAY_CLUSTER_DATA): kept by close() when given,
        # so that channel history outlives the supervisor; else in the
        # private directory, removed with it.
        self.store_dir = store_dir
        self.dir: Optional[str] = None
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> Optional[int]:
        return None if self.proc is None else self.proc.pid

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise BrokerError("the broker is already running")
        if self.dir is None:
            _sweep_stale_dirs()
            self.dir = tempfile.mkdtemp(prefix=_DIR_PREFIX)
        chosen = self.port == 0
        for _attempt in range(3 if chosen else 1):
            if chosen:
                self.port = _free_port(self.host)
            try:
                self._launch(timeout)
                return
            except _PortTaken:
                # Another process took the free port between our probe and
                # the server's bind: try another one.
                continue
        raise BrokerError(f"nats-server could not bind {self.host}: every free port tried was taken")

    def _write_config(self) -> str:
        assert self.dir is not None
        path = os.path.join(self.dir, "nats.conf")
        lines = [
            f'listen: "{self.host}:{self.port}"',
            f'authorization {{ token: "{self.token}" }}',
            f'jetstream {{ store_dir: "{self.store_dir or os.path.join(self.dir, "js")}" }}',
            f'log_file: "{self.log_path}"',
            f'pid_file: "{os.path.join(self.dir, _PID_FILE)}"',
        ]
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    @property
    def log_path(self) -> str:
        assert self.dir is not None
        return os.path.join(self.dir, "nats.log")

    def _launch(self, timeout: float) -> None:
        config = self._write_config()
        log_start = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self.proc = subprocess.Popen(
            [self.binary, "-c", config], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=die_with_parent(), start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                log = self._log_since(log_start)
                self.proc = None
                if "address already in use" in log:
                    raise _PortTaken()
                raise BrokerError(f"nats-server exited at start; its log:\n{log.strip()}")
            if self._accepts_clients():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"nats-server did not accept clients within {timeout} s; its log:\n"
                                  f"{self._log_since(log_start).strip()}")
            time.sleep(_READY_POLL)

    def _accepts_clients(self) -> bool:
        """True once the server answers a connection with its INFO line."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                return sock.recv(5) == b"INFO "
        except OSError:
            # Not listening yet (refused), or reset during its start: try again.
            return False

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return "(no log written)"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (the server flushes JetStream), SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _PortTaken(Exception):
    pass
