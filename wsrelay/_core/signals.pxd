cpdef enum Signal:
    # What a process of one node tells a process of another (remote.pyx),
    # and their numbers on the cluster's wire (wsrelay/cluster/wire.py):
    # CREDIT carries relay acknowledgements, RELAY a relay connection's
    # message to its target ([topic, payload] as the reason).
    MONITOR = 1
    DEMONITOR = 2
    LINK = 3
    UNLINK = 4
    EXIT = 5
    LINK_EXIT = 6
    KILL = 7
    CREDIT = 8
    RELAY = 9
