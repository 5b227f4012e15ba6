"""A raw WebSocket client over asyncio streams, for what the ``websockets``
client will not do: arbitrary frames (unmasked, fragmented, RSV bits, invalid
UTF-8, bad close codes, oversized), raw upgrade requests, and an abrupt TCP
abort. It never answers pings by itself, so tests can play a dead client.

Every read takes a timeout that is only an upper bound: a read returns as soon
as its bytes arrive.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Union
from urllib.parse import urlsplit

from multidict import CIMultiDict

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFAULT_TIMEOUT = 5.0

HeaderArg = Union[Mapping[str, Optional[str]], Iterable[tuple[str, Optional[str]]], None]


class HandshakeRefused(Exception):
    """The server answered the upgrade request with something other than 101."""

    def __init__(self, response: HTTPResponse) -> None:
        super().__init__(f"upgrade refused: {response.status} {response.body!r}")
        self.response = response


class ConnectionClosedEOF(Exception):
    """The server closed the TCP connection."""


@dataclass
class HTTPResponse:
    status: int
    reason: str
    headers: CIMultiDict
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = False

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    @property
    def close_code(self) -> Optional[int]:
        assert self.opcode == CLOSE, f"not a close frame: {self}"
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> bytes:
        assert self.opcode == CLOSE, f"not a close frame: {self}"
        return self.payload[2:]


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False,
                 rsv2: bool = False, rsv3: bool = False, mask: bool = True,
                 mask_key: Optional[bytes] = None) -> bytes:
    """One frame as a client sends it (masked unless ``mask`` is False)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0) | (0x10 if rsv3 else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return header + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    return header + key + _mask(payload, key)


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def close_payload(code: Optional[int] = None, reason: Union[str, bytes] = b"") -> bytes:
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return struct.pack("!H", code) + reason


def _address(target: Any) -> tuple[str, int]:
    """(host, port) from a Gateway, a ws:// URL or a (host, port) tuple."""
    if isinstance(target, tuple):
        return target
    if isinstance(target, str):
        parts = urlsplit(target)
        assert parts.hostname and parts.port
        return parts.hostname, parts.port
    host, port = target.address()
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return host, port


def upgrade_headers(key: Optional[str] = None) -> dict[str, str]:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key or base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }


def _build_request(host: str, port: int, path: str, headers: HeaderArg, websocket: bool) -> tuple[bytes, dict]:
    merged: dict[str, Optional[str]] = {"Host": f"{host}:{port}"}
    if websocket:
        merged.update(upgrade_headers())
    extra: list[tuple[str, Optional[str]]] = []
    if headers is not None:
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            # A name given again replaces the default; None removes it.
            for existing in list(merged):
                if existing.lower() == name.lower():
                    del merged[existing]
            extra.append((name, value))
    lines = [f"GET {path} HTTP/1.1"]
    sent: dict[str, str] = {}
    for name, value in list(merged.items()) + extra:
        if value is None:
            continue
        lines.append(f"{name}: {value}")
        sent[name.lower()] = value
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), sent


async def _read_response_head(reader: asyncio.StreamReader, timeout: float) -> tuple[int, str, CIMultiDict]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head[:-4].decode("latin-1").split("\r\n")
    version, status, *reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers: CIMultiDict = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    return int(status), (reason[0] if reason else ""), headers


async def http_get(target: Any, path: str, headers: HeaderArg = None, *, websocket: bool = True,
                   timeout: float = DEFAULT_TIMEOUT) -> HTTPResponse:
    """Send one GET (an upgrade request unless ``websocket`` is False) and
    read the whole answer. A 101 is closed again at once with an abort."""
    host, port = _address(target)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request, _ = _build_request(host, port, path, headers, websocket)
        writer.write(request)
        status, reason, response_headers = await _read_response_head(reader, timeout)
        body = b""
        if status != 101:
            length = response_headers.get("Content-Length")
            if length is not None:
                body = await asyncio.wait_for(reader.readexactly(int(length)), timeout)
            else:
                body = await asyncio.wait_for(reader.read(), timeout)
        return HTTPResponse(status, reason, response_headers, body)
    finally:
        writer.transport.abort()


