"""What travels on the bus, and nothing about how: subjects, the batch
format between two nodes, heartbeats and RPC requests.

A batch is one NATS message from one node to another: a MessagePack array
whose first element is the header and whose other elements are records, each
encoded on its own at the call that made it (so a payload that cannot be
carried fails there, not later):

    [[VERSION, source node, source incarnation, destination node,
      destination incarnation, session, sequence, records before, flags],
     record, record, ...]

    record: [SEND, destination id, destination host, sender, topic, payload]
            [SIGNAL, kind, destination, source, reason]     (PIDs as text)
            [CALL, destination id, destination host, sender, topic, payload,
             reply to]    (a call's request: a send with the address of its
                          reply, which also monitors the destination until
                          the reply leaves; remote.pyx, on_call)
            [FRAMES, [connection id, ...], frame]
            [FRAGMENT, chunk, last]    (a record larger than a NATS message)
            [INTEREST, [[channel, subscribers], ...]]    (the source node's
                          subscriber counts of these channels, 0 = none left;
                          all of them when a session opens; channels.pyx)
            [PUBLISH, channel, envelope]    (a channel's publication, the
                          JSON text its subscribers here receive)
            [PRESENCE, snapshot, [[channel, [[client, user, info], ...],
                                   [client, ...]], ...]]
                          (the source node's presence entries that began
                          (or changed) and ended; with snapshot true, all
                          of them, replacing those held; presence.pyx)

Sequence numbers count the batches of one session of one (source ->
destination) stream from 1, and "records before" the records sent in the
session before this batch, so a receiver that sees a gap knows how many
records were lost. A session is renumbered by the node that saw a gap, and
both nodes then start it afresh (peers.py).
"""

from __future__ import annotations

import re
import struct
from typing import Any, NamedTuple

from .._core.signals import SIGNAL_KINDS as SIGNAL_KINDS  # the names, for checking a record
from .._core.signals import Signal
from ..errors import Malformed
from .codec import decode, encode

# 2: the CALL record; 3: INTEREST and PUBLISH (channels); 4: PRESENCE.
VERSION = 4

# Node names are NATS subject tokens: no '.', '*', '>' or white space.
NODE_NAME = re.compile(r"[A-Za-z0-9_-]+")

HEARTBEAT_SUBJECT = "wsrelay.hb"


def inbox_subject(node: str) -> str:
    """The node's one ordered inbox: every batch addressed to it."""
    return f"wsrelay.node.{node}"


def rpc_subject(node: str) -> str:
    """Requests to the node (ping, metrics), answered by the node itself."""
    return f"wsrelay.node.{node}.rpc"


# Record kinds.
SEND = 0
SIGNAL = 1
FRAMES = 2
FRAGMENT = 3
CALL = 4
INTEREST = 5
PUBLISH = 6
PRESENCE = 7

# Signal kinds between processes, as the core declares them (signals.pxd),
# as plain ints: the numbers a SIGNAL record carries. (EXIT here is the
# signal, not the topic of the event it becomes.)
MONITOR, DEMONITOR, LINK, UNLINK, EXIT, LINK_EXIT, KILL, CREDIT, RELAY = (int(kind) for kind in Signal)

# Header flags.
FLAG_BYE = 1  # the source is stopping: this is its last batch to us

# Heartbeat-subject messages: [VERSION, HB, node, incarnation, machine, os pid]
# every interval; [VERSION, DOWN, node, incarnation] from a supervisor that
# saw a worker die.
HB = "hb"
DOWN = "down"

# RPC operations: request [VERSION, op] or [VERSION, CHANNEL, args]; reply
# [VERSION, node, incarnation, body]. CHANNEL asks the node for something
# about its own connections (channels.pyx, ``answer_request``).
PING = "ping"
METRICS = "metrics"
CHANNEL = "channel"


class Header(NamedTuple):
    source: str
    source_incarnation: int
    destination: str
    destination_incarnation: int
    session: int
    seq: int
    sent: int
    flags: int


