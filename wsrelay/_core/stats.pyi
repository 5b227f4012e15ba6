class Counters:
    processes_spawned: int
    processes_exited: int
    processes_crashed: int
    messages_sent: int
    mailbox_full: int
    system_events_dropped: int
    connections_opened: int
    connections_closed: int
    ws_messages_in: int
    ws_bytes_in: int
    ws_messages_out: int
    ws_bytes_out: int
    ws_frames_dropped_closing: int
    relay_backpressure_pauses: int
    slow_consumer_closes: int
    heartbeats_coalesced: int
    def as_dict(self) -> dict[str, int]: ...
