"""The private nats-server (wsrelay/cluster/broker.py): started, restarted on
its port with its state, and what a SIGKILLed supervisor leaves behind."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time

import pytest

from wsrelay.cluster.broker import Broker, find_nats_server
from wsrelay.cluster.errors import BrokerNotFound


def _accepts(broker: Broker) -> bytes:
    with socket.create_connection((broker.host, broker.port), timeout=5) as sock:
        return sock.recv(5)


def test_start_stop_restart_close() -> None:
    broker = Broker()
    try:
        broker.start()
        assert broker.url == f"nats://127.0.0.1:{broker.port}" and broker.port > 0
        assert _accepts(broker) == b"INFO "
        config = os.path.join(broker.dir or "", "nats.conf")
        assert os.stat(config).st_mode & 0o777 == 0o600
        with open(f"/proc/{broker.pid}/cmdline", "rb") as f:
            assert broker.token.encode() not in f.read()
        port, first = broker.port, broker.pid
        broker.stop()
        with pytest.raises(OSError):
            _accepts(broker)
        broker.start()
        assert broker.port == port and broker.pid != first
        assert _accepts(broker) == b"INFO "
    finally:
        folder = broker.dir
        broker.close()
    assert folder is not None and not os.path.exists(folder)


def test_missing_binary_names_the_install_command() -> None:
    with pytest.raises(BrokerNotFound, match="apt-get install nats-server"):
        find_nats_server("/nonexistent/nats-server")
    with pytest.raises(BrokerNotFound, match="nats-io/nats-server/releases"):
        Broker(binary="no-such-nats-server")


def test_stale_private_directories_are_removed() -> None:
    old = time.time() - 3600

    def make(pid_text: str | None, age: float) -> str:
        path = tempfile.mkdtemp(prefix="wsrelay-nats-")
        if pid_text is not None:
            with open(os.path.join(path, "nats.pid"), "w") as f:
                f.write(pid_text)
        os.utime(path, (age, age))
        return path

    dead = subprocess.Popen(["true"])
    dead.wait()
    with Broker() as live:
        assert live.dir is not None
        os.utime(live.dir, (old, old))
        gone_server = make(str(dead.pid), old)
        no_pid_file = make(None, old)
        other_process = make(str(os.getpid()), old)  # alive, but not a nats-server of that directory
        starting = make(None, time.time())
        with Broker() as second:
            assert second.dir is not None and os.path.isdir(second.dir)
            assert os.path.isdir(live.dir), "the directory of a running broker was removed"
            assert os.path.isdir(starting), "a directory younger than a minute was removed"
            for path in (gone_server, no_pid_file, other_process):
                assert not os.path.exists(path), path
            assert _accepts(live) == b"INFO "
        os.rmdir(starting)
