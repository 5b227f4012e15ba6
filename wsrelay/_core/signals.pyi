import enum

class Signal(enum.IntEnum):
    MONITOR = 1
    DEMONITOR = 2
    LINK = 3
    UNLINK = 4
    EXIT = 5
    LINK_EXIT = 6
    KILL = 7
    CREDIT = 8
    RELAY = 9

SIGNAL_KINDS: tuple[str, ...]
