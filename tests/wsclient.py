"""A raw WebSocket client over asyncio streams, for what the ``websockets``
client will not do: arbitrary frames (unmasked, fragmented, RSV bits, invalid
UTF-8, bad close codes, oversized), raw upgrade requests with any headers, a
shrunk receive window, and an abrupt TCP abort. It never answers pings by
itself, so tests can play a dead client; it reads frames one at a time.

Every read takes a timeout that is only an upper bound: a read returns as soon
as its bytes arrive. A target is a Gateway, a tests.harness.ServerProcess
(anything with ``address()``), a ws:// or http:// URL, or a (host, port) pair.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Union
from urllib.parse import urlsplit

from multidict import CIMultiDict

try:
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:  # websockets without its C extension: the pure-Python XOR below does the same
    _c_apply_mask = None

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# The bits of Frame.rsv and of encode_frame's ``rsv``.
RSV1, RSV2, RSV3 = 0x4, 0x2, 0x1
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFAULT_TIMEOUT = 5.0

HeaderArg = Union[Mapping[str, Optional[str]], Iterable[tuple[str, Optional[str]]], None]


class HandshakeRefused(Exception):
    """The server answered the upgrade request with something other than 101."""

    def __init__(self, response: HTTPResponse) -> None:
        super().__init__(f"upgrade refused: {response.status} {response.body[:200]!r}")
        self.response = response


class ConnectionEnded(Exception):
    """The server closed or reset the TCP connection before a whole frame came."""


@dataclass
class HTTPResponse:
    status: int
    reason: str
    headers: CIMultiDict
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass(repr=False)
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

    def __repr__(self) -> str:
        # Payloads run to megabytes: an assertion message shows their start.
        return (f"Frame(opcode={self.opcode:#x}, fin={self.fin}, rsv={self.rsv}, masked={self.masked}, "
                f"{len(self.payload)} bytes {self.payload[:64]!r})")


def apply_mask(data: bytes, key: bytes) -> bytes:
    """RFC 6455 §5.3 masking with a 4-byte ``key`` (its own inverse)."""
    if _c_apply_mask is not None:
        return _c_apply_mask(data, key)
    n = len(data)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True,
                 key: Optional[bytes] = None) -> bytes:
    """One frame as a client sends it: masked (with ``key``, random by
    default) unless ``mask`` is False; ``rsv`` is RSV1 | RSV2 | RSV3."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
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
    key = key if key is not None else os.urandom(4)
    return header + key + apply_mask(payload, key)


def close_payload(code: Optional[int] = None, reason: Union[str, bytes] = b"") -> bytes:
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return struct.pack("!H", code) + reason


def address(target: Any) -> tuple[str, int]:
    """(host, port) of a Gateway or ServerProcess, a URL or a (host, port) pair."""
    if isinstance(target, tuple):
        return target
    if isinstance(target, str):
        parts = urlsplit(target)
        assert parts.hostname and parts.port, target
        return parts.hostname, parts.port
    host, port = target.address()
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return host, port


def build_request(host: str, port: int, path: str, headers: HeaderArg = None, *, method: str = "GET",
                  body: bytes = b"", upgrade: bool = True) -> tuple[bytes, dict[str, str]]:
    """The bytes of one request (with the upgrade headers and a fresh key when
    ``upgrade``) and the headers sent, by lowercase name. A name in
    ``headers`` replaces the default of that name; None removes it."""
    merged: dict[str, Optional[str]] = {"Host": f"{host}:{port}"}
    if upgrade:
        merged.update({
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
        })
    extra: list[tuple[str, Optional[str]]] = []
    if headers is not None:
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            for existing in list(merged):
                if existing.lower() == name.lower():
                    del merged[existing]
            extra.append((name, value))
    if body:
        extra.append(("Content-Length", str(len(body))))
    lines = [f"{method} {path} HTTP/1.1"]
    sent: dict[str, str] = {}
    for name, value in list(merged.items()) + extra:
        if value is None:
            continue
        lines.append(f"{name}: {value}")
        sent[name.lower()] = value
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, sent


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