@dataclass
class RawWebSocket:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    response: HTTPResponse
    # Control frames read while looking for something else, in order.
    pings: list = field(default_factory=list)

    @classmethod
    async def connect(cls, target: Any, path: str, headers: HeaderArg = None,
                      timeout: float = DEFAULT_TIMEOUT) -> RawWebSocket:
        """Open a WebSocket; HandshakeRefused when the answer is not 101."""
        host, port = _address(target)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            request, sent = _build_request(host, port, path, headers, True)
            writer.write(request)
            status, reason, response_headers = await _read_response_head(reader, timeout)
            if status != 101:
                length = int(response_headers.get("Content-Length", "0"))
                body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
                raise HandshakeRefused(HTTPResponse(status, reason, response_headers, body))
            expected = base64.b64encode(hashlib.sha1(sent["sec-websocket-key"].encode() + GUID).digest()).decode()
            assert response_headers.get("Sec-WebSocket-Accept") == expected, response_headers
        except BaseException:
            writer.transport.abort()
            raise
        return cls(reader, writer, HTTPResponse(status, reason, response_headers, b""))

    # -- sending -------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send_frame(self, opcode: int, payload: bytes = b"", **flags: Any) -> None:
        self.writer.write(encode_frame(opcode, payload, **flags))

    def send_text(self, text: Union[str, bytes], **flags: Any) -> None:
        self.send_frame(TEXT, text.encode("utf-8") if isinstance(text, str) else text, **flags)

    def send_binary(self, data: bytes, **flags: Any) -> None:
        self.send_frame(BINARY, data, **flags)

    def send_close(self, code: Optional[int] = None, reason: Union[str, bytes] = b"") -> None:
        self.send_frame(CLOSE, close_payload(code, reason))

    def send_ping(self, payload: bytes = b"") -> None:
        self.send_frame(PING, payload)

    def send_pong(self, payload: bytes = b"") -> None:
        self.send_frame(PONG, payload)

    async def drain(self) -> None:
        await self.writer.drain()

    # -- receiving -------------------------------------------------------------------

    async def _read(self, n: int) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionClosedEOF(f"EOF after {len(exc.partial)} of {n} bytes") from None

    async def recv_frame(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The next frame from the server, whatever it is."""
        return await asyncio.wait_for(self._recv_frame(), timeout)

    async def _recv_frame(self) -> Frame:
        first, second = await self._read(2)
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self._read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self._read(8))
        masked = bool(second & 0x80)
        key = await self._read(4) if masked else b""
        payload = await self._read(n) if n else b""
        if masked:
            payload = _mask(payload, key)
        return Frame(first & 0x0F, payload, bool(first & 0x80), (first >> 4) & 0x7, masked)

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The next data or close frame; pings and pongs are kept in ``pings``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv_frame(max(0.0, deadline - loop.time()))
            if frame.opcode in (PING, PONG):
                self.pings.append(frame)
                continue
            return frame

    async def recv_text(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        frame = await self.recv(timeout)
        assert frame.opcode == TEXT and frame.fin, frame
        return frame.text

    async def recv_binary(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        frame = await self.recv(timeout)
        assert frame.opcode == BINARY and frame.fin, frame
        return frame.payload

    async def expect_close(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The server's close frame; fails on any data frame before it. Does
        not answer it."""
        frame = await self.recv(timeout)
        assert frame.opcode == CLOSE, f"expected a close frame, got {frame}"
        return frame

    async def wait_eof(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Wait until the server closes the TCP connection; what came before."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def close_handshake(self, code: Optional[int] = 1000, reason: Union[str, bytes] = b"",
                              timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """Client-initiated close: send ours, read the server's answer and the EOF."""
        self.send_close(code, reason)
        frame = await self.expect_close(timeout)
        await self.wait_eof(timeout)
        self.abort()
        return frame

    async def answer_close(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """Server-initiated close: read the server's close, echo it, wait for EOF."""
        frame = await self.expect_close(timeout)
        self.send_frame(CLOSE, frame.payload[:2])
        await self.wait_eof(timeout)
        self.abort()
        return frame

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        self.writer.transport.abort()
