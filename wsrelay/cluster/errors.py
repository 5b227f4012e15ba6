"""The cluster's own errors (all of them derive from wsrelay's WsrelayError)."""

from __future__ import annotations

from ..errors import WsrelayError

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
