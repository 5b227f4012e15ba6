"""Every exception wsrelay raises on purpose is importable from wsrelay.errors
and derives from WsrelayError, keeping the builtin base callers catch."""

from __future__ import annotations

import wsrelay.errors as errors
from wsrelay._core.deflate import CorruptMessage, MessageTooBig
from wsrelay.cluster import errors as cluster_errors
from wsrelay.cluster import wire


def test_every_error_derives_from_wsrelay_error() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.WsrelayError), name


def test_the_errors_raised_elsewhere_are_the_same_classes() -> None:
    assert wire.Malformed is errors.Malformed and issubclass(wire.Malformed, ValueError)
    assert (MessageTooBig, CorruptMessage) == (errors.MessageTooBig, errors.CorruptMessage)
    for name in cluster_errors.__all__:
        assert getattr(cluster_errors, name) is getattr(errors, name)
    assert issubclass(errors.NoTransport, LookupError)
    assert issubclass(errors.RelaySettingsError, ValueError)
    assert issubclass(errors.WrongThread, RuntimeError)
