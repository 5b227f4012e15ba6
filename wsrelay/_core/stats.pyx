# cython: language_level=3
"""Counters bumped on the hot paths; read only by /metrics."""


cdef class Counters:
    def as_dict(self):
        return {
            "processes_spawned": self.processes_spawned,
            "processes_exited": self.processes_exited,
            "processes_crashed": self.processes_crashed,
            "messages_sent": self.messages_sent,
            "mailbox_full": self.mailbox_full,
            "system_events_dropped": self.system_events_dropped,
            "connections_opened": self.connections_opened,
            "connections_closed": self.connections_closed,
            "ws_messages_in": self.ws_messages_in,
            "ws_bytes_in": self.ws_bytes_in,
            "ws_messages_out": self.ws_messages_out,
            "ws_bytes_out": self.ws_bytes_out,
            "ws_frames_dropped_closing": self.ws_frames_dropped_closing,
            "relay_backpressure_pauses": self.relay_backpressure_pauses,
            "slow_consumer_closes": self.slow_consumer_closes,
            "heartbeats_coalesced": self.heartbeats_coalesced,
        }