def array_header(count: int) -> bytes:
    """The MessagePack header of an array of ``count`` elements."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + struct.pack(">H", count)
    return b"\xdd" + struct.pack(">I", count)


def batch(header: Header, records: list[bytes]) -> bytes:
    head = encode([VERSION, *header])
    return b"".join([array_header(len(records) + 1), head, *records])


def parse_batch(data: bytes) -> tuple[Header, list[Any]]:
    """(header, items): the records are ``items[1:]``, decoded but not yet
    checked. Malformed when the bytes or the header are not ours."""
    try:
        items = decode(data)
    except (ValueError, TypeError) as exc:
        raise Malformed(f"undecodable batch ({exc})") from None
    if type(items) is not list or not items:
        raise Malformed("a batch must be a non-empty array")
    head = items[0]
    if type(head) is not list or len(head) != 9:
        raise Malformed("a batch header must be an array of 9")
    if head[0] != VERSION:
        raise Malformed(f"unknown version {head[0]!r}")
    _, source, source_inc, destination, destination_inc, session, seq, sent, flags = head
    if not (type(source) is str and type(destination) is str and type(source_inc) is int
            and type(destination_inc) is int and type(session) is int and type(seq) is int
            and type(sent) is int and type(flags) is int):
        raise Malformed("a batch header has a field of the wrong type")
    if not NODE_NAME.fullmatch(source):
        raise Malformed(f"invalid source node name {source!r}")
    return Header(source, source_inc, destination, destination_inc, session, seq, sent, flags), items


def record_send(dest_id: int, dest_host: str, sender: str, topic: Any, payload: Any) -> bytes:
    return encode([SEND, dest_id, dest_host, sender, topic, payload])


def record_call(dest_id: int, dest_host: str, sender: str, topic: Any, payload: Any, reply_to: str) -> bytes:
    return encode([CALL, dest_id, dest_host, sender, topic, payload, reply_to])


def record_signal(kind: int, dest: str, src: str, reason: Any) -> bytes:
    return encode([SIGNAL, kind, dest, src, reason])


def record_frames(conn_ids: list[int], frame: bytes) -> bytes:
    return encode([FRAMES, conn_ids, frame])


def record_interest(changes: list[list[Any]]) -> bytes:
    return encode([INTEREST, changes])


def record_presence(snapshot: bool, changes: list[list[Any]]) -> bytes:
    return encode([PRESENCE, snapshot, changes])


def record_publish(channel: str, envelope: str) -> bytes:
    return encode([PUBLISH, channel, envelope])


def fragments(record: bytes, size: int) -> list[bytes]:
    """``record`` cut into FRAGMENT records of at most ``size`` bytes of it each."""
    chunks = [record[i:i + size] for i in range(0, len(record), size)]
    return [encode([FRAGMENT, chunk, i == len(chunks) - 1]) for i, chunk in enumerate(chunks)]


def heartbeat(node: str, incarnation: int, machine: str, os_pid: int) -> bytes:
    return encode([VERSION, HB, node, incarnation, machine, os_pid])


def down_notice(node: str, incarnation: int) -> bytes:
    return encode([VERSION, DOWN, node, incarnation])


def parse_notice(data: bytes) -> list[Any]:
    """A heartbeat-subject message, checked: [HB, node, incarnation, machine,
    os pid] or [DOWN, node, incarnation]."""
    try:
        msg = decode(data)
    except (ValueError, TypeError) as exc:
        raise Malformed(f"undecodable notice ({exc})") from None
    if type(msg) is not list or len(msg) < 2 or msg[0] != VERSION:
        raise Malformed("a notice must be an array starting with the version")
    body = msg[1:]
    if len(body) > 1 and type(body[1]) is str and not NODE_NAME.fullmatch(body[1]):
        raise Malformed(f"invalid node name {body[1]!r}")
    if body[0] == HB and len(body) == 5 and type(body[1]) is str and type(body[2]) is int \
            and type(body[3]) is str and type(body[4]) is int:
        return body
    if body[0] == DOWN and len(body) == 3 and type(body[1]) is str and type(body[2]) is int:
        return body
    raise Malformed(f"unknown notice {body[0]!r}")


def rpc_request(op: str, args: Any = None) -> bytes:
    return encode([VERSION, op] if args is None else [VERSION, op, args])


def decode_rpc_request(data: bytes) -> tuple[str, Any]:
    """(op, args): args is None but for CHANNEL, whose args are a list."""
    try:
        msg = decode(data)
    except (ValueError, TypeError) as exc:
        raise Malformed(f"undecodable request ({exc})") from None
    if type(msg) is list and len(msg) == 2 and msg[0] == VERSION and msg[1] in (PING, METRICS):
        return msg[1], None
    if type(msg) is list and len(msg) == 3 and msg[0] == VERSION and msg[1] == CHANNEL and type(msg[2]) is list:
        return CHANNEL, msg[2]
    raise Malformed("a request must be [version, 'ping' or 'metrics'] or [version, 'channel', args]")


def rpc_reply(node: str, incarnation: int, body: Any) -> bytes:
    return encode([VERSION, node, incarnation, body])


def parse_rpc_reply(data: bytes) -> tuple[str, int, Any]:
    try:
        msg = decode(data)
    except (ValueError, TypeError) as exc:
        raise Malformed(f"undecodable reply ({exc})") from None
    if type(msg) is not list or len(msg) != 4 or msg[0] != VERSION:
        raise Malformed("a reply must be [version, node, incarnation, body]")
    return msg[1], msg[2], msg[3]

