# cython: language_level=3
"""The words the runtime and the cluster share, each declared once here:
the system events' topics, the exit reasons, and why cross-node traffic was
dropped. (The signal kinds between nodes are in signals.pxd.)"""

# Topics of the system events a process receives (topics starting with '@'
# are reserved for them).
EXIT = "@exit"
LINK_DOWN = "@link_down"
# A call's reply, sent to the caller's waiter (call.pyx).
REPLY = "@reply"

# Why a process ended, as its EXIT and LINK_DOWN events say.
NORMAL = "normal"
NOPROC = "noproc"
NOCONNECTION = "noconnection"
TERMINATED = "terminated"
ERROR = "error"
SHUTDOWN = "shutdown"

# Why a message, signal or frame to or from another node was not delivered:
# each is the reason label of wsrelay_cluster_dropped, counted in the
# Counters field cluster_dropped_<reason> (stats.COUNTERS).
MAILBOX_FULL = "mailbox_full"
UNREACHABLE = "unreachable"
REJECTED = "rejected"
DROP_REASONS = (NOPROC, MAILBOX_FULL, UNREACHABLE, REJECTED)