async def http_request(target: Any, path: str, headers: HeaderArg = None, *, method: str = "GET",
                       body: bytes = b"", upgrade: bool = False, timeout: float = DEFAULT_TIMEOUT) -> HTTPResponse:
    """One request on a fresh connection (an upgrade request when ``upgrade``)
    and the whole answer: its body by Content-Length, else up to EOF. A 101 is
    closed again at once with an abort."""
    host, port = address(target)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        request, _ = build_request(host, port, path, headers, method=method, body=body, upgrade=upgrade)
        writer.write(request)
        status, reason, response_headers = await _read_response_head(reader, timeout)
        content = b""
        if status != 101:
            length = response_headers.get("Content-Length")
            if length is not None:
                content = await asyncio.wait_for(reader.readexactly(int(length)), timeout)
            else:
                content = await asyncio.wait_for(reader.read(), timeout)
        return HTTPResponse(status, reason, response_headers, content)
    finally:
        writer.transport.abort()


class RawWebSocket:
    """One client connection. Sending only buffers (``drain`` waits for the
    socket); reading returns one frame at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: HTTPResponse) -> None:
        self.reader = reader
        self.writer = writer
        self.response = response
        # Pings and pongs that recv() passed over, in order.
        self.pings: list[Frame] = []

    @classmethod
    async def connect(cls, target: Any, path: str, headers: HeaderArg = None, *, timeout: float = DEFAULT_TIMEOUT,
                      rcvbuf: Optional[int] = None, limit: int = 1 << 16) -> RawWebSocket:
        """Open a WebSocket; HandshakeRefused when the answer is not 101.
        ``rcvbuf`` shrinks SO_RCVBUF before connecting (the TCP window), and
        ``limit`` bounds what the stream reads ahead of the test."""
        host, port = address(target)
        if rcvbuf is None:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=limit), timeout)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout)
                reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
            except BaseException:
                sock.close()
                raise
        try:
            request, sent = build_request(host, port, path, headers)
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
        """One frame; ``flags`` are encode_frame's (fin, rsv, mask, key)."""
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

    async def recv_frame(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The next frame from the server, whatever it is; ConnectionEnded
        when the connection ends first."""
        try:
            return await asyncio.wait_for(self._read_frame(), timeout)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionEnded(f"EOF after {len(exc.partial)} of {exc.expected} bytes") from None
        except ConnectionError as exc:
            raise ConnectionEnded(f"connection lost: {exc!r}") from None

    async def _read_frame(self) -> Frame:
        first, second = await self.reader.readexactly(2)
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        masked = bool(second & 0x80)
        key = await self.reader.readexactly(4) if masked else b""
        payload = await self.reader.readexactly(n) if n else b""
        if masked:
            payload = apply_mask(payload, key)
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

    async def recv_until_close(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[list[Frame], Optional[Frame]]:
        """Every frame (pings included) up to the close frame, and the close
        frame; None for it when the connection ended first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        frames: list[Frame] = []
        while True:
            try:
                frame = await self.recv_frame(max(0.0, deadline - loop.time()))
            except ConnectionEnded:
                return frames, None
            if frame.opcode == CLOSE:
                return frames, frame
            frames.append(frame)

    async def expect_close(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The server's close frame; fails on any data frame before it. Does
        not answer it."""
        frame = await self.recv(timeout)
        assert frame.opcode == CLOSE, f"expected a close frame, got {frame}"
        return frame

    async def wait_eof(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Wait until the server closes the TCP connection (a reset raises);
        what came before."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def expect_end(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """The server ends the connection, by EOF or by a reset, without
        sending another frame."""
        try:
            frame = await self.recv_frame(timeout)
        except ConnectionEnded:
            return
        raise AssertionError(f"a frame instead of the end of the connection: {frame}")

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

    def close(self) -> None:
        """End our side of the TCP connection (after what is buffered), without
        a close frame."""
        self.writer.close()

    def abort(self) -> None:
        """Drop the TCP connection at once, without a close frame."""
        self.writer.transport.abort()
