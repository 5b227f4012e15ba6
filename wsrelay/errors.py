"""Every exception wsrelay raises on purpose, in one place: the core's own
(wsrelay._core.errors) and the Python layer's."""

from __future__ import annotations

from ._core.errors import (
    CallError,
    MailboxFull,
    NoTransport,
    RelayHeaderError,
    RelaySettingsError,
    WrongThread,
    WsrelayError,
)

__all__ = [
    "CallError",
    "ConfigError",
    "MailboxFull",
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
