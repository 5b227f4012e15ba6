"""Every exception wsrelay raises on purpose, in one place: the core's own
(wsrelay._core.errors) and the Python layer's, the cluster's included. All
derive from WsrelayError."""

from __future__ import annotations

from ._core.errors import (
    CallError,
    CorruptMessage,
    MailboxFull,
    MessageTooBig,
    NoTransport,
    RelayHeaderError,
    RelaySettingsError,
    WrongThread,
    WsrelayError,
)

__all__ = [
    "BrokerError",
    "BrokerNotFound",
    "CallError",
    "ClusterConnectError",
    "ClusterError",
    "ConfigError",
    "CorruptMessage",
    "MailboxFull",
    "Malformed",
    "MessageTooBig",
    "NoTransport",
    "RelayHeaderError",
    "RelaySettingsError",
    "SettingsError",
    "WrongThread",
    "WsrelayError",
]


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


INSTALL_HINT = (
    "install it with `apt-get install nats-server` (Debian, Ubuntu), or take a release from "
    "https://github.com/nats-io/nats-server/releases, or set WSRELAY_NATS_SERVER to its path"
)


class ClusterError(WsrelayError):
    """Base class of the cluster's errors."""


class BrokerNotFound(ClusterError):
    """The ``nats-server`` binary is not installed where we looked."""

    def __init__(self, looked_for: str) -> None:
        super().__init__(f"nats-server not found ({looked_for}): {INSTALL_HINT}")


class BrokerError(ClusterError):
    """The private nats-server did not start, or stopped unexpectedly."""


class ClusterConnectError(ClusterError):
    """The broker at ``url`` cannot be joined (unreachable, or it refused the
    credentials). The message names the URL, never a credential."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"cannot join the cluster at {url}: {problem}")
        self.url = url


class Malformed(ValueError, WsrelayError):
    """Bytes from the cluster's bus that are not what a node of this version
    writes (wsrelay/cluster/wire.py)."""
