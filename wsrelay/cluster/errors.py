"""The cluster's errors, defined with every other one in wsrelay.errors."""

from __future__ import annotations

from ..errors import BrokerError, BrokerNotFound, ClusterConnectError, ClusterError

__all__ = ["BrokerError", "BrokerNotFound", "ClusterConnectError", "ClusterError"]
