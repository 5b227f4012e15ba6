"""The process behind each /ws/session connection (docs/guide.md, "The
receive loop"): one process per connection, started by handlers.handler."""

from __future__ import annotations

import json

import presence

from wsrelay import process


async def handler():
    inbox = process.inbox()
    async for msg in inbox:
        topic = msg.topic
        data = msg.payload

        if topic == "ws.join":
            # Client connected
            client_pid = data["client_pid"]
            user = data["metadata"]["user_id"] or "anonymous"
            send_text(client_pid, {"event": "welcome", "user": user})
            presence.track(client_pid, user)

        elif topic == "ws.message":
            # A message from the client: text (str) or binary (bytes)
            if data["type"] == "text":
                try:
                    content = json.loads(data["data"])
                except ValueError:
                    send_text(data["client_pid"], {"event": "error", "error": "not JSON"})
                    continue
                handle_message(data["client_pid"], content)
            else:
                send_text(data["client_pid"], {"event": "got_bytes", "size": len(data["data"])})

        elif topic == "ws.heartbeat":
            # Every heartbeat_interval, while the client is connected
            send_text(data["client_pid"], {
                "event": "tick",
                "uptime": round(data["uptime"], 3),
                "messages": data["message_count"],
            })

        elif topic == "ws.leave":
            # Client disconnected: this process has nothing left to do
            return


def handle_message(client_pid, content):
    op = content.get("op") if isinstance(content, dict) else None
    if op == "update":
        send_text(client_pid, {"event": "update", "value": 42})
    elif op == "binary":
        send_binary(client_pid, bytes(range(8)))
    elif op == "bye":
        close(client_pid)
    else:
        send_text(client_pid, {"event": "error", "error": f"unknown op {op!r}"})


def send_text(client_pid, event):
    # Send a text message
    process.send(client_pid, "ws.send", {
        "type": "text",
        "data": json.dumps(event),
    })


def send_binary(client_pid, content: bytes):
    # Send a binary message
    process.send(client_pid, "ws.send", {
        "type": "binary",
        "data": content,
    })


def close(client_pid):
    # Close the connection
    process.send(client_pid, "ws.close", {
        "code": 1000,
        "reason": "session ended",
    })
