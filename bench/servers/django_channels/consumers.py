"""The consumer: every connection joins group ``bench``; each group message
goes to its client as the Channels tutorial's chat does."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

GROUP = "bench"


class BenchConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def bench_message(self, event: dict[str, Any]) -> None:
        """``group_send(GROUP, {"type": "bench.message", "text": ...})``."""
        await self.send(text_data=event["text"])
