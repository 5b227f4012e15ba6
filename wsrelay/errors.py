"""Every exception wsrelay raises on purpose, in one place."""

from __future__ import annotations

from typing import Any


class WsrelayError(Exception):
    """Base class of wsrelay's own errors."""


class MailboxFull(WsrelayError):
    """The destination's mailbox is at capacity; the message was not queued.

    Raised by ``process.send`` so the sender can back off, retry or shed load:
    a bounded mailbox never drops an ordinary message silently.
    """

    def __init__(self, pid: Any, capacity: int) -> None:
        super().__init__(f"mailbox of {pid} is full ({capacity} messages); message not queued")
        self.pid = pid
        self.capacity = capacity


class NoTransport(LookupError, WsrelayError):
    """A PID names another node and no cluster transport is configured."""

    def __init__(self, pid: Any) -> None:
        super().__init__(
            f"{pid} belongs to node {getattr(pid, 'node', None)!r}, and no cluster transport "
            f"is configured (see wsrelay.set_transport)"
        )
        self.pid = pid


class SettingsError(WsrelayError):
    """An environment variable has a value wsrelay cannot use."""

    def __init__(self, variable: str, value: str, problem: str) -> None:
        super().__init__(f"{variable}={value!r}: {problem}")
        self.variable = variable
        self.value = value


class ConfigError(WsrelayError):
    """The application's configuration file is wrong; names the entry and field."""

    def __init__(self, message: str, entry: str | None = None, field: str | None = None) -> None:
        where = ""
        if entry is not None:
            where = f"entry {entry!r}"
            if field is not None:
                where += f", field {field!r}"
            where += ": "
        super().__init__(where + message)
        self.entry = entry
        self.field = field


class RelayHeaderError(ValueError, WsrelayError):
    """The ``X-WS-Relay`` header set by a handler cannot be used."""
