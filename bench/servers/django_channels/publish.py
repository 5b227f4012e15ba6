"""The Django Channels publisher of the publish scenario, a process of its
own: Django code sending to the group through the channel layer,
``async_to_sync(channel_layer.group_send)``, as a view or a task does.
The pacing and the talk with the bench are bench/publisher.py's."""

from __future__ import annotations

import os

from ...publisher import Sender, run


def sender(target: str) -> Sender:
    os.environ["BENCH_REDIS_URL"] = target
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.servers.django_channels.settings")
    import django
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from .consumers import GROUP

    django.setup()
    group_send = async_to_sync(get_channel_layer().group_send)

    def publish(text: str) -> None:
        group_send(GROUP, {"type": "bench.message", "text": text})

    return publish


if __name__ == "__main__":
    run({"room": sender})
